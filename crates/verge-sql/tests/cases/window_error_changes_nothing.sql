SELECT count(*) AS n, max(v) AS m FROM "#" GROUP BY TUMBLING(10s)
