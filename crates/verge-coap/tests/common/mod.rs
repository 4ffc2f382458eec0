//! Shared by the gateway's integration tests.

use verge_broker::auth::Registry;
use verge_broker::auth::hash_password;

/// A registry with one device, `sensor` (password `s3cret`), allowed its
/// own `devices/sensor/…` topics and nothing else.
pub fn registry() -> Registry {
    let hash = hash_password("s3cret").expect("hash");
    toml::from_str(&format!(
        r##"
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
        "##
    ))
    .expect("registry")
}
