SELECT count(*) AS n, collect(v) AS vs, window_start() AS ws FROM "#" TIMESTAMP BY ts LATENESS 1s GROUP BY HOPPING(10s, 5s)
