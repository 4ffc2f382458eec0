SELECT a, b AS a FROM "t"
