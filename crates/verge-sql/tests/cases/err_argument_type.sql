SELECT lower(5) FROM "t"
