//! The glue behind the exports that [`export!`](crate::export) generates:
//! the input and output buffers, and the path from input bytes through the
//! handler to output bytes. Not public API: the macro calls it through
//! `verge_function::__rt`.
//!
//! Both buffers live for the whole instance and are reused by every call,
//! and so is one returned message: the next input is decoded into its
//! strings. An allocation and its free cost more than decoding a small
//! message (measured in wasmi: about 1,900 fuel per pair, against about
//! 15,000 for the six allocations a fresh message takes), so in steady
//! state a call allocates only what the handler itself does. The node calls
//! one instance at a time (it runs several instances for concurrency), and
//! never from inside a call, so nothing here is ever in use twice.

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::{abi, log};

/// A handler: one message in, zero or more out, or an error.
pub type Handler = fn(Message) -> Result<Vec<Message>>;

/// An init function, run once per instance before any call.
pub type Init = fn() -> Result<()>;

/// The value `verge_abi_version` returns.
pub const ABI_VERSION: i32 = abi::VERSION;

/// Capacity reserved up front, so even `verge_alloc(0)` returns a real
/// address.
const MIN_INPUT_CAPACITY: usize = 256;

/// A returned message whose buffers hold more than this is freed rather
/// than kept for the next input.
const MAX_SPARE_BYTES: usize = 64 * 1024;

thread_local! {
    /// Where the node writes the next input (`verge_alloc`).
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Where the last output is, until the next call.
    static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// A returned message kept for its buffers (at most `MAX_SPARE_BYTES`).
    static SPARE: RefCell<Option<Message>> = const { RefCell::new(None) };
}

/// `verge_alloc`: make the input buffer `len` bytes long and return its
/// address, or 0 when `len` is negative or memory is exhausted.
pub fn alloc(len: i32) -> i32 {
    let Ok(len) = usize::try_from(len) else {
        return 0;
    };
    INPUT.with_borrow_mut(|buf| {
        let want = len.max(MIN_INPUT_CAPACITY);
        if want > buf.capacity() && buf.try_reserve_exact(want - buf.len()).is_err() {
            return 0;
        }
        // Only bytes beyond the old length get zeroed; the node overwrites
        // all `len` of them anyway.
        buf.resize(len, 0);
        address(buf.as_ptr())
    })
}

/// `verge_handle`: decode the input at `ptr..ptr+len` (which must be the
/// buffer [`alloc`] returned), run `handler`, encode the output and return
/// `(out_ptr << 32) | out_len`.
pub fn handle(ptr: i32, len: i32, handler: Handler) -> i64 {
    let input = INPUT.take();
    let ours =
        ptr == address(input.as_ptr()) && usize::try_from(len).is_ok_and(|len| len <= input.len());
    let result = match usize::try_from(len) {
        Ok(len) if ours => call(&input[..len], handler),
        _ => Err(Error::msg(format_args!(
            "bad input: {ptr}+{len} is not the buffer verge_alloc returned"
        ))),
    };
    INPUT.set(input);
    let packed = OUTPUT.with_borrow_mut(|out| {
        abi::encode_output(&result, out);
        let ptr = address(out.as_ptr()) as u32;
        // Lengths of a 32-bit memory fit in u32.
        let len = out.len() as u32;
        ((u64::from(ptr) << 32) | u64::from(len)) as i64
    });
    recycle(result);
    packed
}

/// `verge_init`: 0 when `init` succeeds; otherwise log its error (the ABI
/// has no other way to pass it) and return 1.
pub fn init(init: Init) -> i32 {
    match init() {
        Ok(()) => 0,
        Err(e) => {
            log::error(&format!("init failed: {e}"));
            1
        }
    }
}

/// Input bytes to output bytes, as `verge_handle` does, without the
/// buffers (for [`crate::mock::invoke`]).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn run(input: &[u8], handler: Handler, out: &mut Vec<u8>) {
    let result = call(input, handler);
    abi::encode_output(&result, out);
    recycle(result);
}

fn call(input: &[u8], handler: Handler) -> Result<Vec<Message>> {
    let mut msg = SPARE.take().unwrap_or_default();
    match abi::decode_input_into(input, &mut msg) {
        Ok(()) => handler(msg),
        Err(e) => {
            SPARE.set(Some(msg));
            Err(Error::msg(format_args!("bad input: {e}")))
        }
    }
}

/// Keep the last returned message for the next input's decoding, unless
/// its buffers are large; free the rest.
fn recycle(result: Result<Vec<Message>>) {
    let Ok(mut messages) = result else {
        return;
    };
    if let Some(m) = messages.pop() {
        let bytes = m.topic.capacity()
            + m.payload.capacity()
            + m.content_type.as_ref().map_or(0, String::capacity)
            + m.user_properties
                .iter()
                .map(|(k, v)| k.capacity() + v.capacity())
                .sum::<usize>();
        if bytes <= MAX_SPARE_BYTES {
            SPARE.set(Some(m));
        }
    }
}

/// A linear-memory address as the ABI's `i32` (wasm32 addresses fit in 32
/// bits; elsewhere this is only ever compared, never dereferenced).
fn address(ptr: *const u8) -> i32 {
    ptr as usize as u32 as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(msg: Message) -> Result<Vec<Message>> {
        Ok(vec![msg])
    }

    fn output() -> Vec<u8> {
        OUTPUT.with_borrow(Clone::clone)
    }

    #[test]
    fn alloc_then_handle_uses_the_same_buffer() {
        let mut input = Vec::new();
        let msg = Message::new("a/b", "hello");
        assert!(abi::encode_input(&msg, &mut input).is_ok());
        let len = i32::try_from(input.len()).unwrap_or(0);
        let ptr = alloc(len);
        assert_ne!(ptr, 0);
        INPUT.with_borrow_mut(|b| b.copy_from_slice(&input));
        let packed = handle(ptr, len, echo);
        assert_eq!(packed as u64 & 0xffff_ffff, output().len() as u64);
        assert_eq!(
            abi::decode_output(&output(), 0),
            Ok(Ok(vec![msg.with_qos(1)]))
        );
        // The buffer is reused: same address for a smaller input.
        assert_eq!(alloc(3), ptr);
    }

    #[test]
    fn foreign_pointers_and_bad_lengths_are_errors_not_reads() {
        let ptr = alloc(4);
        for (p, l) in [(ptr.wrapping_add(1), 4), (ptr, 5), (ptr, -1)] {
            handle(p, l, echo);
            assert!(matches!(
                abi::decode_output(&output(), 0),
                Ok(Err(e)) if e.starts_with("bad input")
            ));
        }
        assert_eq!(alloc(-1), 0);
        assert_ne!(alloc(0), 0);
    }

    #[test]
    fn undecodable_input_is_an_error_output() {
        let ptr = alloc(4);
        handle(ptr, 4, echo);
        assert_eq!(
            abi::decode_output(&output(), 0),
            Ok(Err("bad input: truncated: payload at offset 4".to_owned()))
        );
    }

    #[test]
    fn returned_messages_are_reused_unless_large() {
        let mut out = Vec::new();
        let mut input = Vec::new();
        assert!(abi::encode_input(&Message::new("a", "b"), &mut input).is_ok());
        run(&input, echo, &mut out);
        assert!(SPARE.with_borrow(Option::is_some));
        let big = |_: Message| Ok(vec![Message::new("t", vec![0; MAX_SPARE_BYTES + 1])]);
        run(&input, big, &mut out);
        assert!(SPARE.with_borrow(Option::is_none));
        // A decoding error keeps the spare.
        run(&input, echo, &mut out);
        run(&[1], echo, &mut out);
        assert!(SPARE.with_borrow(Option::is_some));
    }

    #[test]
    fn init_errors_are_logged() {
        assert_eq!(init(|| Ok(())), 0);
        assert_eq!(init(|| Err("no config".into())), 1);
        assert_eq!(
            crate::mock::take_logs(),
            [(log::Level::Error, "init failed: no config".to_owned())]
        );
    }
}
