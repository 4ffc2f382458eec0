SELECT device, temperature*1.8+32 AS f FROM "devices/+/telemetry" WHERE temperature > 20
