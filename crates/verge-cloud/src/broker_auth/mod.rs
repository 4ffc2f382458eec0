//! Node credentials on an external broker: who may connect (a node with
//! its id and secret, the cloud replicas with their own user) and what each
//! may do (a node only its own `nodes/{id}/up/…` and `nodes/{id}/down/…`
//! topics). Brokers that call out over HTTP (EMQX's HTTP authenticator and
//! authorizer) ask `/api/broker/authn` and `/api/broker/authz`
//! (`crate::api::broker`); for Mosquitto, whose Debian package has no
//! HTTP-auth plugin, [`dynsec`] writes the same rules into its
//! dynamic-security plugin.
//!
//! [`allowed`] is the one ACL decision, pure and table-tested; the
//! dynamic-security roles are written to match it.

pub mod dynsec;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use verge_mqtt::topic::{parse_shared, valid_topic_filter, valid_topic_name};
use verge_protocol::device::DeviceChannel;
use verge_protocol::topics;

use crate::db::sha256_hex;

/// Who asks: a node (its id, the MQTT username) or the cloud's own user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A node, by id.
    Node(&'a str),
    /// The cloud replicas' broker user (`mqtt.external.username`).
    Cloud,
}

/// What a client asks to do with a topic (publish) or a filter (subscribe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to a topic name.
    Publish,
    /// Subscribe to a topic filter.
    Subscribe,
}

/// A node id as it may appear in a topic level: a node name
/// (`[A-Za-z0-9_-]{1,64}`, what `POST /api/nodes` accepts), so never a
/// wildcard, a `/` or a `$`.
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `caller` may `action` on `topic`:
/// - a node `n` publishes `nodes/n/up/{rest}` (no wildcards) and
///   subscribes filters under `nodes/n/down/` (wildcards only after it:
///   `nodes/n/down/#` yes, `nodes/+/down/#`, `nodes/n/#` and `#` no);
/// - the cloud subscribes its shared subscription
///   `$share/{group}/nodes/+/up/#` (also asked as `nodes/+/up/#`: a
///   broker may check a shared subscription without its prefix), the
///   store replies
///   `nodes/+/up/$verge/store-reply/+` (or `/#`), and publishes
///   `nodes/{n}/down/{rest}` for any node `n`;
/// - nothing else.
pub fn allowed(caller: Caller<'_>, action: Action, topic: &str) -> bool {
    match (caller, action) {
        (Caller::Node(n), Action::Publish) => {
            is_node_id(n)
                && valid_topic_name(topic)
                && topics::parse_up(topic).is_some_and(|(node, _)| node == n)
        }
        (Caller::Node(n), Action::Subscribe) => {
            is_node_id(n)
                && valid_topic_filter(topic)
                && topic
                    .strip_prefix(&topics::down_prefix(n))
                    .is_some_and(|rest| !rest.is_empty())
        }
        (Caller::Cloud, Action::Publish) => {
            valid_topic_name(topic)
                && topics::parse_down(topic).is_some_and(|(node, _)| is_node_id(node))
        }
        (Caller::Cloud, Action::Subscribe) => {
            let reply = DeviceChannel::StoreReply;
            let shared = parse_shared(topic).is_some_and(|(group, filter)| {
                !group.is_empty()
                    && !group.contains(['+', '#'])
                    && filter == topics::up_filter_all()
            });
            shared
                || topic == topics::up_filter_all()
                || topic == topics::up("+", &reply.filter())
                || topic == topics::up("+", &reply.topic("#"))
        }
    }
}

/// At start, with `provision = "mosquitto-dynsec"`: make sure the cloud's
/// own user is on the broker, remove the broker clients of nodes that no
/// longer exist, and name the joined nodes the broker does not know (the
/// cloud keeps only a hash of their secret, so they must rejoin). Retries
/// every 5 s until it got through once or the cloud stops.
pub async fn reconcile(cloud: crate::Cloud) {
    let mut stop = cloud.inner().stop.subscribe();
    loop {
        match reconcile_once(&cloud).await {
            Ok(()) => return,
            Err(e) => tracing::warn!("broker credentials not reconciled yet: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn reconcile_once(cloud: &crate::Cloud) -> Result<(), String> {
    let Some(dynsec) = &cloud.inner().dynsec else {
        return Ok(());
    };
    let ext = &cloud.inner().cfg.mqtt.external;
    if let Some(password) = &cloud.inner().broker_cloud_password {
        dynsec
            .ensure_cloud_user(&ext.username, password)
            .await
            .map_err(|e| e.to_string())?;
    }
    // The broker first: a node joined meanwhile is then only named
    // missing, never removed.
    let on_broker = dynsec.node_ids().await.map_err(|e| e.to_string())?;
    let clients: std::collections::HashSet<String> = dynsec
        .client_names()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, CASE WHEN secret_phc IS NULL THEN 0 ELSE 1 END FROM nodes ORDER BY id",
    )
    .fetch_all(&cloud.inner().pool)
    .await
    .map_err(|e| e.to_string())?;
    let known: std::collections::HashSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let mut removed = 0;
    for id in on_broker.iter().filter(|id| !known.contains(id.as_str())) {
        dynsec.remove_node(id).await.map_err(|e| e.to_string())?;
        tracing::info!(node = %id, "removed the broker client of a deleted node");
        removed += 1;
    }
    let missing: Vec<&str> = rows
        .iter()
        .filter(|(id, joined)| *joined == 1 && !clients.contains(id))
        .map(|r| r.0.as_str())
        .collect();
    for id in &missing {
        tracing::warn!(
            node = %id,
            "the node has no credentials on the broker (the cloud keeps only a hash of its secret): \
             make it rejoin with a new join token (`POST /api/nodes/{id}/join-token`, then \
             `verge node --join …`)"
        );
    }
    tracing::info!(
        removed,
        missing = missing.len(),
        "broker credentials reconciled (mosquitto dynamic security)"
    );
    Ok(())
}

/// How long a verified node secret is trusted without checking its argon2
/// hash again.
const CACHE_TTL: Duration = Duration::from_secs(60);

/// Most cached verifications; past it the cache is emptied (and counted).
const CACHE_MAX: usize = 50_000;

/// Recently verified node secrets: argon2 is deliberately slow, and a
/// broker asks on every connect (a fleet reconnecting after a broker
/// restart asks thousands of times at once). Keyed by SHA-256 of the node
/// id and the secret (the secret itself is never kept); an entry holds the
/// PHC string it was verified against, so a new secret (a rejoin) or a
/// deleted node is refused at once although its entry lives on.
#[derive(Default)]
pub struct SecretCache {
    entries: Mutex<HashMap<String, (String, Instant)>>,
    /// Times the cache was emptied because it was full.
    pub flushed: AtomicU64,
}

impl SecretCache {
    fn key(node: &str, secret: &str) -> String {
        sha256_hex(format!("{node}\0{secret}").as_bytes())
    }

    /// Whether `secret` of `node` was verified against `phc` within the TTL.
    pub fn hit(&self, node: &str, secret: &str, phc: &str) -> bool {
        let key = Self::key(node, secret);
        let Ok(entries) = self.entries.lock() else {
            return false;
        };
        entries
            .get(&key)
            .is_some_and(|(p, at)| p == phc && at.elapsed() < CACHE_TTL)
    }

    /// Remember that `secret` of `node` matched `phc`.
    pub fn remember(&self, node: &str, secret: &str, phc: &str) {
        let key = Self::key(node, secret);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= CACHE_MAX {
            entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if entries.len() >= CACHE_MAX {
                entries.clear();
                self.flushed.fetch_add(1, Ordering::Relaxed);
            }
        }
        entries.insert(key, (phc.to_owned(), Instant::now()));
    }
}

/// The MQTT client id node `id` must connect with on an external broker:
/// its bridge's default (`verge-node-{id}`). Tied to the username so
/// that no node takes over another node's or a replica's session.
pub fn node_client_id(id: &str) -> String {
    format!("verge-node-{id}")
}

/// Prefix of every client id the cloud replicas use (their consumer,
/// downlink and adoption connections).
pub const CLOUD_CLIENT_ID_PREFIX: &str = "verge-cloud-";

/// An argon2 PHC string no secret is known for: an unknown node id is
/// checked against it, so the answer takes as long as for a known one.
/// Made once (slow: call off the async threads).
pub fn dummy_phc() -> &'static str {
    static PHC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PHC.get_or_init(|| {
        let throwaway = crate::db::random_secret();
        verge_broker::auth::hash_password(&throwaway).unwrap_or_default()
    })
}

/// Whether `secret` matches the argon2 PHC string `phc` (slow: call off
/// the async threads).
pub fn verify_secret(secret: &str, phc: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok()
    })
}

/// Compare two byte strings in time independent of where they differ.
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::{Publish, Subscribe};

    /// (caller, action, topic, allowed)
    const TABLE: &[(Caller<'static>, Action, &str, bool)] = &[
        // a node publishes its own upstream topics only
        (Caller::Node("n1"), Publish, "nodes/n1/up/x", true),
        (
            Caller::Node("n1"),
            Publish,
            "nodes/n1/up/devices/d1/telemetry",
            true,
        ),
        (
            Caller::Node("n1"),
            Publish,
            "nodes/n1/up/$verge/store-reply/d1",
            true,
        ),
        (Caller::Node("n1"), Publish, "nodes/n1/up/", false),
        (Caller::Node("n1"), Publish, "nodes/n1/up", false),
        (Caller::Node("n1"), Publish, "nodes/n2/up/x", false),
        (Caller::Node("n1"), Publish, "nodes/n1/down/x", false),
        (Caller::Node("n1"), Publish, "nodes/n10/up/x", false),
        (Caller::Node("n1"), Publish, "nodes/n1/up/+", false),
        (Caller::Node("n1"), Publish, "nodes/n1/up/#", false),
        (Caller::Node("n1"), Publish, "x/nodes/n1/up/x", false),
        (Caller::Node("n1"), Publish, "$SYS/x", false),
        // a node subscribes inside its own downstream subtree only
        (Caller::Node("n1"), Subscribe, "nodes/n1/down/#", true),
        (Caller::Node("n1"), Subscribe, "nodes/n1/down/x", true),
        (Caller::Node("n1"), Subscribe, "nodes/n1/down/+/y", true),
        (
            Caller::Node("n1"),
            Subscribe,
            "nodes/n1/down/devices/+/commands/#",
            true,
        ),
        (Caller::Node("n1"), Subscribe, "nodes/+/down/#", false),
        (Caller::Node("n1"), Subscribe, "nodes/n1/#", false),
        (Caller::Node("n1"), Subscribe, "nodes/n1/+/#", false),
        (Caller::Node("n1"), Subscribe, "nodes/#", false),
        (Caller::Node("n1"), Subscribe, "#", false),
        (Caller::Node("n1"), Subscribe, "+/n1/down/#", false),
        (Caller::Node("n1"), Subscribe, "nodes/n1/down", false),
        (Caller::Node("n1"), Subscribe, "nodes/n1/down/", false),
        (Caller::Node("n1"), Subscribe, "nodes/n1/down/a#", false),
        (Caller::Node("n1"), Subscribe, "nodes/n1/down/#/x", false),
        (Caller::Node("n1"), Subscribe, "nodes/n2/down/#", false),
        (Caller::Node("n1"), Subscribe, "nodes/n1/up/#", false),
        (
            Caller::Node("n1"),
            Subscribe,
            "$share/g/nodes/n1/down/#",
            false,
        ),
        (
            Caller::Node("n1"),
            Subscribe,
            "$share/g/nodes/+/up/#",
            false,
        ),
        // a username that is not a node id gets nothing
        (Caller::Node("+"), Subscribe, "nodes/+/down/#", false),
        (Caller::Node("#"), Publish, "nodes/#/up/x", false),
        (Caller::Node(""), Subscribe, "nodes//down/#", false),
        (Caller::Node("a/b"), Publish, "nodes/a/b/up/x", false),
        // the cloud: its shared subscription, store replies, downlinks
        (
            Caller::Cloud,
            Subscribe,
            "$share/verge-cloud/nodes/+/up/#",
            true,
        ),
        (Caller::Cloud, Subscribe, "$share/other/nodes/+/up/#", true),
        (
            Caller::Cloud,
            Subscribe,
            "nodes/+/up/$verge/store-reply/+",
            true,
        ),
        (
            Caller::Cloud,
            Subscribe,
            "nodes/+/up/$verge/store-reply/#",
            true,
        ),
        (Caller::Cloud, Subscribe, "$share/+/nodes/+/up/#", false),
        (Caller::Cloud, Subscribe, "$share//nodes/+/up/#", false),
        (Caller::Cloud, Subscribe, "$share/g/#", false),
        (Caller::Cloud, Subscribe, "#", false),
        (Caller::Cloud, Subscribe, "nodes/+/down/#", false),
        (Caller::Cloud, Subscribe, "nodes/+/up/#", true),
        (Caller::Cloud, Subscribe, "nodes/n1/up/#", false),
        (
            Caller::Cloud,
            Publish,
            "nodes/n1/down/devices/d1/commands/reboot",
            true,
        ),
        (
            Caller::Cloud,
            Publish,
            "nodes/n1/down/$verge/store-query/d1",
            true,
        ),
        (Caller::Cloud, Publish, "nodes/+/down/x", false),
        (Caller::Cloud, Publish, "nodes/n1/down/", false),
        (Caller::Cloud, Publish, "nodes/n1/up/x", false),
        (Caller::Cloud, Publish, "other/topic", false),
    ];

    #[test]
    fn acl_table() {
        for (caller, action, topic, want) in TABLE {
            assert_eq!(
                allowed(*caller, *action, topic),
                *want,
                "{caller:?} {action:?} `{topic}`"
            );
        }
    }

    #[test]
    fn node_ids_are_single_literal_levels() {
        for ok in ["n1", "a-b_C9", &"x".repeat(64)] {
            assert!(is_node_id(ok), "{ok}");
        }
        for bad in ["", "+", "#", "a/b", "$SYS", "a b", &"x".repeat(65)] {
            assert!(!is_node_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_cache_holds_a_secret_for_the_hash_it_was_checked_against() {
        let cache = SecretCache::default();
        assert!(!cache.hit("n1", "s", "phc1"));
        cache.remember("n1", "s", "phc1");
        assert!(cache.hit("n1", "s", "phc1"));
        // a rejoin changed the hash: the old entry no longer counts
        assert!(!cache.hit("n1", "s", "phc2"));
        assert!(!cache.hit("n1", "other", "phc1"));
        assert!(!cache.hit("n2", "s", "phc1"));
    }

    #[test]
    fn secrets_verify_against_their_hash_only() {
        let phc = verge_broker::auth::hash_password("right").expect("hash");
        assert!(verify_secret("right", &phc));
        assert!(!verify_secret("wrong", &phc));
        assert!(!verify_secret("right", "not a phc string"));
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
    }
}
