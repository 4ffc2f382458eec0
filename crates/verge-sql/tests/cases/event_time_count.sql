SELECT count(*) AS n, collect(v) AS vs, window_start() AS ws, window_end() AS we FROM "#" TIMESTAMP BY ts LATENESS 1s GROUP BY COUNT(2)
