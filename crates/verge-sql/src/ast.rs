//! The syntax tree the parser produces; spans are byte offsets into the SQL.

use std::fmt::Write;

/// A whole rule statement.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub items: Vec<SelectItem>,
    pub from: Vec<(String, usize)>,
    pub timestamp: Option<TimestampBy>,
    pub where_: Option<Expr>,
    pub group_by: Vec<GroupItem>,
    /// Position of the `GROUP` keyword, if any.
    pub group_pos: Option<usize>,
    pub having: Option<Expr>,
    pub having_pos: usize,
}

/// `TIMESTAMP BY expr [LATENESS d]`.
#[derive(Debug, Clone)]
pub(crate) struct TimestampBy {
    pub expr: Expr,
    pub lateness_ms: i64,
}

/// One item of the SELECT list.
#[derive(Debug, Clone)]
pub(crate) enum SelectItem {
    /// `*` at the given offset.
    Star(usize),
    /// An expression with an optional alias.
    Expr { expr: Expr, alias: Option<String> },
}

/// One item of GROUP BY.
#[derive(Debug, Clone)]
pub(crate) enum GroupItem {
    Expr(Expr),
    Window { kind: WindowKind, pos: usize },
}

/// A window clause, with durations in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowKind {
    Tumbling(i64),
    Hopping(i64, i64),
    Sliding(i64),
    Session(i64),
    Count(usize, usize),
}

/// An expression and its span.
#[derive(Debug, Clone)]
pub(crate) struct Expr {
    pub kind: ExprKind,
    pub start: usize,
    pub end: usize,
    /// Levels of the tree rooted here (1 for a leaf); bounded by the parser.
    pub depth: usize,
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// A step of a column path: `.name` or `[index]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum PathSeg {
    Field(String),
    Index(i64),
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Concat,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    /// The operator as written in canonical SQL.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Concat => "||",
            BinOp::Eq => "=",
            BinOp::Ne => "<>",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "AND",
            BinOp::Or => "OR",
        }
    }
}

/// Target types of CAST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CastTy {
    Int,
    Float,
    String,
    Bool,
    Json,
}

/// Expression kinds.
#[derive(Debug, Clone)]
pub(crate) enum ExprKind {
    Lit(Lit),
    /// A payload field path; the first segment is always a field name.
    Column(Vec<PathSeg>),
    /// A function call; `star` is set for `f(*)`.
    Call {
        name: String,
        args: Vec<Expr>,
        star: bool,
    },
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Binary {
        op: BinOp,
        l: Box<Expr>,
        r: Box<Expr>,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Between {
        expr: Box<Expr>,
        lo: Box<Expr>,
        hi: Box<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: Box<Expr>,
        negated: bool,
    },
    Case {
        operand: Option<Box<Expr>>,
        whens: Vec<(Expr, Expr)>,
        else_: Option<Box<Expr>>,
    },
    Cast {
        expr: Box<Expr>,
        ty: CastTy,
    },
}

/// A canonical text of an expression, used to match SELECT expressions with GROUP BY keys.
pub(crate) fn canon(e: &Expr) -> String {
    let mut s = String::new();
    write_canon(e, &mut s);
    s
}

fn write_canon(e: &Expr, s: &mut String) {
    match &e.kind {
        ExprKind::Lit(l) => match l {
            Lit::Null => s.push_str("NULL"),
            Lit::Bool(b) => s.push_str(if *b { "TRUE" } else { "FALSE" }),
            Lit::Int(i) => {
                let _ = write!(s, "{i}");
            }
            Lit::Float(f) => {
                let _ = write!(s, "{f:?}");
            }
            Lit::Str(t) => {
                let _ = write!(s, "'{}'", t.replace('\'', "''"));
            }
        },
        ExprKind::Column(path) => {
            for (i, seg) in path.iter().enumerate() {
                match seg {
                    PathSeg::Field(f) => {
                        if i > 0 {
                            s.push('.');
                        }
                        let _ = write!(s, "\"{}\"", f.replace('"', "\"\""));
                    }
                    PathSeg::Index(n) => {
                        let _ = write!(s, "[{n}]");
                    }
                }
            }
        }
        ExprKind::Call { name, args, star } => {
            s.push_str(&name.to_ascii_lowercase());
            s.push('(');
            if *star {
                s.push('*');
            }
            list(args, s);
            s.push(')');
        }
        ExprKind::Neg(x) => {
            s.push_str("(-");
            write_canon(x, s);
            s.push(')');
        }
        ExprKind::Not(x) => {
            s.push_str("(NOT ");
            write_canon(x, s);
            s.push(')');
        }
        ExprKind::Binary { op, l, r } => {
            s.push('(');
            write_canon(l, s);
            let _ = write!(s, " {} ", op.symbol());
            write_canon(r, s);
            s.push(')');
        }
        ExprKind::IsNull { expr, negated } => {
            s.push('(');
            write_canon(expr, s);
            s.push_str(if *negated {
                " IS NOT NULL)"
            } else {
                " IS NULL)"
            });
        }
        ExprKind::In {
            expr,
            list: items,
            negated,
        } => {
            s.push('(');
            write_canon(expr, s);
            s.push_str(if *negated { " NOT IN (" } else { " IN (" });
            list(items, s);
            s.push_str("))");
        }
        ExprKind::Between {
            expr,
            lo,
            hi,
            negated,
        } => {
            s.push('(');
            write_canon(expr, s);
            s.push_str(if *negated {
                " NOT BETWEEN "
            } else {
                " BETWEEN "
            });
            write_canon(lo, s);
            s.push_str(" AND ");
            write_canon(hi, s);
            s.push(')');
        }
        ExprKind::Like {
            expr,
            pattern,
            negated,
        } => {
            s.push('(');
            write_canon(expr, s);
            s.push_str(if *negated { " NOT LIKE " } else { " LIKE " });
            write_canon(pattern, s);
            s.push(')');
        }
        ExprKind::Case {
            operand,
            whens,
            else_,
        } => {
            s.push_str("(CASE");
            if let Some(o) = operand {
                s.push(' ');
                write_canon(o, s);
            }
            for (w, t) in whens {
                s.push_str(" WHEN ");
                write_canon(w, s);
                s.push_str(" THEN ");
                write_canon(t, s);
            }
            if let Some(e) = else_ {
                s.push_str(" ELSE ");
                write_canon(e, s);
            }
            s.push_str(" END)");
        }
        ExprKind::Cast { expr, ty } => {
            s.push_str("CAST(");
            write_canon(expr, s);
            let _ = write!(s, " AS {ty:?})");
        }
    }
}

fn list(items: &[Expr], s: &mut String) {
    for (i, a) in items.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        write_canon(a, s);
    }
}
