SELECT coalesce(a, b, 'd') AS c, nullif(a, 1) AS n, ifnull(b, 0) AS i FROM "#"
