SELECT device, avg(temperature) AS avg_t, max(temperature) AS max_t, count(*) AS n,
       window_start() AS ws, window_end() AS we
FROM "devices/+/telemetry"
WHERE temperature IS NOT NULL
GROUP BY device, TUMBLING(10s)
HAVING avg_t > 30
