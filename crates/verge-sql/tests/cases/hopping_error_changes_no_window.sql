SELECT sum(v) AS s, count(*) AS n, window_start() AS ws FROM "#" GROUP BY HOPPING(10s, 5s)
