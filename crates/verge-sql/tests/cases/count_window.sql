SELECT k, count(*) AS n, sum(v) AS s, window_start() AS ws, window_end() AS we FROM "#" GROUP BY k, COUNT(3)
