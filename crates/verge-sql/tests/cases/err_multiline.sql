SELECT device,
       avg(temperature) AS a
FROM "devices/+/telemetry"
GROUP BY device, TUMBLING(10)
