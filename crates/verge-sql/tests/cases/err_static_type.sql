SELECT 'a' + 1 FROM "t"
