//! The host imports (module `verge`) behind safe functions. On `wasm32`
//! they are the node's; elsewhere they are the in-memory mock host of
//! [`crate::mock`], with the same byte-level behaviour (copy
//! `min(len, cap)`, return `len`), so the retry loops above them run the
//! same code in native tests.
//!
//! This is the only module with `unsafe` code.

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod imports {
    // Pointers and `usize` are `i32` on wasm32, as the ABI wants.
    #[link(wasm_import_module = "verge")]
    unsafe extern "C" {
        pub(super) fn log(level: i32, ptr: *const u8, len: usize);
        pub(super) fn config(ptr: *mut u8, cap: usize) -> i32;
        pub(super) fn kv_get(
            key_ptr: *const u8,
            key_len: usize,
            val_ptr: *mut u8,
            val_cap: usize,
        ) -> i32;
        pub(super) fn kv_set(
            key_ptr: *const u8,
            key_len: usize,
            val_ptr: *const u8,
            val_len: usize,
        ) -> i32;
        pub(super) fn kv_delete(key_ptr: *const u8, key_len: usize) -> i32;
    }
}

/// Write `line` to the node's log at `level` (0 error .. 4 trace).
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
pub(crate) fn log(level: i32, line: &str) {
    // SAFETY: the host reads `len` bytes at `ptr`, all inside `line`.
    unsafe { imports::log(level, line.as_ptr(), line.len()) }
}

/// Copy up to `buf.len()` bytes of the config into `buf`; its full length.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
pub(crate) fn config(buf: &mut [u8]) -> usize {
    // SAFETY: the host writes at most `cap` bytes at `ptr`, all inside `buf`.
    let n = unsafe { imports::config(buf.as_mut_ptr(), buf.len()) };
    len(n)
}

/// Copy up to `buf.len()` bytes of the value of `key` into `buf`; its full
/// length, or `None` when absent.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
pub(crate) fn kv_get(key: &str, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: the host reads the key inside `key` and writes at most
    // `val_cap` bytes at `val_ptr`, all inside `buf`.
    let n = unsafe { imports::kv_get(key.as_ptr(), key.len(), buf.as_mut_ptr(), buf.len()) };
    (n >= 0).then(|| len(n))
}

/// Store `value` under `key`: `0` stored, `-1` over quota, `-2` key too long.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
pub(crate) fn kv_set(key: &str, value: &[u8]) -> i32 {
    // SAFETY: the host only reads, inside `key` and `value`.
    unsafe { imports::kv_set(key.as_ptr(), key.len(), value.as_ptr(), value.len()) }
}

/// Remove `key`: `true` when it was there.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
pub(crate) fn kv_delete(key: &str) -> bool {
    // SAFETY: the host only reads, inside `key`.
    unsafe { imports::kv_delete(key.as_ptr(), key.len()) == 1 }
}

/// A length the host returned as `i32` (lengths are never negative; a
/// negative value is read as empty).
#[cfg(target_arch = "wasm32")]
fn len(n: i32) -> usize {
    usize::try_from(n).unwrap_or(0)
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::mock::sys::{config, kv_delete, kv_get, kv_set, log};
