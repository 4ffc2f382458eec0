SELECT *, a.b[0].c AS x, a.b[-1] AS last, "weird name" AS w, arr[5] AS oob, s.t AS missing FROM "#"
