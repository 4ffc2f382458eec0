SELECT 'abc FROM "t"
