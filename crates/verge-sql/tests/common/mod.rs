//! Helpers shared by the integration tests (each uses some of them).
#![allow(dead_code)]

use verge_sql::Event;

/// A message on `devices/d1/telemetry` at `t` ms.
pub fn ev(payload: &str, t: i64) -> Event<'_> {
    Event {
        topic: "devices/d1/telemetry",
        payload: payload.as_bytes(),
        client_id: "c",
        qos: 0,
        timestamp_ms: t,
        user_properties: &[],
    }
}

/// A small deterministic generator (xorshift64*), so the samples are the
/// same on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
