//! Expression parsing: a Pratt parser with SQL's predicates (IS, IN, BETWEEN, LIKE), CASE and CAST.

use super::{MAX_DEPTH, Parser, is_reserved};
use crate::ast::*;
use crate::error::SqlError;
use crate::lexer::Tok;

impl Parser<'_> {
    /// Parses an expression.
    pub(crate) fn expr(&mut self) -> Result<Expr, SqlError> {
        self.expr_bp(0)
    }

    fn expr_bp(&mut self, min_bp: u8) -> Result<Expr, SqlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("expression is nested too deeply"));
        }
        let r = self.expr_bp_inner(min_bp);
        self.depth -= 1;
        r
    }

    fn expr_bp_inner(&mut self, min_bp: u8) -> Result<Expr, SqlError> {
        let mut lhs = self.prefix()?;
        loop {
            let start = lhs.start;
            let tok = self.peek().tok.clone();
            let (op, bp) = match &tok {
                Tok::Ident(s) if s.eq_ignore_ascii_case("or") => (Some(BinOp::Or), 1),
                Tok::Ident(s) if s.eq_ignore_ascii_case("and") => (Some(BinOp::And), 2),
                Tok::Eq => (Some(BinOp::Eq), 4),
                Tok::Ne => (Some(BinOp::Ne), 4),
                Tok::Lt => (Some(BinOp::Lt), 4),
                Tok::Le => (Some(BinOp::Le), 4),
                Tok::Gt => (Some(BinOp::Gt), 4),
                Tok::Ge => (Some(BinOp::Ge), 4),
                Tok::Concat => (Some(BinOp::Concat), 5),
                Tok::Plus => (Some(BinOp::Add), 6),
                Tok::Minus => (Some(BinOp::Sub), 6),
                Tok::Star => (Some(BinOp::Mul), 7),
                Tok::Slash => (Some(BinOp::Div), 7),
                Tok::Percent => (Some(BinOp::Mod), 7),
                Tok::Ident(s)
                    if ["is", "in", "between", "like", "not"]
                        .iter()
                        .any(|k| s.eq_ignore_ascii_case(k)) =>
                {
                    (None, 4)
                }
                _ => break,
            };
            if bp <= min_bp {
                break;
            }
            if let Some(op) = op {
                self.bump();
                let r = self.expr_bp(bp)?;
                let end = r.end;
                lhs = Expr {
                    kind: ExprKind::Binary {
                        op,
                        l: Box::new(lhs),
                        r: Box::new(r),
                    },
                    start,
                    end,
                };
                continue;
            }
            // Postfix predicates: IS [NOT] NULL, [NOT] IN / BETWEEN / LIKE.
            if self.eat_kw("is") {
                let negated = self.eat_kw("not");
                if !self.is_kw("null") {
                    return Err(self.expected(if negated {
                        "NULL after 'IS NOT'"
                    } else {
                        "NULL or NOT NULL after 'IS'"
                    }));
                }
                let end = self.bump().end;
                lhs = Expr {
                    kind: ExprKind::IsNull {
                        expr: Box::new(lhs),
                        negated,
                    },
                    start,
                    end,
                };
                continue;
            }
            let negated = self.eat_kw("not");
            if self.eat_kw("in") {
                self.expect(&Tok::LParen, "'(' after IN")?;
                let mut list = Vec::new();
                loop {
                    list.push(self.expr()?);
                    if !self.eat(&Tok::Comma) {
                        break;
                    }
                }
                if self.peek().tok != Tok::RParen {
                    return Err(self.expected("',' or ')' in the IN list"));
                }
                let end = self.bump().end;
                lhs = Expr {
                    kind: ExprKind::In {
                        expr: Box::new(lhs),
                        list,
                        negated,
                    },
                    start,
                    end,
                };
            } else if self.eat_kw("between") {
                let lo = self.expr_bp(4)?;
                self.expect_kw("and", " in BETWEEN ... AND ...")?;
                let hi = self.expr_bp(4)?;
                let end = hi.end;
                lhs = Expr {
                    kind: ExprKind::Between {
                        expr: Box::new(lhs),
                        lo: Box::new(lo),
                        hi: Box::new(hi),
                        negated,
                    },
                    start,
                    end,
                };
            } else if self.eat_kw("like") {
                let pattern = self.expr_bp(4)?;
                let end = pattern.end;
                lhs = Expr {
                    kind: ExprKind::Like {
                        expr: Box::new(lhs),
                        pattern: Box::new(pattern),
                        negated,
                    },
                    start,
                    end,
                };
            } else {
                return Err(self.expected("IN, BETWEEN or LIKE after 'NOT'"));
            }
        }
        Ok(lhs)
    }

    fn prefix(&mut self) -> Result<Expr, SqlError> {
        let t = self.peek().clone();
        let start = t.start;
        let lit = |kind, end| {
            Ok(Expr {
                kind: ExprKind::Lit(kind),
                start,
                end,
            })
        };
        match t.tok {
            Tok::Int(n) => {
                self.bump();
                lit(Lit::Int(n), t.end)
            }
            Tok::Duration(n) => {
                self.bump();
                lit(Lit::Int(n), t.end)
            }
            Tok::Float(f) => {
                self.bump();
                lit(Lit::Float(f), t.end)
            }
            Tok::Str(s) => {
                self.bump();
                lit(Lit::Str(s), t.end)
            }
            Tok::Minus | Tok::Plus => {
                self.bump();
                let e = self.expr_bp(8)?;
                let end = e.end;
                if t.tok == Tok::Plus {
                    return Ok(e);
                }
                // Fold negative numeric literals so that -9223372036854775808 style limits stay literal.
                let kind = match e.kind {
                    ExprKind::Lit(Lit::Int(n)) => ExprKind::Lit(Lit::Int(-n)),
                    ExprKind::Lit(Lit::Float(f)) => ExprKind::Lit(Lit::Float(-f)),
                    _ => ExprKind::Neg(Box::new(e)),
                };
                Ok(Expr { kind, start, end })
            }
            Tok::LParen => {
                self.bump();
                let mut e = self.expr()?;
                if self.peek().tok != Tok::RParen {
                    return Err(self.expected("')' or an operator"));
                }
                let end = self.bump().end;
                e.start = start;
                e.end = end;
                Ok(e)
            }
            Tok::Quoted(name) => {
                self.bump();
                self.path(PathSeg::Field(name), start)
            }
            Tok::Ident(ref name) => {
                let name = name.clone();
                let lname = name.to_ascii_lowercase();
                match lname.as_str() {
                    "null" => {
                        self.bump();
                        lit(Lit::Null, t.end)
                    }
                    "true" | "false" => {
                        self.bump();
                        lit(Lit::Bool(lname == "true"), t.end)
                    }
                    "not" => {
                        self.bump();
                        let e = self.expr_bp(3)?;
                        let end = e.end;
                        Ok(Expr {
                            kind: ExprKind::Not(Box::new(e)),
                            start,
                            end,
                        })
                    }
                    "case" => self.case(),
                    "cast" => self.cast(),
                    _ if is_reserved(&name) => Err(self.err(format!(
                        "expected an expression after {}, found {}",
                        self.prev_desc(),
                        t.tok.describe()
                    ))),
                    _ if self.peek_at(1) == &Tok::LParen => self.call(name),
                    _ => {
                        self.bump();
                        self.path(PathSeg::Field(name), start)
                    }
                }
            }
            _ => Err(self.err(format!(
                "expected an expression after {}, found {}",
                self.prev_desc(),
                t.tok.describe()
            ))),
        }
    }

    fn path(&mut self, first: PathSeg, start: usize) -> Result<Expr, SqlError> {
        let mut path = vec![first];
        loop {
            if self.eat(&Tok::Dot) {
                match self.bump().tok {
                    Tok::Ident(s) | Tok::Quoted(s) => path.push(PathSeg::Field(s)),
                    _ => {
                        self.i -= 1;
                        return Err(self.expected("a field name after '.'"));
                    }
                }
            } else if self.eat(&Tok::LBracket) {
                let neg = self.eat(&Tok::Minus);
                match self.peek().tok {
                    Tok::Int(n) => {
                        self.bump();
                        path.push(PathSeg::Index(if neg { -n } else { n }));
                    }
                    _ => return Err(self.expected("an array index such as [0]")),
                }
                self.expect(&Tok::RBracket, "']' after the array index")?;
            } else {
                break;
            }
        }
        Ok(Expr {
            kind: ExprKind::Column(path),
            start,
            end: self.prev_end(),
        })
    }

    fn call(&mut self, name: String) -> Result<Expr, SqlError> {
        let start = self.bump().start;
        self.bump(); // '('
        let mut args = Vec::new();
        let mut star = false;
        if self.peek().tok == Tok::Star && self.peek_at(1) == &Tok::RParen {
            self.bump();
            star = true;
        } else if self.peek().tok != Tok::RParen {
            loop {
                args.push(self.expr()?);
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        if self.peek().tok != Tok::RParen {
            return Err(self.expected(&format!("',' or ')' in the arguments of {name}()")));
        }
        let end = self.bump().end;
        Ok(Expr {
            kind: ExprKind::Call { name, args, star },
            start,
            end,
        })
    }

    fn case(&mut self) -> Result<Expr, SqlError> {
        let start = self.bump().start;
        let operand = if self.is_kw("when") {
            None
        } else {
            Some(Box::new(self.expr()?))
        };
        let mut whens = Vec::new();
        while self.eat_kw("when") {
            let w = self.expr()?;
            self.expect_kw("then", " after the WHEN condition")?;
            let t = self.expr()?;
            whens.push((w, t));
        }
        if whens.is_empty() {
            return Err(self.expected("WHEN after CASE"));
        }
        let else_ = if self.eat_kw("else") {
            Some(Box::new(self.expr()?))
        } else {
            None
        };
        if !self.is_kw("end") {
            return Err(self.expected("WHEN, ELSE or END in CASE"));
        }
        let end = self.bump().end;
        Ok(Expr {
            kind: ExprKind::Case {
                operand,
                whens,
                else_,
            },
            start,
            end,
        })
    }

    fn cast(&mut self) -> Result<Expr, SqlError> {
        let start = self.bump().start;
        self.expect(&Tok::LParen, "'(' after CAST")?;
        let e = self.expr()?;
        self.expect_kw("as", " in CAST(... AS type)")?;
        let ty = match &self.peek().tok {
            Tok::Ident(s) => match s.to_ascii_lowercase().as_str() {
                "int" | "integer" | "bigint" => Some(CastTy::Int),
                "float" | "double" | "real" => Some(CastTy::Float),
                "string" | "text" | "varchar" => Some(CastTy::String),
                "bool" | "boolean" => Some(CastTy::Bool),
                "json" => Some(CastTy::Json),
                _ => None,
            },
            _ => None,
        };
        let Some(ty) = ty else {
            return Err(self.expected("a type (INT, FLOAT, STRING, BOOL or JSON)"));
        };
        self.bump();
        if self.peek().tok != Tok::RParen {
            return Err(self.expected("')' to close CAST"));
        }
        let end = self.bump().end;
        Ok(Expr {
            kind: ExprKind::Cast {
                expr: Box::new(e),
                ty,
            },
            start,
            end,
        })
    }
}
