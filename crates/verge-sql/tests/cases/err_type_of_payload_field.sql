SELECT "é" + 'x' AS y FROM "t/#"
