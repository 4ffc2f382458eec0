//! What the component tests share: waiting for a component's state, a
//! free port, and specs built from JSON defaults.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::Value;
use verge_node::components::{ComponentInfo, Components};
use verge_protocol::ComponentSpec;

/// Longest wait for a component to reach a state; only there so a broken
/// build fails instead of hanging (a container may take a while to pull
/// and start on a loaded machine).
pub const COMPONENT_WAIT: Duration = Duration::from_secs(60);

/// Poll `name` until `ok` holds; the last info.
pub async fn wait_for(
    c: &Components,
    name: &str,
    what: &str,
    ok: impl Fn(&ComponentInfo) -> bool,
) -> ComponentInfo {
    let t = Instant::now();
    loop {
        let info = c.get(name).expect("component");
        if ok(&info) {
            return info;
        }
        assert!(t.elapsed() < COMPONENT_WAIT, "{name}: not {what}: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The spec `defaults` with the keys of `extra` over them.
pub fn spec_from(defaults: Value, extra: Value) -> ComponentSpec {
    let mut v = defaults;
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    serde_json::from_value(v).expect("spec")
}
