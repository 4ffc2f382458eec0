SELECT a FROM "t" WHERE avg(a) > 1
