SELECT k, count(*) AS n, collect(v) AS vs, window_start() AS ws FROM "#" TIMESTAMP BY ts LATENESS 2s GROUP BY k, TUMBLING(10s)
