//! The `[coap]` section: where the gateway listens and its bounds, with
//! documented defaults in one place ([`CoapConfig::default`]).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use verge_duration::HumanDuration;

use crate::error::CoapError;

/// The CoAP gateway's configuration. Anonymous access, credentials and ACL
/// come from the broker's authenticator, so CoAP devices have exactly the
/// rights they have over MQTT.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CoapConfig {
    /// Whether the gateway runs (like the MQTT TCP listener: on by default,
    /// on loopback).
    pub enabled: bool,
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// Largest request or notification body in bytes, whole or reassembled
    /// from Block1 blocks; larger uploads get 4.13 with Size1.
    pub max_payload: usize,
    /// Largest block the gateway sends (rounded down to a power of two,
    /// 16–1024); bodies above it go out block-wise (Block2).
    pub block_size: usize,
    /// Most observers (registrations) at once; more are answered without
    /// the Observe option and counted.
    pub max_observers: usize,
    /// Most Block1 uploads and Block2 bodies held for continuation at once;
    /// the oldest is dropped and counted when full.
    pub max_block_transfers: usize,
    /// Most remembered message ids (de-duplication); the oldest is dropped
    /// and counted when full.
    pub max_dedup_entries: usize,
    /// Most requests being handled at once (authentication, publishing);
    /// beyond it a request is answered 5.03 and counted.
    pub max_concurrent_requests: usize,
    /// How long a message id is remembered (RFC 7252 EXCHANGE_LIFETIME) and
    /// an unfinished block-wise transfer is kept.
    pub exchange_lifetime: HumanDuration,
    /// First retransmission timeout of a Confirmable notification
    /// (ACK_TIMEOUT).
    pub ack_timeout: HumanDuration,
    /// ACK_RANDOM_FACTOR: the first timeout is chosen between `ack_timeout`
    /// and `ack_timeout × ack_random_factor`.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT: retransmissions of a Confirmable notification before
    /// the observer is dropped.
    pub max_retransmit: u32,
    /// Notifications to each observer: "request" (same type as the
    /// registering GET), "con" or "non". Non-confirmable observers get every
    /// 16th notification as Confirmable, so a vanished client is noticed.
    pub notifications: NotifyType,
    /// How long a successful password check is remembered, so a device that
    /// sends credentials with every request does not cost an argon2 hash
    /// each time; "0s" checks every request.
    pub auth_cache_ttl: HumanDuration,
    /// Most remembered successful password checks.
    pub auth_cache_entries: usize,
    /// Queue of each observer's broker subscription, in messages; a full
    /// queue drops and counts.
    pub observer_queue: usize,
}

/// Which message type notifications use.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NotifyType {
    /// The type of the registering request.
    Request,
    /// Always Confirmable.
    Con,
    /// Non-confirmable (every 16th Confirmable).
    Non,
}

impl Default for CoapConfig {
    fn default() -> Self {
        CoapConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 5683)),
            max_payload: 64 * 1024,
            block_size: 1024,
            max_observers: 10_000,
            max_block_transfers: 256,
            max_dedup_entries: 16_384,
            max_concurrent_requests: 256,
            exchange_lifetime: HumanDuration(Duration::from_secs(247)),
            ack_timeout: HumanDuration(Duration::from_secs(2)),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            notifications: NotifyType::Request,
            auth_cache_ttl: HumanDuration(Duration::from_secs(300)),
            auth_cache_entries: 4096,
            observer_queue: 64,
        }
    }
}

impl CoapConfig {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), CoapError> {
        let bad = |key: &str, why: &str| Err(CoapError::Config(format!("coap.{key}: {why}")));
        if self.max_payload == 0 {
            return bad("max_payload", "must be above 0");
        }
        if !(16..=1024).contains(&self.block_size) {
            return bad("block_size", "must be between 16 and 1024");
        }
        if !(1.0..=10.0).contains(&self.ack_random_factor) {
            return bad("ack_random_factor", "must be between 1.0 and 10.0");
        }
        if self.ack_timeout.get().is_zero() {
            return bad("ack_timeout", "must be above 0s");
        }
        if self.max_retransmit > 20 {
            return bad("max_retransmit", "must be at most 20");
        }
        for (key, v) in [
            ("max_block_transfers", self.max_block_transfers),
            ("max_dedup_entries", self.max_dedup_entries),
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("observer_queue", self.observer_queue),
        ] {
            if v == 0 {
                return bad(key, "must be above 0");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_unknown_keys_are_refused() {
        let c: CoapConfig = toml::from_str("").expect("empty section");
        assert_eq!(c, CoapConfig::default());
        assert!(c.validate().is_ok());
        let c: CoapConfig =
            toml::from_str("enabled = true\nbind = \"127.0.0.1:0\"\nack_timeout = \"500ms\"")
                .expect("parses");
        assert_eq!(c.ack_timeout.get(), Duration::from_millis(500));
        let e = toml::from_str::<CoapConfig>("bnd = \"x\"").expect_err("unknown key");
        assert!(e.to_string().contains("bnd"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let c = CoapConfig {
            block_size: 4096,
            ..CoapConfig::default()
        };
        let e = c.validate().expect_err("too large");
        assert!(e.to_string().contains("coap.block_size"), "{e}");
    }
}
