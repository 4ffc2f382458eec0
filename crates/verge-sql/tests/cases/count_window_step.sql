SELECT count(*) AS n, sum(v) AS s, window_start() AS ws, window_end() AS we FROM "#" GROUP BY COUNT(3, 1)
