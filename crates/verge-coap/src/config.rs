//! The `[coap]` section: where the gateway listens (plain UDP and DTLS)
//! and its bounds, with documented defaults in one place
//! ([`CoapConfig::default`], [`DtlsConfig::default`]).

use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Whether plain CoAP (no encryption, credentials in the query string)
    /// is served on `bind`. Off by default; the demo (`verge up`) turns it
    /// on. The DTLS listener is `[coap.dtls]`.
    pub enabled: bool,
    /// UDP address of plain CoAP.
    pub bind: SocketAddr,
    /// Largest request or notification body in bytes, whole or reassembled
    /// from Block1 blocks; larger uploads get 4.13 with Size1, larger
    /// messages are not sent to observers (counted in
    /// `notifications_too_large`; the observation goes on).
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
    /// `[coap.dtls]`: CoAP over DTLS 1.2 with pre-shared keys (RFC 7252
    /// §9.1).
    pub dtls: DtlsConfig,
}

/// The `[coap.dtls]` section: the `coaps://` listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DtlsConfig {
    /// Whether CoAP over DTLS is served on `bind`; needs at least one
    /// `[[coap.dtls.psk]]`.
    pub enabled: bool,
    /// UDP address of CoAP over DTLS (5684 is the `coaps` port).
    pub bind: SocketAddr,
    /// Longest a handshake may take from the first ClientHello; an
    /// unfinished one is dropped and counted as failed.
    pub handshake_timeout: HumanDuration,
    /// A session with no datagram either way for this long is forgotten
    /// unless its device observes something (the device then makes a new
    /// handshake).
    pub idle_timeout: HumanDuration,
    /// Most sessions at once (handshaking or established); a ClientHello
    /// from a new address beyond it is dropped and counted.
    pub max_sessions: usize,
    /// Most handshakes in progress at once (part of `max_sessions`).
    pub max_handshakes: usize,
    /// Largest datagram the gateway sends over DTLS (path MTU).
    pub mtu: u32,
    /// The devices' pre-shared keys; the PSK identity is the device's
    /// username in the broker's registry, whose ACL applies.
    pub psk: Vec<PskEntry>,
    /// The node's certificate chain (PEM) for devices with certificates;
    /// needs `key` and `client_ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) a device's certificate must chain to; its
    /// common name is the device's username in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// One `[[coap.dtls.psk]]`: a PSK identity and its key, given in exactly
/// one of three ways.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PskEntry {
    /// PSK identity the device sends (its username).
    pub identity: String,
    /// The key as text (its UTF-8 bytes are the key; what `coap-client -k`
    /// takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key as hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hex: Option<String>,
    /// A file holding the key as text, like `key`; one trailing newline is
    /// not part of it (read at start; keeps the key out of the config
    /// file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl std::fmt::Debug for PskEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a key.
        f.debug_struct("PskEntry")
            .field("identity", &self.identity)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// Longest PSK accepted (OpenSSL's limit, PSK_MAX_PSK_LEN).
pub const MAX_PSK_LEN: usize = 256;
/// Longest PSK identity (RFC 4279 allows 2^16 - 1; OpenSSL takes 128).
pub const MAX_IDENTITY_LEN: usize = 128;

impl Default for DtlsConfig {
    fn default() -> Self {
        DtlsConfig {
            enabled: false,
            bind: SocketAddr::from(([127, 0, 0, 1], 5684)),
            handshake_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(300)),
            max_sessions: 4096,
            max_handshakes: 256,
            mtu: 1280,
            psk: Vec::new(),
            cert: None,
            key: None,
            client_ca: None,
        }
    }
}

impl PskEntry {
    /// The key's bytes (reads `key_file`); the error names the key.
    pub fn resolve(&self, i: usize) -> Result<Vec<u8>, CoapError> {
        let bad =
            |key: &str, why: String| CoapError::Config(format!("coap.dtls.psk[{i}].{key}: {why}"));
        let bytes = match (&self.key, &self.key_hex, &self.key_file) {
            (Some(k), None, None) => k.as_bytes().to_vec(),
            (None, Some(h), None) => {
                hex::decode(h.trim()).map_err(|e| bad("key_hex", format!("not hex: {e}")))?
            }
            (None, None, Some(path)) => {
                let mut b = std::fs::read(path)
                    .map_err(|e| bad("key_file", format!("{}: {e}", path.display())))?;
                if b.ends_with(b"\n") {
                    b.pop();
                    if b.ends_with(b"\r") {
                        b.pop();
                    }
                }
                b
            }
            (None, None, None) => {
                return Err(bad(
                    "key",
                    "missing: give one of key, key_hex or key_file".into(),
                ));
            }
            _ => {
                return Err(bad(
                    "key",
                    "give only one of key, key_hex or key_file".into(),
                ));
            }
        };
        if bytes.is_empty() || bytes.len() > MAX_PSK_LEN {
            let key = match (&self.key_hex, &self.key_file) {
                (Some(_), _) => "key_hex",
                (_, Some(_)) => "key_file",
                _ => "key",
            };
            return Err(bad(
                key,
                format!(
                    "the key must be 1 to {MAX_PSK_LEN} bytes, not {}",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }
}

impl DtlsConfig {
    /// Check the values; the error names the key. Does not read key files
    /// (the gateway does when it starts).
    pub fn validate(&self) -> Result<(), CoapError> {
        let bad = |key: &str, why: &str| Err(CoapError::Config(format!("coap.dtls.{key}: {why}")));
        if !self.enabled {
            return Ok(());
        }
        if !cfg!(feature = "dtls") {
            return bad(
                "enabled",
                "this build has no DTLS (the `dtls` cargo feature of verge-coap is off)",
            );
        }
        let files = [
            ("cert", self.cert.is_some()),
            ("key", self.key.is_some()),
            ("client_ca", self.client_ca.is_some()),
        ];
        let certs = files.iter().any(|(_, given)| *given);
        if certs && let Some((missing, _)) = files.iter().find(|(_, given)| !*given) {
            return bad(
                missing,
                "missing: certificates need all of coap.dtls.cert, key and client_ca",
            );
        }
        if self.psk.is_empty() && !certs {
            return bad(
                "psk",
                "DTLS is enabled but has no [[coap.dtls.psk]] and no cert/key/client_ca (add keys, or set coap.dtls.enabled = false)",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.psk.iter().enumerate() {
            if p.identity.is_empty() || p.identity.len() > MAX_IDENTITY_LEN {
                return Err(CoapError::Config(format!(
                    "coap.dtls.psk[{i}].identity: must be 1 to {MAX_IDENTITY_LEN} bytes"
                )));
            }
            if !seen.insert(p.identity.as_str()) {
                return Err(CoapError::Config(format!(
                    "coap.dtls.psk[{i}].identity: `{}` appears twice",
                    p.identity
                )));
            }
            let given = [p.key.is_some(), p.key_hex.is_some(), p.key_file.is_some()];
            match given.iter().filter(|g| **g).count() {
                1 => {}
                0 => {
                    return Err(CoapError::Config(format!(
                        "coap.dtls.psk[{i}].key: missing: give one of key, key_hex or key_file"
                    )));
                }
                _ => {
                    return Err(CoapError::Config(format!(
                        "coap.dtls.psk[{i}].key: give only one of key, key_hex or key_file"
                    )));
                }
            }
            if p.key_hex.is_some() {
                p.resolve(i)?;
            }
        }
        if self.handshake_timeout.get().is_zero() {
            return bad("handshake_timeout", "must be above 0s");
        }
        if self.idle_timeout.get().is_zero() {
            return bad("idle_timeout", "must be above 0s");
        }
        if self.max_sessions == 0 {
            return bad("max_sessions", "must be above 0");
        }
        if self.max_handshakes == 0 || self.max_handshakes > self.max_sessions {
            return bad("max_handshakes", "must be between 1 and max_sessions");
        }
        if !(256..=65_535).contains(&self.mtu) {
            return bad("mtu", "must be between 256 and 65535");
        }
        Ok(())
    }
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
            enabled: false,
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
            dtls: DtlsConfig::default(),
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
        self.dtls.validate()
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
    fn dtls_psk_entries_are_checked_and_errors_name_the_key() {
        let parse = |t: &str| toml::from_str::<CoapConfig>(t).expect("parses");
        let on = "[dtls]\nenabled = true\n";
        for (text, key) in [
            ("", "coap.dtls.psk"),
            ("[[dtls.psk]]\nidentity = \"a\"\n", "coap.dtls.psk[0].key"),
            (
                "[[dtls.psk]]\nidentity = \"a\"\nkey = \"k\"\nkey_hex = \"00\"\n",
                "coap.dtls.psk[0].key",
            ),
            (
                "[[dtls.psk]]\nidentity = \"a\"\nkey_hex = \"zz\"\n",
                "coap.dtls.psk[0].key_hex",
            ),
            (
                "[[dtls.psk]]\nidentity = \"\"\nkey = \"k\"\n",
                "coap.dtls.psk[0].identity",
            ),
            (
                "[[dtls.psk]]\nidentity = \"a\"\nkey = \"k\"\n[[dtls.psk]]\nidentity = \"a\"\nkey = \"j\"\n",
                "coap.dtls.psk[1].identity",
            ),
        ] {
            let e = parse(&format!("{on}{text}")).validate().expect_err(text);
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
        let c = parse(&format!(
            "{on}[[dtls.psk]]\nidentity = \"a\"\nkey_hex = \"00ff\"\n[[dtls.psk]]\nidentity = \"b\"\nkey_file = \"/nonexistent/key\"\n"
        ));
        assert!(c.validate().is_ok() || !cfg!(feature = "dtls"));
        assert_eq!(c.dtls.psk[0].resolve(0).expect("hex"), vec![0, 0xff]);
        let e = c.dtls.psk[1].resolve(1).expect_err("no such file");
        assert!(e.to_string().contains("coap.dtls.psk[1].key_file"), "{e}");
        assert!(
            !format!("{:?}", c.dtls.psk[0]).contains("00ff"),
            "keys are not printed"
        );
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
