SELECT k, count(*) AS n, collect(v) AS c FROM "#" GROUP BY k, TUMBLING(10s)
