//! The MQTT side of the contract: the topics a node and the cloud exchange
//! data under, and the user properties an upstream message carries.
//!
//! A node `n` publishes to the cloud under `nodes/{n}/up/{rest}` and takes
//! the cloud's messages from `nodes/{n}/down/{rest}`; `{rest}` is the
//! node-local topic (e.g. `devices/d1/telemetry` going up,
//! `devices/d1/commands/reboot` coming down).

/// The user property naming an upstream message for de-duplication; its
/// value is a [`crate::VergeId`].
pub const VERGE_ID_PROPERTY: &str = "verge-id";

/// The user property holding the time an upstream message was queued on
/// the node (ms since the Unix epoch, decimal).
pub const VERGE_TIME_PROPERTY: &str = "verge-time";

const ROOT: &str = "nodes";
const UP: &str = "up";
const DOWN: &str = "down";

/// `nodes/{node}/up/`: what a node's upstream topics start with.
pub fn up_prefix(node: &str) -> String {
    format!("{ROOT}/{node}/{UP}/")
}

/// `nodes/{node}/down/`: what a node's downstream topics start with.
pub fn down_prefix(node: &str) -> String {
    format!("{ROOT}/{node}/{DOWN}/")
}

/// `nodes/{node}/up/{rest}`: the cloud-side topic of the node-local topic
/// `rest` sent upstream.
pub fn up(node: &str, rest: &str) -> String {
    format!("{}{rest}", up_prefix(node))
}

/// `nodes/{node}/down/{rest}`: the cloud-side topic of a message for the
/// node-local topic `rest`.
pub fn down(node: &str, rest: &str) -> String {
    format!("{}{rest}", down_prefix(node))
}

/// `nodes/{node}/up/#`: every upstream topic of one node.
pub fn up_filter(node: &str) -> String {
    up(node, "#")
}

/// `nodes/{node}/down/#`: every downstream topic of one node.
pub fn down_filter(node: &str) -> String {
    down(node, "#")
}

/// `nodes/+/up/#`: every upstream topic of every node.
pub fn up_filter_all() -> String {
    up_filter("+")
}

/// `nodes/{node}/down/devices/{device}/commands/{name}`: a command for a
/// device of `node`.
pub fn device_command(node: &str, device: &str, name: &str) -> String {
    down(node, &format!("devices/{device}/commands/{name}"))
}

/// Split `nodes/{node}/up/{rest}` into `(node, rest)`; `None` for any
/// other topic, an empty node or an empty rest.
pub fn parse_up(topic: &str) -> Option<(&str, &str)> {
    parse(topic, UP)
}

/// Split `nodes/{node}/down/{rest}` into `(node, rest)`; `None` for any
/// other topic, an empty node or an empty rest.
pub fn parse_down(topic: &str) -> Option<(&str, &str)> {
    parse(topic, DOWN)
}

fn parse<'a>(topic: &'a str, direction: &str) -> Option<(&'a str, &'a str)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let (node, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix(direction)?.strip_prefix('/')?;
    (!node.is_empty() && !rest.is_empty()).then_some((node, rest))
}

/// The device of a node-local telemetry topic: `devices/{d}/telemetry` →
/// `d`; `None` for other topics and for an empty or multi-level device.
pub fn telemetry_device(rest: &str) -> Option<&str> {
    rest.strip_prefix("devices/")?
        .strip_suffix("/telemetry")
        .filter(|d| !d.is_empty() && !d.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_spell_the_scheme() {
        assert_eq!(up_prefix("e1"), "nodes/e1/up/");
        assert_eq!(down_prefix("e1"), "nodes/e1/down/");
        assert_eq!(
            up("e1", "devices/d1/telemetry"),
            "nodes/e1/up/devices/d1/telemetry"
        );
        assert_eq!(down("e1", "cmd/x"), "nodes/e1/down/cmd/x");
        assert_eq!(up_filter("e1"), "nodes/e1/up/#");
        assert_eq!(down_filter("e1"), "nodes/e1/down/#");
        assert_eq!(up_filter_all(), "nodes/+/up/#");
        assert_eq!(
            device_command("e1", "d7", "reboot"),
            "nodes/e1/down/devices/d7/commands/reboot"
        );
    }

    #[test]
    fn parse_up_takes_only_upstream_topics() {
        assert_eq!(
            parse_up("nodes/e1/up/devices/d1/telemetry"),
            Some(("e1", "devices/d1/telemetry"))
        );
        assert_eq!(parse_up("nodes/e1/up/x"), Some(("e1", "x")));
        assert_eq!(parse_up("nodes/e1/down/x"), None);
        assert_eq!(parse_up("nodes/e1/up/"), None);
        assert_eq!(parse_up("nodes/e1/up"), None);
        assert_eq!(parse_up("nodes//up/x"), None);
        assert_eq!(parse_up("nodes/e1/upx/y"), None);
        assert_eq!(parse_up("nodesx/e1/up/y"), None);
        assert_eq!(parse_up("other/e1/up/y"), None);
        assert_eq!(parse_up(""), None);
    }

    #[test]
    fn parse_down_takes_only_downstream_topics() {
        assert_eq!(parse_down("nodes/n1/down/cmd/x"), Some(("n1", "cmd/x")));
        assert_eq!(parse_down("nodes/n1/up/cmd/x"), None);
        assert_eq!(parse_down("nodes/n1/down/"), None);
    }

    #[test]
    fn builders_and_parsers_agree() {
        for (node, rest) in [
            ("e1", "a"),
            ("edge-2", "devices/d/telemetry"),
            ("n", "a/b/c"),
        ] {
            assert_eq!(parse_up(&up(node, rest)), Some((node, rest)));
            assert_eq!(parse_down(&down(node, rest)), Some((node, rest)));
        }
    }

    #[test]
    fn telemetry_topics_name_one_device() {
        assert_eq!(telemetry_device("devices/d1/telemetry"), Some("d1"));
        assert_eq!(telemetry_device("devices/d1/x/telemetry"), None);
        assert_eq!(telemetry_device("devices//telemetry"), None);
        assert_eq!(telemetry_device("devices/d1/status"), None);
    }
}
