SELECT device, temperature FROM "d/+" GROUP BY device, TUMBLING(10s)
