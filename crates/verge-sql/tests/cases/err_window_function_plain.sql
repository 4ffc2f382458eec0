SELECT window_start() FROM "t"
