SELECT k, count(*) AS n, window_start() AS ws, window_end() AS we FROM "#" TIMESTAMP BY ts LATENESS 2s GROUP BY k, SESSION(5s)
