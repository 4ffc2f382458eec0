SELECT a FROM "t" WHERE 'x' < 3
