SELECT k, count(*) AS n, window_start() AS ws, window_end() AS we FROM "#" GROUP BY k, SESSION(5s)
