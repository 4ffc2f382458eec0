//! Error types: [`SqlError`] for rules that do not compile, [`EvalError`] for messages that fail to evaluate.

/// A rule's SQL could not be parsed or validated. `line` and `column` are
/// 1-based and point at the offending token (columns count characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SqlError {
    /// 1-based line of the offending token.
    pub line: u32,
    /// 1-based column (in characters) of the offending token.
    pub column: u32,
    /// What was expected and what was found, in lower case.
    pub message: String,
}

impl SqlError {
    /// An error at byte offset `pos` of `src`.
    pub(crate) fn at(src: &str, pos: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_col(src, pos);
        SqlError {
            line,
            column,
            message: message.into(),
        }
    }
}

/// 1-based line and character column of byte offset `pos` in `src`.
pub(crate) fn line_col(src: &str, pos: usize) -> (u32, u32) {
    let mut pos = pos.min(src.len());
    while !src.is_char_boundary(pos) {
        pos -= 1;
    }
    let before = &src[..pos];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    )
}

/// A message could not be evaluated (a type mismatch, an overflow, a division
/// by zero...). The message names the expression it happened in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    /// Human readable description, e.g. `cannot add int and string in 'temperature + unit'`.
    pub message: String,
}

impl EvalError {
    /// An error with the given message.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        EvalError {
            message: message.into(),
        }
    }
}

/// Shorthand for results of evaluation.
pub(crate) type EvalResult<T> = Result<T, EvalError>;
