SELECT foo(a) FROM "t"
