SELECT a FROM "a/#/b"
