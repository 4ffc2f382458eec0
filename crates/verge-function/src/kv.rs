//! The function's state: a key-value map shared by all instances of the
//! function and kept across its versions and node restarts (the node writes
//! it to disk at most once a second and at shutdown).
//!
//! Keys are at most 256 bytes; keys plus values are bounded by the
//! function's `state_bytes` (1 MiB by default). Instances run concurrently
//! (`concurrency`, 4 by default), so a read-modify-write such as a counter
//! can lose updates unless the function runs with `concurrency = 1`.
//!
//! ```
//! use verge_function::kv;
//!
//! kv::set("last", b"21.5")?;
//! assert_eq!(kv::get("last").as_deref(), Some(&b"21.5"[..]));
//! assert!(kv::delete("last"));
//! assert_eq!(kv::get("last"), None);
//! # Ok::<(), verge_function::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::sys;

/// Room for a value on the first try; a longer one costs a second call.
const FIRST_TRY: usize = 64;

/// The value of `key`, or `None` when absent.
pub fn get(key: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0; FIRST_TRY];
    loop {
        let n = sys::kv_get(key, &mut buf)?;
        if n <= buf.len() {
            buf.truncate(n);
            return Some(buf);
        }
        // The value outgrew the buffer (or another instance just grew it):
        // ask again with room for what the host announced.
        buf.resize(n, 0);
    }
}

/// Store `value` under `key`, replacing what was there. Fails when the key
/// is longer than 256 bytes or the state would exceed its quota.
pub fn set(key: &str, value: &[u8]) -> Result<()> {
    match sys::kv_set(key, value) {
        0 => Ok(()),
        -1 => Err(Error::msg(format_args!(
            "kv set {key:?}: the function's state quota (state_bytes) would be exceeded"
        ))),
        -2 => Err(Error::msg(format_args!(
            "kv set: key of {} bytes is longer than 256 bytes",
            key.len()
        ))),
        n => Err(Error::msg(format_args!(
            "kv set {key:?}: host returned {n}"
        ))),
    }
}

/// Remove `key`; `true` when it was there.
pub fn delete(key: &str) -> bool {
    sys::kv_delete(key)
}
