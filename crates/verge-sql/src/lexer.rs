//! The lexer: SQL text to tokens with byte positions; understands durations such as `10s`.

use crate::error::SqlError;

/// Keywords that cannot be used as bare column names (quote them: `"from"`).
const RESERVED: &[&str] = &[
    "select", "from", "where", "group", "by", "having", "as", "and", "or", "not", "in", "between",
    "like", "is", "null", "true", "false", "case", "when", "then", "else", "end", "cast",
];

/// Whether `s` is a reserved keyword (case-insensitive).
pub(crate) fn is_reserved(s: &str) -> bool {
    RESERVED.iter().any(|k| k.eq_ignore_ascii_case(s))
}

/// What a token is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An unquoted identifier or keyword, as written.
    Ident(String),
    /// A double-quoted identifier (`"weird name"`) or topic filter.
    Quoted(String),
    /// A single-quoted string literal.
    Str(String),
    /// An integer literal.
    Int(i64),
    /// The integer 9223372036854775808 (2^63): only valid after a minus sign,
    /// where the parser folds the two into `i64::MIN`.
    IntMinMagnitude,
    /// A floating point literal.
    Float(f64),
    /// A duration literal in milliseconds (`10s`, `500ms`).
    Duration(i64),
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
    Star,
    Plus,
    Minus,
    Slash,
    Percent,
    Concat,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
}

/// A token and where it starts and ends (byte offsets into the SQL).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

impl Tok {
    /// How the token is named in error messages ("found ...").
    pub fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => {
                if is_reserved(s) {
                    format!("'{}'", s.to_ascii_uppercase())
                } else {
                    format!("identifier '{s}'")
                }
            }
            Tok::Quoted(s) => format!("quoted name \"{s}\""),
            Tok::Str(s) => format!("string '{s}'"),
            Tok::Int(i) => format!("number {i}"),
            Tok::IntMinMagnitude => "number 9223372036854775808".to_string(),
            Tok::Float(f) => format!("number {f}"),
            Tok::Duration(d) => format!("duration {d}ms"),
            Tok::Eof => "end of input".to_string(),
            other => format!("'{}'", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::Comma => ",",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Dot => ".",
            Tok::Star => "*",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Concat => "||",
            Tok::Eq => "=",
            Tok::Ne => "<>",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            _ => "?",
        }
    }
}

/// Splits `src` into tokens; the last one is always [`Tok::Eof`].
pub(crate) fn lex(src: &str) -> Result<Vec<Token>, SqlError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'-' && b.get(i + 1) == Some(&b'-') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && b.get(i + 1) == Some(&b'*') {
            match src[i + 2..].find("*/") {
                Some(end) => i = i + 2 + end + 2,
                None => return Err(SqlError::at(src, start, "unterminated comment")),
            }
            continue;
        }
        let tok = if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            // Identifiers: ASCII letters, digits, '_' and any non-ASCII character.
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            Tok::Ident(src[start..i].to_string())
        } else if c.is_ascii_digit() {
            let (tok, end) = number(src, start)?;
            i = end;
            tok
        } else if c == b'\'' || c == b'"' {
            let (text, end) = quoted(src, start, c)?;
            i = end;
            if c == b'\'' {
                Tok::Str(text)
            } else {
                Tok::Quoted(text)
            }
        } else {
            let two = b.get(i + 1).copied();
            let (tok, len) = match (c, two) {
                (b'|', Some(b'|')) => (Tok::Concat, 2),
                (b'<', Some(b'>')) | (b'!', Some(b'=')) => (Tok::Ne, 2),
                (b'<', Some(b'=')) => (Tok::Le, 2),
                (b'>', Some(b'=')) => (Tok::Ge, 2),
                (b'=', Some(b'=')) => (Tok::Eq, 2),
                (b',', _) => (Tok::Comma, 1),
                (b'(', _) => (Tok::LParen, 1),
                (b')', _) => (Tok::RParen, 1),
                (b'[', _) => (Tok::LBracket, 1),
                (b']', _) => (Tok::RBracket, 1),
                (b'.', _) => (Tok::Dot, 1),
                (b'*', _) => (Tok::Star, 1),
                (b'+', _) => (Tok::Plus, 1),
                (b'-', _) => (Tok::Minus, 1),
                (b'/', _) => (Tok::Slash, 1),
                (b'%', _) => (Tok::Percent, 1),
                (b'=', _) => (Tok::Eq, 1),
                (b'<', _) => (Tok::Lt, 1),
                (b'>', _) => (Tok::Gt, 1),
                _ => {
                    let ch = src[i..].chars().next().unwrap_or('?');
                    return Err(SqlError::at(
                        src,
                        start,
                        format!("unexpected character '{ch}'"),
                    ));
                }
            };
            i += len;
            tok
        };
        out.push(Token { tok, start, end: i });
    }
    out.push(Token {
        tok: Tok::Eof,
        start: src.len(),
        end: src.len(),
    });
    Ok(out)
}

/// Lexes a number or duration starting at `start`; returns the token and the end offset.
fn number(src: &str, start: usize) -> Result<(Tok, usize), SqlError> {
    let b = src.as_bytes();
    let mut i = start;
    let digits = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    i = digits(i);
    let mut is_float = false;
    if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        is_float = true;
        i = digits(i + 1);
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            is_float = true;
            i = digits(j);
        }
    }
    let text = &src[start..i];
    // A suffix of letters makes a duration.
    let mut k = i;
    while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
        k += 1;
    }
    if k > i {
        let unit = &src[i..k];
        let factor = match unit.to_ascii_lowercase().as_str() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(SqlError::at(
                    src,
                    i,
                    format!(
                        "expected a duration unit (ms, s, m, h, d) after '{text}', found '{unit}'"
                    ),
                ));
            }
        };
        if is_float {
            return Err(SqlError::at(
                src,
                start,
                "a duration must be a whole number, e.g. 1500ms",
            ));
        }
        let n: i64 = text
            .parse()
            .map_err(|_| SqlError::at(src, start, "duration is too large"))?;
        let ms = n
            .checked_mul(factor)
            .ok_or_else(|| SqlError::at(src, start, "duration is too large"))?;
        return Ok((Tok::Duration(ms), k));
    }
    if is_float {
        let f: f64 = text
            .parse()
            .map_err(|_| SqlError::at(src, start, format!("invalid number '{text}'")))?;
        if !f.is_finite() {
            return Err(SqlError::at(
                src,
                start,
                format!("number '{text}' is too large"),
            ));
        }
        Ok((Tok::Float(f), i))
    } else if text.parse::<u64>() == Ok(1 << 63) {
        Ok((Tok::IntMinMagnitude, i))
    } else {
        let n: i64 = text.parse().map_err(|_| {
            SqlError::at(
                src,
                start,
                format!("number '{text}' is too large for a 64-bit integer"),
            )
        })?;
        Ok((Tok::Int(n), i))
    }
}

/// Lexes a quoted string or name; a doubled quote stands for one quote.
fn quoted(src: &str, start: usize, q: u8) -> Result<(String, usize), SqlError> {
    let b = src.as_bytes();
    let mut text = String::new();
    let mut i = start + 1;
    let mut seg = i;
    loop {
        if i >= b.len() {
            let what = if q == b'\'' { "string" } else { "quoted name" };
            return Err(SqlError::at(src, start, format!("unterminated {what}")));
        }
        if b[i] == q {
            text.push_str(&src[seg..i]);
            if b.get(i + 1) == Some(&q) {
                text.push(q as char);
                i += 2;
                seg = i;
                continue;
            }
            return Ok((text, i + 1));
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s).expect("lexes").into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn durations_and_numbers() {
        assert_eq!(
            toks("10s 500ms 5m 1h 2d 3 4.5 1e3"),
            vec![
                Tok::Duration(10_000),
                Tok::Duration(500),
                Tok::Duration(300_000),
                Tok::Duration(3_600_000),
                Tok::Duration(172_800_000),
                Tok::Int(3),
                Tok::Float(4.5),
                Tok::Float(1000.0),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn strings_names_and_operators() {
        assert_eq!(
            toks("'it''s' \"a \"\"b\"\"\" a||b <> != <= >= -- comment\n x"),
            vec![
                Tok::Str("it's".into()),
                Tok::Quoted("a \"b\"".into()),
                Tok::Ident("a".into()),
                Tok::Concat,
                Tok::Ident("b".into()),
                Tok::Ne,
                Tok::Ne,
                Tok::Le,
                Tok::Ge,
                Tok::Ident("x".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn errors_have_positions() {
        let e = lex("SELECT 'abc").expect_err("unterminated");
        assert_eq!(e.to_string(), "line 1, column 8: unterminated string");
        let e = lex("SELECT\n  10x").expect_err("bad unit");
        assert_eq!(
            e.to_string(),
            "line 2, column 5: expected a duration unit (ms, s, m, h, d) after '10', found 'x'"
        );
        let e = lex("a ? b").expect_err("bad char");
        assert_eq!(e.to_string(), "line 1, column 3: unexpected character '?'");
        assert!(lex("99999999999999999999").is_err());
    }
}
