//! The recursive-descent parser (Pratt for expressions): tokens to [`Statement`].

mod expr;

use crate::ast::*;
use crate::error::SqlError;
use crate::lexer::{Tok, Token, is_reserved, lex};

/// Deepest expression accepted, in levels of the syntax tree (`a + b + c` is 3
/// levels, `f(g(x))` is 3) and in nested parentheses. The compiler and the
/// evaluator recurse once per level, so this bounds their stack use.
pub(crate) const MAX_DEPTH: usize = 128;

/// Most expression terms (literals, columns, operators, calls...) in one rule.
pub(crate) const MAX_NODES: usize = 10_000;

/// Longest window, hop, gap or lateness: 365 days. Keeps every sum of a time
/// (within ±100,000 years) and a duration far from the i64 range.
pub(crate) const MAX_DURATION_MS: i64 = 365 * 86_400_000;

/// Longest rule SQL accepted, in bytes.
pub(crate) const MAX_SQL_LEN: usize = 64 * 1024;

/// Parses a whole statement.
pub(crate) fn parse(src: &str) -> Result<Statement, SqlError> {
    if src.len() > MAX_SQL_LEN {
        return Err(SqlError::at(
            src,
            MAX_SQL_LEN,
            format!("the rule is too long (more than {MAX_SQL_LEN} bytes)"),
        ));
    }
    let toks = lex(src)?;
    let mut p = Parser {
        src,
        toks,
        i: 0,
        depth: 0,
        parens: 0,
        nodes: 0,
    };
    p.statement()
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    i: usize,
    /// Current recursion depth of the expression parser.
    depth: usize,
    /// Parentheses open around the current position.
    parens: usize,
    /// Expression nodes built so far.
    nodes: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        &self.toks[self.i.min(self.toks.len() - 1)]
    }

    fn peek_at(&self, n: usize) -> &Tok {
        &self.toks[(self.i + n).min(self.toks.len() - 1)].tok
    }

    fn bump(&mut self) -> Token {
        let t = self.peek().clone();
        if self.i < self.toks.len() - 1 {
            self.i += 1;
        }
        t
    }

    fn prev_end(&self) -> usize {
        if self.i == 0 {
            0
        } else {
            self.toks[self.i - 1].end
        }
    }

    fn prev_desc(&self) -> String {
        if self.i == 0 {
            "the start".to_string()
        } else {
            self.toks[self.i - 1].tok.describe()
        }
    }

    fn err(&self, msg: impl Into<String>) -> SqlError {
        SqlError::at(self.src, self.peek().start, msg)
    }

    fn expected(&self, what: &str) -> SqlError {
        self.err(format!(
            "expected {what}, found {}",
            self.peek().tok.describe()
        ))
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.is_kw(kw) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect_kw(&mut self, kw: &str, ctx: &str) -> Result<(), SqlError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(self.expected(&format!("{}{ctx}", kw.to_ascii_uppercase())))
        }
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if &self.peek().tok == t {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Tok, what: &str) -> Result<(), SqlError> {
        if self.eat(t) {
            Ok(())
        } else {
            Err(self.expected(what))
        }
    }

    fn statement(&mut self) -> Result<Statement, SqlError> {
        self.expect_kw("select", " at the start of the rule")?;
        let mut items = Vec::new();
        loop {
            if self.peek().tok == Tok::Star {
                let t = self.bump();
                items.push(SelectItem::Star(t.start));
            } else {
                let expr = self.expr()?;
                let alias = if self.eat_kw("as") {
                    match self.bump().tok {
                        Tok::Ident(s) if !is_reserved(&s) => Some(s),
                        Tok::Quoted(s) => Some(s),
                        _ => {
                            self.i -= 1;
                            return Err(self.expected("a column name after 'AS'"));
                        }
                    }
                } else {
                    None
                };
                items.push(SelectItem::Expr { expr, alias });
            }
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        if !self.is_kw("from") {
            return Err(self.expected("',' or FROM after the select list"));
        }
        self.bump();
        let mut from = Vec::new();
        loop {
            let t = self.bump();
            match t.tok {
                Tok::Quoted(s) | Tok::Str(s) => from.push((s, t.start)),
                _ => {
                    self.i -= 1;
                    return Err(
                        self.expected("a quoted topic filter such as \"devices/+/telemetry\"")
                    );
                }
            }
            if !self.eat(&Tok::Comma) {
                break;
            }
        }
        let mut timestamp = None;
        if self.is_kw("timestamp")
            && matches!(self.peek_at(1), Tok::Ident(s) if s.eq_ignore_ascii_case("by"))
        {
            self.bump();
            self.bump();
            let expr = self.expr()?;
            let mut lateness_ms = 0;
            if self.eat_kw("lateness") {
                lateness_ms = self.duration("LATENESS")?.0;
            }
            timestamp = Some(TimestampBy { expr, lateness_ms });
        }
        let where_ = if self.eat_kw("where") {
            Some(self.expr()?)
        } else {
            None
        };
        let mut group_by = Vec::new();
        let mut group_pos = None;
        if self.is_kw("group") {
            group_pos = Some(self.peek().start);
            self.bump();
            self.expect_kw("by", " after GROUP")?;
            loop {
                group_by.push(self.group_item()?);
                if !self.eat(&Tok::Comma) {
                    break;
                }
            }
        }
        let having_pos = self.peek().start;
        let having = if self.eat_kw("having") {
            Some(self.expr()?)
        } else {
            None
        };
        if self.peek().tok != Tok::Eof {
            let clause = if having.is_some() {
                "an operator or the end of the rule"
            } else if !group_by.is_empty() {
                "',', HAVING or the end of the rule"
            } else if where_.is_some() {
                "an operator, GROUP BY, HAVING or the end of the rule"
            } else {
                "',', TIMESTAMP BY, WHERE, GROUP BY, HAVING or the end of the rule"
            };
            return Err(self.expected(clause));
        }
        Ok(Statement {
            items,
            from,
            timestamp,
            where_,
            group_by,
            group_pos,
            having,
            having_pos,
        })
    }

    /// A duration literal; returns milliseconds and its offset.
    fn duration(&mut self, after: &str) -> Result<(i64, usize), SqlError> {
        let t = self.peek().clone();
        match t.tok {
            Tok::Duration(ms) if ms > MAX_DURATION_MS => {
                Err(self
                    .err("a window, hop, gap or lateness duration must be at most 365 days (365d)"))
            }
            Tok::Duration(ms) if ms > 0 => {
                self.bump();
                Ok((ms, t.start))
            }
            Tok::Duration(_) => Err(self.err("a window duration must be greater than zero")),
            _ => Err(self.expected(&format!("a duration such as 10s after {after}"))),
        }
    }

    fn group_item(&mut self) -> Result<GroupItem, SqlError> {
        let t = self.peek().clone();
        if let Tok::Ident(name) = &t.tok
            && self.peek_at(1) == &Tok::LParen
        {
            let lname = name.to_ascii_lowercase();
            let kind_name = lname.to_ascii_uppercase();
            let is_window = matches!(
                lname.as_str(),
                "tumbling" | "hopping" | "sliding" | "session"
            ) || (lname == "count" && self.peek_at(2) != &Tok::Star);
            if is_window {
                self.bump();
                self.bump();
                let ctx = format!("'{kind_name}('");
                let kind = match lname.as_str() {
                    "tumbling" => WindowKind::Tumbling(self.duration(&ctx)?.0),
                    "sliding" => WindowKind::Sliding(self.duration(&ctx)?.0),
                    "session" => WindowKind::Session(self.duration(&ctx)?.0),
                    "hopping" => {
                        let (d, _) = self.duration(&ctx)?;
                        self.expect(&Tok::Comma, "',' and a hop size in HOPPING(size, hop)")?;
                        let (step, pos) = self.duration("','")?;
                        if step > d {
                            return Err(SqlError::at(
                                self.src,
                                pos,
                                "the hop of a HOPPING window must not exceed its size",
                            ));
                        }
                        if d / step > 1000 {
                            return Err(SqlError::at(
                                self.src,
                                pos,
                                "a HOPPING window may overlap at most 1000 windows (size / hop)",
                            ));
                        }
                        WindowKind::Hopping(d, step)
                    }
                    _ => {
                        let n = self.count_arg("a message count such as 10 after 'COUNT('")?;
                        let step = if self.eat(&Tok::Comma) {
                            self.count_arg("a step count after ','")?
                        } else {
                            n
                        };
                        if n > 1_000_000 || step > 1_000_000 {
                            return Err(SqlError::at(
                                self.src,
                                t.start,
                                "COUNT window sizes are limited to 1000000",
                            ));
                        }
                        WindowKind::Count(n, step)
                    }
                };
                self.expect(&Tok::RParen, &format!("')' to close {kind_name}(...)"))?;
                return Ok(GroupItem::Window { kind, pos: t.start });
            }
        }
        Ok(GroupItem::Expr(self.expr()?))
    }

    fn count_arg(&mut self, what: &str) -> Result<usize, SqlError> {
        match self.peek().tok {
            Tok::Int(n) if n > 0 => {
                self.bump();
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
            Tok::Int(_) => Err(self.err("a window count must be greater than zero")),
            _ => Err(self.expected(what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn where_canon(sql: &str) -> String {
        let st = parse(&format!("SELECT a FROM \"t\" WHERE {sql}")).expect("parses");
        canon(st.where_.as_ref().expect("where"))
    }

    #[test]
    fn precedence() {
        assert_eq!(
            where_canon("a + b * c = d"),
            r#"(("a" + ("b" * "c")) = "d")"#
        );
        assert_eq!(
            where_canon("a OR b AND NOT c"),
            r#"("a" OR ("b" AND (NOT "c")))"#
        );
        assert_eq!(where_canon("NOT a = 1"), r#"(NOT ("a" = 1))"#);
        assert_eq!(where_canon("a - b - c"), r#"(("a" - "b") - "c")"#);
        assert_eq!(where_canon("a || b = 'x'"), r#"(("a" || "b") = 'x')"#);
        assert_eq!(where_canon("-a * 2"), r#"((-"a") * 2)"#);
        assert_eq!(
            where_canon("x BETWEEN 1 AND 2 AND y"),
            r#"(("x" BETWEEN 1 AND 2) AND "y")"#
        );
        assert_eq!(
            where_canon("x NOT IN (1, 2) OR y IS NOT NULL"),
            r#"(("x" NOT IN (1, 2)) OR ("y" IS NOT NULL))"#
        );
        assert_eq!(
            where_canon("a.b[0].\"c d\" LIKE 'x%'"),
            r#"("a"."b"[0]."c d" LIKE 'x%')"#
        );
    }

    #[test]
    fn clauses() {
        let st = parse(
            "select device, avg(t) as a from \"d/+/t\", 'x/#' timestamp by ts lateness 5s \
             where t > 1 group by device, tumbling(10s) having a > 2",
        )
        .expect("parses");
        assert_eq!(st.from.len(), 2);
        assert_eq!(st.timestamp.as_ref().map(|t| t.lateness_ms), Some(5000));
        assert!(matches!(
            st.group_by[1],
            GroupItem::Window {
                kind: WindowKind::Tumbling(10_000),
                ..
            }
        ));
        assert!(st.having.is_some());
    }

    #[test]
    fn error_messages() {
        let e = |s: &str| parse(s).expect_err("fails").to_string();
        assert_eq!(
            e("SELECT a FROM \"t\" WHERE a AND FROM"),
            "line 1, column 31: expected an expression after 'AND', found 'FROM'"
        );
        assert_eq!(
            e("SELECT FROM \"t\""),
            "line 1, column 8: expected an expression after 'SELECT', found 'FROM'"
        );
        assert_eq!(
            e("SELECT a \"t\""),
            "line 1, column 10: expected ',' or FROM after the select list, found quoted name \"t\""
        );
        assert_eq!(
            e("SELECT a FROM t"),
            "line 1, column 15: expected a quoted topic filter such as \"devices/+/telemetry\", found identifier 't'"
        );
        assert_eq!(
            e("SELECT a FROM \"t\" GROUP BY TUMBLING(10)"),
            "line 1, column 37: expected a duration such as 10s after 'TUMBLING(', found number 10"
        );
        let deep = format!("SELECT {}1{} FROM \"t\"", "(".repeat(500), ")".repeat(500));
        assert!(e(&deep).contains("nested too deeply"));
    }
}
