SELECT a FROM "t" WHERE a > 1 b
