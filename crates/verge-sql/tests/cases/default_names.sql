SELECT a.b, t + 1, lower(s), "x y" FROM "#"
