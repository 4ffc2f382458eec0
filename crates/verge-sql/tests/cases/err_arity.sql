SELECT lower(a, b) FROM "t"
