SELECT topic(2) AS dev, upper(topic(2)) AS up, CAST(v > 10 AS STRING) AS hi, count(*) AS n FROM "devices/+/t" GROUP BY topic(2), v > 10, TUMBLING(10s)
