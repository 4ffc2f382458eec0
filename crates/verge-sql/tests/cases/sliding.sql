SELECT k, count(*) AS n, sum(v) AS s, window_start() AS ws FROM "#" GROUP BY k, SLIDING(10s) HAVING s < 100
