//! MQTT 3.1.1 and 5.0 packet types and codec: bytes in, packets out, no I/O.
//!
//! One set of types serves both protocol versions. The decoder is strict
//! (reserved bits, property placement, duplicate properties, UTF-8 rules) and
//! never panics; payloads are zero-copy slices of the read buffer.

mod decode;
mod encode;
pub mod packet;
mod props;
pub mod topic;

pub use decode::{DecodeError, decode};
pub use encode::{EncodeError, encode, encoded_len, to_bytes};
pub use packet::*;

#[cfg(test)]
mod tests;
