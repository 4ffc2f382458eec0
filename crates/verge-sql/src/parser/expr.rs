//! Expression parsing: a Pratt parser with SQL's predicates (IS, IN, BETWEEN, LIKE), CASE and CAST.

use super::{MAX_DEPTH, MAX_NODES, Parser};
use crate::ast::*;
use crate::error::SqlError;
use crate::lexer::Tok;
use crate::lexer::is_reserved;

impl Parser<'_> {
    /// Builds a syntax-tree node, enforcing the limits on tree depth and node
    /// count (the compiler and evaluator recurse through the tree, so a deep
    /// tree would exhaust their stack even though this parser built it
    /// iteratively). `pos` is where the error points: the operator or the
    /// start of the node.
    fn node(
        &mut self,
        kind: ExprKind,
        start: usize,
        end: usize,
        pos: usize,
    ) -> Result<Expr, SqlError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(SqlError::at(
                self.src,
                pos,
                format!("expression is too large (more than {MAX_NODES} terms in the rule)"),
            ));
        }
        let depth = 1 + kind_child_depth(&kind);
        if depth > MAX_DEPTH {
            return Err(SqlError::at(
                self.src,
                pos,
                format!("expression nested too deeply (more than {MAX_DEPTH} levels)"),
            ));
        }
        Ok(Expr {
            kind,
            start,
            end,
            depth,
        })
    }

    /// Parses an expression.
    pub(crate) fn expr(&mut self) -> Result<Expr, SqlError> {
        self.expr_bp(0)
    }

    fn expr_bp(&mut self, min_bp: u8) -> Result<Expr, SqlError> {
        // Every call on the stack is inside an open parenthesis (at most
        // MAX_DEPTH) or an operand of a node being built (whose finished tree
        // would be that deep), so this only trips when `node` or `paren` would.
        self.depth += 1;
        if self.depth > 2 * MAX_DEPTH + 1 {
            return Err(self.err(format!(
                "expression nested too deeply (more than {MAX_DEPTH} levels)"
            )));
        }
        let r = self.expr_bp_inner(min_bp);
        self.depth -= 1;
        r
    }

    fn expr_bp_inner(&mut self, min_bp: u8) -> Result<Expr, SqlError> {
        let mut lhs = self.prefix()?;
        loop {
            let start = lhs.start;
            let (op, bp) = match &self.peek().tok {
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
                let op_pos = self.bump().start;
                let r = self.expr_bp(bp)?;
                let end = r.end;
                lhs = self.node(
                    ExprKind::Binary {
                        op,
                        l: Box::new(lhs),
                        r: Box::new(r),
                    },
                    start,
                    end,
                    op_pos,
                )?;
                continue;
            }
            lhs = self.postfix(lhs, start)?;
        }
        Ok(lhs)
    }

    /// A postfix predicate after `lhs`: IS [NOT] NULL, [NOT] IN / BETWEEN / LIKE.
    fn postfix(&mut self, lhs: Expr, start: usize) -> Result<Expr, SqlError> {
        let op_pos = self.peek().start;
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
            return self.node(
                ExprKind::IsNull {
                    expr: Box::new(lhs),
                    negated,
                },
                start,
                end,
                op_pos,
            );
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
            self.node(
                ExprKind::In {
                    expr: Box::new(lhs),
                    list,
                    negated,
                },
                start,
                end,
                op_pos,
            )
        } else if self.eat_kw("between") {
            let lo = self.expr_bp(4)?;
            self.expect_kw("and", " in BETWEEN ... AND ...")?;
            let hi = self.expr_bp(4)?;
            let end = hi.end;
            self.node(
                ExprKind::Between {
                    expr: Box::new(lhs),
                    lo: Box::new(lo),
                    hi: Box::new(hi),
                    negated,
                },
                start,
                end,
                op_pos,
            )
        } else if self.eat_kw("like") {
            let pattern = self.expr_bp(4)?;
            let end = pattern.end;
            self.node(
                ExprKind::Like {
                    expr: Box::new(lhs),
                    pattern: Box::new(pattern),
                    negated,
                },
                start,
                end,
                op_pos,
            )
        } else {
            Err(self.expected("IN, BETWEEN or LIKE after 'NOT'"))
        }
    }

    /// The start of an operand. The recursive forms each get their own function
    /// so that the frames on the recursion path stay small.
    fn prefix(&mut self) -> Result<Expr, SqlError> {
        match &self.peek().tok {
            Tok::Minus | Tok::Plus => self.prefix_sign(),
            Tok::LParen => self.paren(),
            Tok::Ident(s) if s.eq_ignore_ascii_case("not") => self.prefix_not(),
            Tok::Ident(s) if s.eq_ignore_ascii_case("case") => self.case(),
            Tok::Ident(s) if s.eq_ignore_ascii_case("cast") => self.cast(),
            Tok::Ident(s) if !is_reserved(s) && self.peek_at(1) == &Tok::LParen => {
                let name = s.clone();
                self.call(name)
            }
            _ => self.prefix_token(),
        }
    }

    /// `-x` or `+x`; negative numeric literals are folded.
    fn prefix_sign(&mut self) -> Result<Expr, SqlError> {
        let t = self.bump();
        let start = t.start;
        if t.tok == Tok::Minus && self.peek().tok == Tok::IntMinMagnitude {
            let end = self.bump().end;
            return self.node(ExprKind::Lit(Lit::Int(i64::MIN)), start, end, start);
        }
        let e = self.expr_bp(8)?;
        let end = e.end;
        if t.tok == Tok::Plus {
            return Ok(e);
        }
        // Fold negative numeric literals (-9223372036854775808 is folded above).
        let kind = match e.kind {
            ExprKind::Lit(Lit::Int(n)) if n != i64::MIN => ExprKind::Lit(Lit::Int(-n)),
            ExprKind::Lit(Lit::Float(f)) => ExprKind::Lit(Lit::Float(-f)),
            _ => ExprKind::Neg(Box::new(e)),
        };
        self.node(kind, start, end, start)
    }

    /// `( expr )`.
    fn paren(&mut self) -> Result<Expr, SqlError> {
        self.parens += 1;
        if self.parens > MAX_DEPTH {
            return Err(self.err(format!(
                "expression nested too deeply (more than {MAX_DEPTH} levels)"
            )));
        }
        let start = self.bump().start;
        let e = self.expr();
        self.parens -= 1;
        let mut e = e?;
        if self.peek().tok != Tok::RParen {
            return Err(self.expected("')' or an operator"));
        }
        let end = self.bump().end;
        e.start = start;
        e.end = end;
        Ok(e)
    }

    /// `NOT x`.
    fn prefix_not(&mut self) -> Result<Expr, SqlError> {
        let start = self.bump().start;
        let e = self.expr_bp(3)?;
        let end = e.end;
        self.node(ExprKind::Not(Box::new(e)), start, end, start)
    }

    /// A literal, a column path, or an error.
    fn prefix_token(&mut self) -> Result<Expr, SqlError> {
        let t = self.peek().clone();
        let start = t.start;
        let lit = |p: &mut Self, kind, end| p.node(ExprKind::Lit(kind), start, end, start);
        match t.tok {
            Tok::Int(n) => {
                self.bump();
                lit(self, Lit::Int(n), t.end)
            }
            Tok::IntMinMagnitude => Err(SqlError::at(
                self.src,
                start,
                "number '9223372036854775808' is too large for a 64-bit integer",
            )),
            Tok::Duration(n) => {
                self.bump();
                lit(self, Lit::Int(n), t.end)
            }
            Tok::Float(f) => {
                self.bump();
                lit(self, Lit::Float(f), t.end)
            }
            Tok::Str(s) => {
                self.bump();
                lit(self, Lit::Str(s), t.end)
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
                        lit(self, Lit::Null, t.end)
                    }
                    "true" | "false" => {
                        self.bump();
                        lit(self, Lit::Bool(lname == "true"), t.end)
                    }
                    _ if is_reserved(&name) => Err(self.err(format!(
                        "expected an expression after {}, found {}",
                        self.prev_desc(),
                        t.tok.describe()
                    ))),
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
        let end = self.prev_end();
        self.node(ExprKind::Column(path), start, end, start)
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
        self.node(ExprKind::Call { name, args, star }, start, end, start)
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
        self.node(
            ExprKind::Case {
                operand,
                whens,
                else_,
            },
            start,
            end,
            start,
        )
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
        self.node(
            ExprKind::Cast {
                expr: Box::new(e),
                ty,
            },
            start,
            end,
            start,
        )
    }
}

/// The greatest depth among the direct children of a node being built (0 for a leaf).
fn kind_child_depth(kind: &ExprKind) -> usize {
    let d = |e: &Expr| e.depth;
    let max = |it: &mut dyn Iterator<Item = usize>| it.max().unwrap_or(0);
    match kind {
        ExprKind::Lit(_) | ExprKind::Column(_) => 0,
        ExprKind::Call { args, .. } => max(&mut args.iter().map(d)),
        ExprKind::Neg(x)
        | ExprKind::Not(x)
        | ExprKind::IsNull { expr: x, .. }
        | ExprKind::Cast { expr: x, .. } => x.depth,
        ExprKind::Binary { l, r, .. } => l.depth.max(r.depth),
        ExprKind::Like {
            expr, pattern: r, ..
        } => expr.depth.max(r.depth),
        ExprKind::In { expr, list, .. } => expr.depth.max(max(&mut list.iter().map(d))),
        ExprKind::Between { expr, lo, hi, .. } => expr.depth.max(lo.depth).max(hi.depth),
        ExprKind::Case {
            operand,
            whens,
            else_,
        } => operand
            .iter()
            .chain(else_.iter())
            .map(|b| b.depth)
            .chain(whens.iter().flat_map(|(w, t)| [w.depth, t.depth]))
            .max()
            .unwrap_or(0),
    }
}
