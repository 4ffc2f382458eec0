//! The error a function returns: one message, recorded by the node as the
//! call's error (`last_error` in `GET /api/functions/{name}`).

use core::fmt;

/// An error returned by a handler: a message and nothing else, since all
/// the node does with it is record it.
///
/// `?` converts strings and the common parse errors of `core`/`std`; any
/// other error converts with [`Error::msg`] (`.map_err(Error::msg)?`) or,
/// with a word on what failed, [`Context::context`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// What went wrong, in lower case without a trailing period.
    message: String,
}

/// The result of a handler and of the SDK's fallible calls.
pub type Result<T> = core::result::Result<T, Error>;

impl Error {
    /// An error whose message is `msg` displayed.
    pub fn msg(msg: impl fmt::Display) -> Self {
        Self {
            message: msg.to_string(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefix the message with what was being done: `"{what}: {message}"`.
    #[must_use]
    pub fn context(self, what: impl fmt::Display) -> Self {
        Self {
            message: format!("{what}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Self::msg(s)
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self { message }
    }
}

/// `From` for error types of `core`/`std` that handlers commonly meet.
/// (A blanket `impl<E: std::error::Error>` would rule out `From<&str>`.)
macro_rules! from_display {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Self::msg(e)
            }
        })*
    };
}

from_display!(
    core::str::Utf8Error,
    std::string::FromUtf8Error,
    core::num::ParseFloatError,
    core::num::ParseIntError,
    core::str::ParseBoolError,
    core::num::TryFromIntError,
    core::char::ParseCharError,
    core::fmt::Error,
);

/// Attach what was being done to an error, turning any displayable error
/// (serde_json's, say) or a `None` into an [`Error`]:
///
/// ```
/// use verge_function::{Context, Result};
///
/// fn celsius(s: &str) -> Result<f64> {
///     s.trim().parse::<f64>().context("temperature")
/// }
/// assert_eq!(
///     celsius("warm").unwrap_err().message(),
///     "temperature: invalid float literal"
/// );
/// ```
pub trait Context<T> {
    /// `Err(e)` becomes `"{what}: {e}"`; `None` becomes `"{what}"`.
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for core::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::msg(format_args!("{what}: {e}")))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::msg(what))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<i64> {
        Ok(s.parse::<i64>()?)
    }

    #[test]
    fn question_mark_converts_std_errors() {
        assert_eq!(
            parse("x").unwrap_err().message(),
            "invalid digit found in string"
        );
        fn text(b: Vec<u8>) -> Result<String> {
            Ok(String::from_utf8(b)?)
        }
        assert!(
            text(vec![0xff])
                .unwrap_err()
                .message()
                .contains("invalid utf-8")
        );
    }

    #[test]
    fn strings_and_context() {
        let e: Error = "no temperature".into();
        assert_eq!(e.to_string(), "no temperature");
        let e: Error = String::from("x").into();
        assert_eq!(e.context("reading").message(), "reading: x");
        assert_eq!(
            None::<u8>.context("field missing").unwrap_err().message(),
            "field missing"
        );
        let r: core::result::Result<u8, &str> = Err("eof");
        assert_eq!(r.context("payload").unwrap_err().message(), "payload: eof");
    }
}
