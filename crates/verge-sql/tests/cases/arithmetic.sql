SELECT a + b AS add, a - b AS sub, a * b AS mul, a / b AS div, a % b AS rem, f / 2 AS fdiv, a + f AS mix, -a AS neg, 7 / 2 AS idiv, -7 / 2 AS nidiv, -7 % 3 AS nmod FROM "#"
