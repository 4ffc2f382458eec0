//! Modbus TCP and RTU, a [`Protocol`](crate::Protocol) over `tokio-modbus`
//! (MIT OR Apache-2.0): the point table is checked and planned into
//! coalesced reads once ([`plan`]), registers are decoded by type and
//! byte/word order ([`codec`]), and the [`client`] runs the requests, each
//! bounded by the driver's timeout, over TCP or a serial line
//! ([`crate::serial`]).
//!
//! Function codes: reads 1 (coils), 2 (discrete inputs), 3 (holding
//! registers), 4 (input registers); writes 5 (one coil) and 6 (a one-register
//! value), 16 (a value of several registers), and 15/16 in place of 5/6 for
//! devices that answer those with "illegal function".
//!
//! Errors: an exception answer is a per-point error named as the
//! specification names it (`illegal data address`) and the device still
//! counts as answering; a timeout, a broken or garbled frame or a closed
//! connection fails the device's whole read (the runner marks it bad), and
//! the connection is made again before the next request, so a late answer
//! can never be taken for the next one's.
//!
//! With the `sim` feature, [`sim`] is an in-process Modbus TCP server for
//! tests and `verge bench drivers`.

pub mod client;
pub mod codec;
pub mod plan;
#[cfg(feature = "sim")]
pub mod sim;

#[cfg(test)]
mod tests;

pub use client::{Modbus, build};
