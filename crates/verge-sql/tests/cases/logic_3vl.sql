SELECT x AND y AS a, x OR y AS o, NOT x AS n, x IS NULL AS isn, y IS NOT NULL AS nn FROM "#"
