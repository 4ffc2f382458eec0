SELECT count(*) AS n, sum(v) AS s, window_start() AS ws, window_end() AS we FROM "#" TIMESTAMP BY ts LATENESS 1s GROUP BY SLIDING(5s)
