//! DL/T 645-2007, the Chinese electricity meter protocol, written by
//! Verge (no crate exists): a pure frame [`codec`], the data identifiers it
//! knows ([`ids`]), the master ([`client`], a [`Protocol`](crate::Protocol))
//! and a meter simulator ([`sim`]) for tests and benches.
//!
//! Points are read-only here: writes (control 14h) need the meter's
//! password and operator code and are out of scope.

pub mod client;
pub mod codec;
pub mod ids;
pub mod sim;

#[cfg(test)]
mod codec_tests;

pub use client::{Dlt645, build};
