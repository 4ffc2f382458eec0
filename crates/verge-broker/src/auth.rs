//! Device authentication and per-device topic ACL.
//!
//! Devices come from a registry (a TOML file for now; the cloud feeds it
//! later): a username, an argon2 password hash (PHC string), an optional
//! client id restriction and ACL rules. ACL patterns may use `%c` (client id)
//! and `%u` (username); the first matching rule decides, else the default.
//! The registry can be replaced while the broker runs
//! ([`Authenticator::replace`], used by the cloud agent). ACL checks of
//! connected devices follow the registry in use: a device removed from it
//! may no longer publish or subscribe, even on a connection made before.
//!
//! Beside the registry the authenticator holds *local users*: credentials
//! the node itself issues (to its user components), added and removed one
//! by one ([`Authenticator::set_local_user`],
//! [`Authenticator::remove_local_user`]) and kept across
//! [`Authenticator::replace`], which swaps the registry only. A local user
//! wins over a registry device of the same username. *Local rules*
//! ([`Authenticator::set_local_rules`]) are global rules the node adds,
//! also kept across `replace`, checked after a client's own rules and
//! before the registry's global rules.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

use crate::config::{AclPolicy, CLIENT_ID_SEPARATOR, ClientIdBinding};
use crate::error::BrokerError;

/// The device registry file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Registry {
    /// Rules applied to every client after its own rules (also to anonymous
    /// clients).
    pub acl: Vec<AclRule>,
    /// Known devices.
    pub devices: Vec<Device>,
}

/// One device's credentials and rights.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Username the device connects with (or the certificate common name).
    pub username: String,
    /// Argon2 PHC hash of the password; absent = certificate only.
    #[serde(default)]
    pub password_hash: Option<String>,
    /// If set, the only client id this device may use.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The device's own ACL rules, checked before the global ones.
    #[serde(default)]
    pub acl: Vec<AclRule>,
}

/// What an ACL rule applies to.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AclAction {
    /// PUBLISH.
    Publish,
    /// SUBSCRIBE.
    Subscribe,
    /// Both.
    All,
}

/// One ACL rule.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// Allow or deny.
    pub permission: AclPolicy,
    /// Which operation.
    pub action: AclAction,
    /// Topic pattern with MQTT wildcards and `%c` / `%u`.
    pub topic: String,
}

/// Who a connection is, once authenticated.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Client identifier.
    pub client_id: Arc<str>,
    /// Username (or certificate name), if any.
    pub username: Option<Arc<str>>,
    /// Whether it authenticated as a device of the registry (its rules are
    /// looked up by username at each check).
    device: bool,
    /// Whether its registry entry pins the client id (checked when it
    /// authenticated; the client id binding does not apply then).
    pinned: bool,
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No or wrong credentials.
    BadCredentials,
    /// Credentials fine, but not allowed (e.g. wrong client id).
    NotAuthorized,
}

/// Checks credentials and topic rights. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Authenticator {
    inner: Arc<RwLock<Arc<Inner>>>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    by_username: HashMap<String, usize>,
    /// Local users by username (kept across `replace`).
    local: Arc<HashMap<String, Device>>,
    /// Local global rules (kept across `replace`).
    local_rules: Arc<Vec<AclRule>>,
    allow_anonymous: bool,
    default: AclPolicy,
}

impl Inner {
    fn build(
        registry: Registry,
        allow_anonymous: bool,
        default: AclPolicy,
    ) -> Result<Inner, BrokerError> {
        let mut by_username = HashMap::new();
        for (i, d) in registry.devices.iter().enumerate() {
            if let Some(h) = &d.password_hash {
                PasswordHash::new(h).map_err(|e| {
                    BrokerError::Config(format!(
                        "devices[{i}].password_hash: not an argon2 PHC string: {e}"
                    ))
                })?;
            }
            if by_username.insert(d.username.clone(), i).is_some() {
                return Err(BrokerError::Config(format!(
                    "devices[{i}].username: `{}` appears twice",
                    d.username
                )));
            }
        }
        Ok(Inner {
            registry,
            by_username,
            local: Arc::default(),
            local_rules: Arc::default(),
            allow_anonymous,
            default,
        })
    }

    /// The local user or registry device named `username`.
    fn user(&self, username: &str) -> Option<&Device> {
        self.local.get(username).or_else(|| {
            self.by_username
                .get(username)
                .map(|&i| &self.registry.devices[i])
        })
    }

    fn knows(&self, username: &str) -> bool {
        self.local.contains_key(username) || self.by_username.contains_key(username)
    }
}

impl Authenticator {
    /// An authenticator over `registry`.
    pub fn new(
        registry: Registry,
        allow_anonymous: bool,
        default: AclPolicy,
    ) -> Result<Self, BrokerError> {
        let inner = Inner::build(registry, allow_anonymous, default)?;
        Ok(Authenticator {
            inner: Arc::new(RwLock::new(Arc::new(inner))),
        })
    }

    /// Replace the registry (devices and global rules); the anonymous and
    /// default policies stay. An invalid registry changes nothing. New
    /// connections and the next ACL checks of existing ones see it; an
    /// existing connection keeps its own device rules.
    pub fn replace(&self, registry: Registry) -> Result<(), BrokerError> {
        let mut guard = match self.inner.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = Inner::build(registry, guard.allow_anonymous, guard.default)?;
        next.local = guard.local.clone();
        next.local_rules = guard.local_rules.clone();
        *guard = Arc::new(next);
        Ok(())
    }

    /// Add or replace the local user `user.username` (its `password_hash`
    /// an argon2 PHC string, as in the registry). Kept across
    /// [`replace`](Self::replace). Connections made with an earlier secret
    /// stay until closed ([`BrokerHandle::disconnect_user`](crate::BrokerHandle::disconnect_user)).
    pub fn set_local_user(&self, user: Device) -> Result<(), BrokerError> {
        if let Some(h) = &user.password_hash {
            PasswordHash::new(h).map_err(|e| {
                BrokerError::Config(format!(
                    "local user `{}`: password_hash: not an argon2 PHC string: {e}",
                    user.username
                ))
            })?;
        }
        self.modify(|inner| {
            let mut local = (*inner.local).clone();
            local.insert(user.username.clone(), user);
            inner.local = Arc::new(local);
        });
        Ok(())
    }

    /// Remove the local user `username`; true when there was one. Its
    /// connections lose every right at their next ACL check.
    pub fn remove_local_user(&self, username: &str) -> bool {
        let mut removed = false;
        self.modify(|inner| {
            if inner.local.contains_key(username) {
                let mut local = (*inner.local).clone();
                local.remove(username);
                inner.local = Arc::new(local);
                removed = true;
            }
        });
        removed
    }

    /// Set the local global rules (kept across [`replace`](Self::replace)).
    pub fn set_local_rules(&self, rules: Vec<AclRule>) {
        self.modify(|inner| inner.local_rules = Arc::new(rules));
    }

    /// Usernames of the local users.
    pub fn local_users(&self) -> Vec<String> {
        self.current().local.keys().cloned().collect()
    }

    fn modify(&self, f: impl FnOnce(&mut Inner)) {
        let mut guard = match self.inner.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = Inner {
            registry: guard.registry.clone(),
            by_username: guard.by_username.clone(),
            local: guard.local.clone(),
            local_rules: guard.local_rules.clone(),
            allow_anonymous: guard.allow_anonymous,
            default: guard.default,
        };
        f(&mut next);
        *guard = Arc::new(next);
    }

    /// A copy of the registry in use.
    pub fn registry(&self) -> Registry {
        self.current().registry.clone()
    }

    fn current(&self) -> Arc<Inner> {
        match self.inner.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Load a registry file.
    pub fn load(
        path: &Path,
        allow_anonymous: bool,
        default: AclPolicy,
    ) -> Result<Self, BrokerError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            BrokerError::Config(format!("broker.devices_file {}: {e}", path.display()))
        })?;
        let registry: Registry = toml::from_str(&text).map_err(|e| {
            BrokerError::Config(format!("broker.devices_file {}: {e}", path.display()))
        })?;
        Self::new(registry, allow_anonymous, default)
    }

    /// Authenticate a CONNECT. `cert_name` is the verified client certificate's
    /// common name, if the transport had one. Runs argon2: call it off the
    /// async worker threads.
    pub fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
        cert_name: Option<&str>,
    ) -> Result<Identity, AuthFailure> {
        let inner = &*self.current();
        let ident = |user: Option<&str>, device: Option<&Device>| Identity {
            client_id: Arc::from(client_id),
            username: user.map(Arc::from),
            device: device.is_some(),
            pinned: device.is_some_and(|d| d.client_id.is_some()),
        };
        let check_client = |d: &Device| -> Result<(), AuthFailure> {
            match &d.client_id {
                Some(c) if c != client_id => Err(AuthFailure::NotAuthorized),
                _ => Ok(()),
            }
        };
        if let Some(name) = cert_name {
            // A verified certificate is the identity; a known device's rules apply.
            let device = inner.user(name);
            if let Some(d) = device {
                check_client(d)?;
            }
            return Ok(ident(Some(name), device));
        }
        match (username, password) {
            (Some(user), Some(pass)) => {
                let d = inner.user(user).ok_or(AuthFailure::BadCredentials)?;
                let hash = d
                    .password_hash
                    .as_deref()
                    .ok_or(AuthFailure::BadCredentials)?;
                let parsed = PasswordHash::new(hash).map_err(|_| AuthFailure::BadCredentials)?;
                Argon2::default()
                    .verify_password(pass, &parsed)
                    .map_err(|_| AuthFailure::BadCredentials)?;
                check_client(d)?;
                Ok(ident(Some(user), Some(d)))
            }
            // An unverified user name must not borrow that device's rights.
            _ if inner.allow_anonymous => Ok(ident(None, None)),
            _ => Err(AuthFailure::BadCredentials),
        }
    }

    /// May `who` use its client id under `binding`? An authenticated
    /// identity (password or certificate) owns its username and, under
    /// prefix binding, `{username}:…`, except the ids under a longer
    /// registered username (`a:b:x` is device `a:b`'s, not `a`'s). A device
    /// whose registry entry pins a client id was checked against the pin
    /// when it authenticated. An anonymous client may use any id no
    /// registered username owns.
    pub fn client_id_allowed(&self, who: &Identity, binding: ClientIdBinding) -> bool {
        if binding == ClientIdBinding::Off || who.pinned {
            return true;
        }
        let inner = &*self.current();
        let id = &*who.client_id;
        // The registered username owning `id`: the longest one that is the
        // id or a prefix of it ending before a separator.
        let owner = |exact_only: bool| -> Option<&str> {
            if inner.knows(id) {
                return Some(id);
            }
            if exact_only {
                return None;
            }
            id.char_indices()
                .rev()
                .filter(|&(_, c)| c == CLIENT_ID_SEPARATOR)
                .map(|(i, _)| &id[..i])
                .find(|prefix| inner.knows(prefix))
        };
        match who.username.as_deref() {
            None => owner(binding == ClientIdBinding::Exact).is_none(),
            Some(user) if id == user => true,
            Some(user) => {
                binding == ClientIdBinding::Prefix
                    && id
                        .strip_prefix(user)
                        .is_some_and(|rest| rest.starts_with(CLIENT_ID_SEPARATOR))
                    && owner(false).is_none_or(|o| o == user)
            }
        }
    }

    /// May `who` publish to `topic`?
    pub fn may_publish(&self, who: &Identity, topic: &str) -> bool {
        self.check(who, AclAction::Publish, topic)
    }

    /// May `who` subscribe to `filter` (every topic it can match must be
    /// allowed by the deciding rule)?
    pub fn may_subscribe(&self, who: &Identity, filter: &str) -> bool {
        self.check(who, AclAction::Subscribe, filter)
    }

    fn check(&self, who: &Identity, action: AclAction, topic: &str) -> bool {
        let inner = &*self.current();
        let own: &[AclRule] = if who.device {
            match who.username.as_deref().and_then(|u| inner.user(u)) {
                Some(d) => &d.acl,
                // Removed from the registry since it connected: revoked.
                None => return false,
            }
        } else {
            &[]
        };
        let rules = own
            .iter()
            .chain(inner.local_rules.iter())
            .chain(inner.registry.acl.iter());
        for rule in rules {
            if rule.action != action && rule.action != AclAction::All {
                continue;
            }
            let pattern = substitute(&rule.topic, who);
            match rule.permission {
                // An allow rule decides only when it covers all of the filter;
                // one that covers part of it leaves the rest to later rules.
                AclPolicy::Allow if pattern_covers(&pattern, topic) => return true,
                AclPolicy::Allow => {}
                // A deny rule refuses any filter that could receive one of
                // its topics: `#` must not read around a deny of `secret/#`.
                AclPolicy::Deny if pattern_overlaps(&pattern, topic) => return false,
                AclPolicy::Deny => {}
            }
        }
        // What no allow rule covered wholly falls to the default.
        inner.default == AclPolicy::Allow
    }
}

/// Hash a password into an argon2id PHC string for the registry.
pub fn hash_password(password: &str) -> Result<String, BrokerError> {
    let mut salt = [0u8; 16];
    getrandom_fill(&mut salt)?;
    let salt =
        SaltString::encode_b64(&salt).map_err(|e| BrokerError::Config(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| BrokerError::Config(format!("hashing password: {e}")))
}

fn getrandom_fill(buf: &mut [u8]) -> Result<(), BrokerError> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| BrokerError::Config(format!("reading /dev/urandom: {e}")))
}

fn substitute(pattern: &str, who: &Identity) -> String {
    if !pattern.contains('%') {
        return pattern.to_owned();
    }
    // A client id or username holding wildcards must not widen a rule.
    let safe = |s: &str| s.replace(['+', '#', '/'], "_");
    pattern
        .replace("%c", &safe(&who.client_id))
        .replace("%u", &safe(who.username.as_deref().unwrap_or("")))
}

/// Does `pattern` match every topic `filter` can match? For a topic name this
/// is plain MQTT matching.
pub fn pattern_covers(pattern: &str, filter: &str) -> bool {
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(fl)) => {
                if fl == "#" {
                    return false;
                }
            }
            (Some(pl), Some(fl)) => {
                if pl != fl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Can some topic be matched by both `pattern` (an ACL rule) and `filter`
/// (a topic name or subscription filter)?
pub fn pattern_overlaps(pattern: &str, filter: &str) -> bool {
    // A filter that starts with a wildcard never receives `$` topics.
    if filter.starts_with(['+', '#']) && pattern.starts_with('$') {
        return false;
    }
    let mut p = pattern.split('/');
    let mut f = filter.split('/');
    loop {
        match (p.next(), f.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(pl), Some(fl)) => {
                if pl != fl {
                    return false;
                }
            }
            (None, None) => return true,
            // `a/#` also matches `a`.
            (None, Some(rest)) => return rest == "#" && f.next().is_none(),
            (Some(rest), None) => return rest == "#" && p.next().is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let hash = hash_password("s3cret").expect("hash");
        toml::from_str(&format!(
            r##"
            [[acl]]
            permission = "allow"
            action = "subscribe"
            topic = "public/#"

            [[devices]]
            username = "sensor"
            password_hash = "{hash}"
            [[devices.acl]]
            permission = "allow"
            action = "all"
            topic = "devices/%u/#"
            [[devices.acl]]
            permission = "deny"
            action = "all"
            topic = "#"

            [[devices]]
            username = "pinned"
            password_hash = "{hash}"
            client_id = "pinned-1"
            "##
        ))
        .expect("registry parses")
    }

    #[test]
    fn password_checked_against_argon2_hash() {
        let auth = Authenticator::new(registry(), false, AclPolicy::Deny).expect("auth");
        assert!(
            auth.authenticate("c", Some("sensor"), Some(b"s3cret"), None)
                .is_ok()
        );
        assert_eq!(
            auth.authenticate("c", Some("sensor"), Some(b"wrong"), None)
                .err(),
            Some(AuthFailure::BadCredentials)
        );
        assert_eq!(
            auth.authenticate("c", Some("nobody"), Some(b"s3cret"), None)
                .err(),
            Some(AuthFailure::BadCredentials)
        );
        assert_eq!(
            auth.authenticate("c", None, None, None).err(),
            Some(AuthFailure::BadCredentials)
        );
        assert_eq!(
            auth.authenticate("other", Some("pinned"), Some(b"s3cret"), None)
                .err(),
            Some(AuthFailure::NotAuthorized)
        );
        assert!(
            auth.authenticate("pinned-1", Some("pinned"), Some(b"s3cret"), None)
                .is_ok()
        );
    }

    #[test]
    fn replaced_registry_applies_to_new_logins_and_a_bad_one_changes_nothing() {
        let auth = Authenticator::new(Registry::default(), false, AclPolicy::Deny).expect("auth");
        assert!(
            auth.authenticate("c", Some("sensor"), Some(b"s3cret"), None)
                .is_err()
        );
        auth.replace(registry()).expect("replace");
        let who = auth
            .authenticate("c", Some("sensor"), Some(b"s3cret"), None)
            .expect("known after replace");
        assert!(auth.may_publish(&who, "devices/sensor/telemetry"));
        assert!(!auth.may_publish(&who, "devices/other/telemetry"));
        let mut bad = registry();
        bad.devices[1].username = "sensor".into();
        assert!(auth.replace(bad).is_err());
        assert_eq!(auth.registry().devices.len(), 2);
        auth.replace(Registry::default()).expect("empty");
        assert!(
            auth.authenticate("c", Some("sensor"), Some(b"s3cret"), None)
                .is_err()
        );
        // A device removed since it connected may do nothing any more.
        assert!(!auth.may_publish(&who, "devices/sensor/telemetry"));
        assert!(!auth.may_subscribe(&who, "public/news"));
    }

    #[test]
    fn anonymous_only_when_enabled() {
        let auth = Authenticator::new(Registry::default(), true, AclPolicy::Allow).expect("auth");
        assert!(auth.authenticate("c", None, None, None).is_ok());
    }

    #[test]
    fn certificate_name_is_identity() {
        let auth = Authenticator::new(registry(), false, AclPolicy::Deny).expect("auth");
        let id = auth
            .authenticate("c", None, None, Some("sensor"))
            .expect("cert ok");
        assert!(auth.may_publish(&id, "devices/sensor/telemetry"));
        assert!(!auth.may_publish(&id, "devices/other/telemetry"));
    }

    #[test]
    fn acl_substitutes_and_first_rule_wins() {
        let auth = Authenticator::new(registry(), false, AclPolicy::Allow).expect("auth");
        let id = auth
            .authenticate("c", Some("sensor"), Some(b"s3cret"), None)
            .expect("ok");
        assert!(auth.may_publish(&id, "devices/sensor/telemetry"));
        assert!(auth.may_subscribe(&id, "devices/sensor/commands/+"));
        assert!(!auth.may_publish(&id, "devices/other/telemetry"));
        assert!(!auth.may_subscribe(&id, "devices/+/telemetry"));
        assert!(!auth.may_subscribe(&id, "#"));
        // device rules come first, so the device's deny-all shadows public/#
        assert!(!auth.may_subscribe(&id, "public/news"));
        let anon = Identity {
            client_id: Arc::from("x"),
            username: None,
            device: false,
            pinned: false,
        };
        assert!(auth.may_subscribe(&anon, "public/news"));
        assert!(auth.may_publish(&anon, "anything"), "default allow");
    }

    #[test]
    fn wildcards_in_names_do_not_widen_rules() {
        let auth = Authenticator::new(registry(), true, AclPolicy::Deny).expect("auth");
        let mut reg = registry();
        reg.devices[0].username = "#".into();
        let _ = auth;
        let auth = Authenticator::new(reg, true, AclPolicy::Deny).expect("auth");
        let id = auth
            .authenticate("c", Some("#"), Some(b"s3cret"), None)
            .expect("ok");
        assert!(!auth.may_publish(&id, "devices/x/telemetry"));
    }

    #[test]
    fn covers() {
        assert!(pattern_covers("a/#", "a"));
        assert!(pattern_covers("a/#", "a/b/c"));
        assert!(pattern_covers("a/+/c", "a/+/c"));
        assert!(!pattern_covers("a/+/c", "a/#"));
        assert!(!pattern_covers("a/b", "a/+"));
        assert!(!pattern_covers("a/b", "a/b/c"));
    }

    #[test]
    fn overlaps() {
        assert!(pattern_overlaps("secret/#", "#"));
        assert!(pattern_overlaps("secret/#", "+/x"));
        assert!(pattern_overlaps("a/+/c", "a/b/+"));
        assert!(pattern_overlaps("a/#", "a"));
        assert!(pattern_overlaps("a", "a/#"));
        assert!(!pattern_overlaps("a/b", "a/c/#"));
        assert!(!pattern_overlaps("a/b", "a/b/c"));
        assert!(!pattern_overlaps("$SYS/#", "#"));
        assert!(pattern_overlaps("$SYS/#", "$SYS/+"));
    }

    #[test]
    fn regression_wildcard_subscription_reads_around_a_narrow_deny() {
        let reg: Registry = toml::from_str(
            r#"[[acl]]
            permission = "deny"
            action = "subscribe"
            topic = "secret/#""#,
        )
        .expect("parses");
        let auth = Authenticator::new(reg, true, AclPolicy::Allow).expect("auth");
        let anon = auth.authenticate("c", None, None, None).expect("anonymous");
        assert!(!auth.may_subscribe(&anon, "#"));
        assert!(!auth.may_subscribe(&anon, "+/pin"));
        assert!(!auth.may_subscribe(&anon, "secret/pin"));
        assert!(auth.may_subscribe(&anon, "public/#"));
        assert!(auth.may_subscribe(&anon, "$SYS/#"));
    }

    fn bound_registry() -> Registry {
        let hash = hash_password("pw").expect("hash");
        let dev = |name: &str| {
            format!("[[devices]]\nusername = \"{name}\"\npassword_hash = \"{hash}\"\n")
        };
        toml::from_str(&format!(
            "{}{}{}{}[[devices]]\nusername = \"pin\"\npassword_hash = \"{hash}\"\nclient_id = \"anything\"\n",
            dev("dev1"),
            dev("dev10"),
            dev("a"),
            dev("a:b"),
        ))
        .expect("registry parses")
    }

    fn allowed(auth: &Authenticator, user: Option<&str>, id: &str, b: ClientIdBinding) -> bool {
        let who = Identity {
            client_id: Arc::from(id),
            username: user.map(Arc::from),
            device: user.is_some(),
            pinned: false,
        };
        auth.client_id_allowed(&who, b)
    }

    #[test]
    fn prefix_binding_edge_cases() {
        use ClientIdBinding::Prefix;
        let auth = Authenticator::new(bound_registry(), true, AclPolicy::Allow).expect("auth");
        let dev1 = Some("dev1");
        assert!(allowed(&auth, dev1, "dev1", Prefix), "the username itself");
        assert!(
            allowed(&auth, dev1, "dev1:sensor-a", Prefix),
            "username and separator"
        );
        assert!(allowed(&auth, dev1, "dev1:", Prefix), "empty rest");
        assert!(
            !allowed(&auth, dev1, "dev10", Prefix),
            "dev1 is not a prefix of dev10"
        );
        assert!(!allowed(&auth, dev1, "dev10:x", Prefix));
        assert!(
            !allowed(&auth, dev1, "dev1-a", Prefix),
            "`-` is not the separator"
        );
        assert!(!allowed(&auth, dev1, "dev1/a", Prefix));
        assert!(!allowed(&auth, dev1, "xdev1", Prefix));
        assert!(!allowed(&auth, dev1, "", Prefix));
        assert!(!allowed(&auth, dev1, "DEV1", Prefix), "case matters");
        // The longer registered username owns its ids.
        assert!(allowed(&auth, Some("a"), "a:c", Prefix));
        assert!(!allowed(&auth, Some("a"), "a:b", Prefix));
        assert!(!allowed(&auth, Some("a"), "a:b:x", Prefix));
        assert!(allowed(&auth, Some("a:b"), "a:b:x", Prefix));
        // Anonymous clients keep out of registered usernames' ids.
        assert!(allowed(&auth, None, "free", Prefix));
        assert!(allowed(&auth, None, "dev100", Prefix));
        assert!(!allowed(&auth, None, "dev1", Prefix));
        assert!(!allowed(&auth, None, "dev1:x", Prefix));
        assert!(!allowed(&auth, None, "a:b:c", Prefix));
    }

    #[test]
    fn exact_and_off_binding() {
        use ClientIdBinding::{Exact, Off};
        let auth = Authenticator::new(bound_registry(), true, AclPolicy::Allow).expect("auth");
        assert!(allowed(&auth, Some("dev1"), "dev1", Exact));
        assert!(!allowed(&auth, Some("dev1"), "dev1:x", Exact));
        assert!(!allowed(&auth, None, "dev1", Exact));
        assert!(
            allowed(&auth, None, "dev1:x", Exact),
            "nobody owns it under exact"
        );
        assert!(allowed(&auth, Some("dev1"), "dev10", Off));
        assert!(allowed(&auth, None, "dev1", Off));
    }

    #[test]
    fn a_pinned_client_id_replaces_the_binding() {
        let auth = Authenticator::new(bound_registry(), false, AclPolicy::Allow).expect("auth");
        let who = auth
            .authenticate("anything", Some("pin"), Some(b"pw"), None)
            .expect("pinned id");
        assert!(auth.client_id_allowed(&who, ClientIdBinding::Exact));
        let who = auth
            .authenticate("dev1:x", Some("dev1"), Some(b"pw"), None)
            .expect("password ok");
        assert!(auth.client_id_allowed(&who, ClientIdBinding::Prefix));
        assert!(!auth.client_id_allowed(&who, ClientIdBinding::Exact));
        // A verified certificate name is bound like a username.
        let who = auth
            .authenticate("other", None, None, Some("dev1"))
            .expect("cert");
        assert!(!auth.client_id_allowed(&who, ClientIdBinding::Prefix));
    }

    #[test]
    fn bad_hash_is_a_config_error_naming_the_key() {
        let reg: Registry = toml::from_str(
            r#"[[devices]]
            username = "d"
            password_hash = "plaintext""#,
        )
        .expect("parses");
        let err = Authenticator::new(reg, false, AclPolicy::Deny).expect_err("must fail");
        assert!(
            err.to_string().contains("devices[0].password_hash"),
            "{err}"
        );
    }

    #[test]
    fn local_users_and_rules_survive_a_registry_replace() {
        let auth = Authenticator::new(registry(), false, AclPolicy::Allow).expect("auth");
        let rule = |permission, action, topic: &str| AclRule {
            permission,
            action,
            topic: topic.to_owned(),
        };
        auth.set_local_user(Device {
            username: "component:a".into(),
            password_hash: Some(hash_password("pw").expect("hash")),
            client_id: Some("component:a".into()),
            acl: vec![
                rule(AclPolicy::Allow, AclAction::All, "components/a/#"),
                rule(AclPolicy::Deny, AclAction::All, "#"),
            ],
        })
        .expect("local user");
        auth.set_local_rules(vec![rule(AclPolicy::Deny, AclAction::All, "$verge/#")]);
        // What the cloud agent does on every apply: a fresh registry.
        auth.replace(Registry::default()).expect("replace");
        assert!(
            auth.authenticate("sensor", Some("sensor"), Some(b"s3cret"), None)
                .is_err(),
            "the registry was replaced"
        );
        assert_eq!(
            auth.authenticate("component:a", Some("component:a"), Some(b"wrong"), None)
                .err(),
            Some(AuthFailure::BadCredentials)
        );
        assert_eq!(
            auth.authenticate("other", Some("component:a"), Some(b"pw"), None)
                .err(),
            Some(AuthFailure::NotAuthorized),
            "the client id is pinned"
        );
        let who = auth
            .authenticate("component:a", Some("component:a"), Some(b"pw"), None)
            .expect("local user kept");
        assert!(auth.may_publish(&who, "components/a/x"));
        assert!(!auth.may_publish(&who, "components/b/x"));
        assert!(!auth.may_subscribe(&who, "#"));
        let anon_auth = Authenticator::new(Registry::default(), true, AclPolicy::Allow).expect("a");
        anon_auth.set_local_rules(vec![rule(AclPolicy::Deny, AclAction::All, "$verge/#")]);
        let anon = anon_auth
            .authenticate("x", None, None, None)
            .expect("anonymous");
        assert!(!anon_auth.may_publish(&anon, "$verge/rpc/a/config.get"));
        assert!(anon_auth.may_publish(&anon, "elsewhere"));
        // Nobody else may take the local user's client id.
        assert!(!allowed(&auth, None, "component:a", ClientIdBinding::Exact));
        assert!(auth.remove_local_user("component:a"));
        assert!(!auth.may_publish(&who, "components/a/x"), "revoked");
        assert!(
            auth.authenticate("component:a", Some("component:a"), Some(b"pw"), None)
                .is_err()
        );
    }
}
