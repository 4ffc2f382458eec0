SELECT count(*) FROM "t"
