SELECT percentile(v, 2) FROM "t" GROUP BY TUMBLING(1s)
