//! An in-memory stand-in for the node, so handlers can be unit-tested
//! natively (`cargo test`): it holds the config, the kv state and the log
//! lines that [`config`](crate::config), [`kv`](crate::kv) and
//! [`log`](crate::log) use on every target but `wasm32`.
//!
//! The mock host is per thread, and `cargo test` runs each test on its own
//! thread, so tests do not see each other's state; [`reset`] starts over
//! within a test.
//!
//! ```
//! use verge_function::{mock, Message, Result};
//!
//! fn handle(msg: Message) -> Result<Vec<Message>> {
//!     let prefix = verge_function::config();
//!     verge_function::log::info("called");
//!     Ok(vec![Message::new(format!("{}/{}", prefix.trim_matches('"'), msg.topic), msg.payload)])
//! }
//!
//! mock::set_config("\"out\"");
//! let out = mock::invoke(handle, &Message::new("a/b", "x")).unwrap();
//! assert_eq!(out[0].topic, "out/a/b");
//! assert_eq!(mock::take_logs(), [(verge_function::log::Level::Info, "called".to_owned())]);
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::__rt as rt;
use crate::abi;
use crate::error::{Error, Result};
use crate::log::Level;
use crate::message::Message;

/// The node's default `state_bytes`.
pub const DEFAULT_STATE_QUOTA: usize = 1 << 20;
/// Longest key the node accepts.
pub const MAX_KEY_LEN: usize = 256;
/// Where the node cuts log lines.
pub const MAX_LOG_LINE: usize = 4096;

/// What the mock node holds for the function.
struct Host {
    /// The config document `config()` returns.
    config: String,
    /// The function's state.
    kv: BTreeMap<String, Vec<u8>>,
    /// Bound on keys plus values in `kv`.
    quota: usize,
    /// Log lines written so far.
    logs: Vec<(Level, String)>,
}

thread_local! {
    static HOST: RefCell<Host> = const {
        RefCell::new(Host {
            config: String::new(),
            kv: BTreeMap::new(),
            quota: DEFAULT_STATE_QUOTA,
            logs: Vec::new(),
        })
    };
}

/// Set the config document that [`config`](crate::config) returns (empty
/// until set).
pub fn set_config(json: impl Into<String>) {
    let json = json.into();
    HOST.with_borrow_mut(|h| h.config = json);
}

/// Forget the config, the state and the logs; the quota goes back to
/// [`DEFAULT_STATE_QUOTA`].
pub fn reset() {
    HOST.with_borrow_mut(|h| {
        h.config.clear();
        h.kv.clear();
        h.quota = DEFAULT_STATE_QUOTA;
        h.logs.clear();
    });
}

/// Bound keys plus values in the state to `bytes` (the function's
/// `state_bytes`).
pub fn set_state_quota(bytes: usize) {
    HOST.with_borrow_mut(|h| h.quota = bytes);
}

/// A copy of the state.
pub fn state() -> BTreeMap<String, Vec<u8>> {
    HOST.with_borrow(|h| h.kv.clone())
}

/// The log lines written since the last call (or the start), oldest first.
pub fn take_logs() -> Vec<(Level, String)> {
    HOST.with_borrow_mut(|h| std::mem::take(&mut h.logs))
}

/// Run `handler` on `msg` the way the node does: encode `msg` as the ABI
/// input, run the same glue as the `verge_handle` export, and decode the
/// output. So the result is what the node would see: `retain` is `false` in
/// the received message, returned messages carry `msg.time_ms`, and a
/// returned message the ABI cannot carry (QoS 3) is an error.
pub fn invoke(handler: rt::Handler, msg: &Message) -> Result<Vec<Message>> {
    let mut input = Vec::new();
    abi::encode_input(msg, &mut input).map_err(|e| e.context("encode input"))?;
    let mut output = Vec::new();
    rt::run(&input, handler, &mut output);
    match abi::decode_output(&output, msg.time_ms) {
        Ok(result) => result.map_err(Error::from),
        Err(e) => Err(Error::msg(format_args!("bad output: {e}"))),
    }
}

/// The mock host imports, with the node's semantics.
pub(crate) mod sys {
    use super::{HOST, Level, MAX_KEY_LEN, MAX_LOG_LINE};

    pub(crate) fn log(level: i32, line: &str) {
        let level = match level {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            3 => Level::Debug,
            _ => Level::Trace,
        };
        let mut end = line.len().min(MAX_LOG_LINE);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        HOST.with_borrow_mut(|h| h.logs.push((level, line[..end].to_owned())));
    }

    fn copy(src: &[u8], dst: &mut [u8]) -> usize {
        let n = src.len().min(dst.len());
        dst[..n].copy_from_slice(&src[..n]);
        src.len()
    }

    pub(crate) fn config(buf: &mut [u8]) -> usize {
        HOST.with_borrow(|h| copy(h.config.as_bytes(), buf))
    }

    pub(crate) fn kv_get(key: &str, buf: &mut [u8]) -> Option<usize> {
        HOST.with_borrow(|h| h.kv.get(key).map(|v| copy(v, buf)))
    }

    pub(crate) fn kv_set(key: &str, value: &[u8]) -> i32 {
        if key.len() > MAX_KEY_LEN {
            return -2;
        }
        HOST.with_borrow_mut(|h| {
            let used: usize = h.kv.iter().map(|(k, v)| k.len() + v.len()).sum();
            let old = h.kv.get(key).map_or(0, |v| key.len() + v.len());
            if used - old + key.len() + value.len() > h.quota {
                return -1;
            }
            h.kv.insert(key.to_owned(), value.to_vec());
            0
        })
    }

    pub(crate) fn kv_delete(key: &str) -> bool {
        HOST.with_borrow_mut(|h| h.kv.remove(key).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config, kv, log};

    #[test]
    fn config_of_any_length() {
        assert_eq!(config(), "");
        let long = format!("{{\"k\":\"{}\"}}", "x".repeat(10_000));
        set_config(long.clone());
        assert_eq!(config(), long);
        reset();
        assert_eq!(config(), "");
    }

    #[test]
    fn kv_values_longer_than_the_first_buffer() {
        let big = vec![7u8; 1000];
        assert!(kv::set("k", &big).is_ok());
        assert_eq!(kv::get("k"), Some(big));
        assert!(kv::set("k", b"").is_ok());
        assert_eq!(kv::get("k"), Some(Vec::new()));
        assert!(kv::delete("k"));
        assert!(!kv::delete("k"));
        assert_eq!(kv::get("k"), None);
    }

    #[test]
    fn kv_limits_are_the_nodes() {
        let long_key = "k".repeat(MAX_KEY_LEN + 1);
        assert!(
            kv::set(&long_key, b"v")
                .unwrap_err()
                .message()
                .contains("longer than 256 bytes")
        );
        set_state_quota(10);
        assert!(kv::set("a", b"123456789").is_ok());
        // replacing a value counts only the new one
        assert!(kv::set("a", b"987654321").is_ok());
        assert!(kv::set("b", b"1").unwrap_err().message().contains("quota"));
        assert_eq!(state().len(), 1);
    }

    #[test]
    fn logs_are_captured_and_cut() {
        log::error("e");
        log::trace(&"é".repeat(3000));
        let logs = take_logs();
        assert_eq!(logs[0], (Level::Error, "e".to_owned()));
        assert_eq!(logs[1].0, Level::Trace);
        assert_eq!(logs[1].1.len(), MAX_LOG_LINE);
        assert!(take_logs().is_empty());
    }

    fn echo(msg: Message) -> Result<Vec<Message>> {
        Ok(vec![msg])
    }

    fn fail(_: Message) -> Result<Vec<Message>> {
        Err("nope".into())
    }

    #[test]
    fn invoke_goes_through_the_abi() {
        let msg = Message::json("a/b", "{}")
            .with_user_property("k", "v")
            .with_retain(true)
            .with_time_ms(9);
        let out = invoke(echo, &msg);
        assert_eq!(out, Ok(vec![msg.with_retain(false)]));
        assert_eq!(
            invoke(fail, &Message::new("t", "")),
            Err(Error::from("nope"))
        );
        let bad = |_: Message| Ok(vec![Message::new("t", "").with_qos(7)]);
        assert!(invoke(bad, &Message::new("t", "")).is_err());
    }
}
