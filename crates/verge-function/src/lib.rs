//! Write Verge edge functions in Rust: a handler gets one [`Message`] and
//! returns zero or more, or an [`Error`]; [`export!`] turns it into a
//! WebAssembly module that speaks the Verge ABI, version 1
//! (`docs/functions.md`).
//!
//! ```
//! use verge_function::{Context, Message, Result};
//!
//! fn handle(msg: Message) -> Result<Vec<Message>> {
//!     let celsius: f64 = msg.payload_str()?.trim().parse().context("payload")?;
//!     if celsius <= 30.0 {
//!         return Ok(vec![]);
//!     }
//!     let device = msg.topic_level(1).unwrap_or("unknown");
//!     verge_function::log::info(&format!("{device} is hot"));
//!     Ok(vec![Message::new(format!("alerts/{device}"), format!("{celsius}"))])
//! }
//!
//! verge_function::export!(handle);
//!
//! // Natively, the same code runs against an in-memory node:
//! let out = verge_function::mock::invoke(handle, &Message::new("devices/d1/t", "31.5"));
//! assert_eq!(out.unwrap()[0].topic, "alerts/d1");
//! ```
//!
//! Build it as a `cdylib` for `wasm32-unknown-unknown` (no WASI):
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! verge-function = { path = "…/crates/verge-function" }
//! ```
//!
//! `cargo build --release --target wasm32-unknown-unknown` then gives a
//! module whose only imports are the node's (module `verge`) and whose
//! exports are `memory`, `verge_abi_version`, `verge_alloc`, `verge_handle`
//! and, with `export!(handle, init = init)`, `verge_init`.
//!
//! # What the SDK does and does not do
//!
//! - The host imports are wrapped as [`log`], [`config`] and [`kv`]. On
//!   every target but `wasm32` they talk to [`mock`], an in-memory node
//!   with the same semantics, so handlers are unit-tested with plain
//!   `cargo test`; [`mock::invoke`] runs a handler through the ABI bytes.
//! - No dependencies, and so no serde: [`config`] returns the raw JSON
//!   document and payloads are bytes. Functions that want JSON add
//!   `serde_json` themselves; [`Context`] turns its errors into [`Error`].
//!   (Rejected: a `serde` feature in the SDK. It would save a `map_err`
//!   per call site but tie every function to the SDK's serde version.)
//! - Input and output live in two buffers owned by the module and reused
//!   across calls ([`abi`] is the codec). A panic in the handler traps the
//!   call; the node then discards the instance and starts a fresh one.

mod error;
mod message;
mod sys;

pub mod abi;
pub mod kv;
pub mod log;
// Documented on every target, so the links to it hold.
#[cfg(any(not(target_arch = "wasm32"), doc))]
pub mod mock;

#[doc(hidden)]
#[path = "rt.rs"]
pub mod __rt;

pub use error::{Context, Error, Result};
pub use message::Message;

/// The function's config, the JSON document given at deploy, as text.
///
/// What the node passes for a function deployed without config is not
/// pinned by the ABI; treat an empty string, `null` and `{}` alike as "all
/// defaults".
pub fn config() -> String {
    let mut buf = Vec::new();
    loop {
        let n = sys::config(&mut buf);
        if n <= buf.len() {
            buf.truncate(n);
            break;
        }
        buf.resize(n, 0);
    }
    String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Export `handler` (a `fn(Message) -> Result<Vec<Message>>`) as the
/// module's `verge_handle`, with `verge_abi_version` and `verge_alloc`;
/// `export!(handler, init = init)` also exports `init` (a
/// `fn() -> Result<()>`) as `verge_init`, run once per instance (its error
/// goes to the node's log and fails the instance).
///
/// Use it once, in the crate root of a `cdylib`. The exports exist only
/// when compiling for `wasm32`; on other targets the macro just checks the
/// signatures, and tests call the handler directly or through
/// [`mock::invoke`].
#[macro_export]
macro_rules! export {
    (@handler $handler:path) => {
        const _: () = {
            #[cfg(target_arch = "wasm32")]
            #[unsafe(no_mangle)]
            pub extern "C" fn verge_abi_version() -> i32 {
                $crate::__rt::ABI_VERSION
            }
            #[cfg(target_arch = "wasm32")]
            #[unsafe(no_mangle)]
            pub extern "C" fn verge_alloc(len: i32) -> i32 {
                $crate::__rt::alloc(len)
            }
            #[cfg(target_arch = "wasm32")]
            #[unsafe(no_mangle)]
            pub extern "C" fn verge_handle(ptr: i32, len: i32) -> i64 {
                $crate::__rt::handle(ptr, len, $handler)
            }
            let _: $crate::__rt::Handler = $handler;
        };
    };
    ($handler:path $(,)?) => {
        $crate::export!(@handler $handler);
    };
    ($handler:path, init = $init:path $(,)?) => {
        $crate::export!(@handler $handler);
        const _: () = {
            #[cfg(target_arch = "wasm32")]
            #[unsafe(no_mangle)]
            pub extern "C" fn verge_init() -> i32 {
                $crate::__rt::init($init)
            }
            let _: $crate::__rt::Init = $init;
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(msg: Message) -> Result<Vec<Message>> {
        Ok(vec![msg])
    }

    fn init() -> Result<()> {
        Ok(())
    }

    // Expands on the host too (signature checks only).
    export!(handle, init = init);

    #[test]
    fn config_is_the_mock_document() {
        mock::set_config(r#"{"above":30}"#);
        assert_eq!(config(), r#"{"above":30}"#);
    }
}
