SELECT k, sum(v) AS s, max(v) AS m FROM "#" GROUP BY k, TUMBLING(10s)
