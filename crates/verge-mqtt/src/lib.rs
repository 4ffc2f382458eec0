//! MQTT 3.1.1 and 5.0 packet types and codec: bytes in, packets out, no I/O.
//!
//! One set of types serves both protocol versions. The decoder is strict
//! (reserved bits, property placement, duplicate properties, UTF-8 rules) and
//! never panics; payloads are zero-copy slices of the read buffer.

mod decode;
mod encode;
mod error;
pub mod packet;
mod props;
pub mod topic;
mod wire;

pub use decode::decode;
pub use encode::{encode, encoded_len, to_bytes};
pub use error::{DecodeError, EncodeError};
pub use packet::*;

#[cfg(test)]
mod tests;
