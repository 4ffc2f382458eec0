//! The edge-only build (`--no-default-features --features edge`): every
//! command that needs a part this build leaves out is still there and says
//! so, and a node config naming a driver this build has no client for is
//! refused naming it. In the default build this file tests that the same
//! commands are present (they fail for their own reasons, not for a
//! missing part).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_verge"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("VERGE__") {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_LOG");
    c.args(args).output().expect("verge runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What needs the cloud center, with arguments that would be wrong (or
/// harmless) for it in a full build, so nothing is started.
const CLOUD_COMMANDS: &[&[&str]] = &[
    &["cloud", "--set", "no.such.key=1"],
    &["up", "--cloud-set", "no.such.key=1"],
    &["config", "default", "--cloud"],
    &["config", "check", "--cloud", "/nonexistent/cloud.toml"],
    &["bench", "ingest", "--no-such-flag"],
    &["bench", "fleet", "--no-such-flag"],
];

const NO_CLOUD: &str = "this build has no cloud center";

#[cfg(not(feature = "cloud"))]
#[test]
fn commands_of_the_cloud_center_say_this_build_has_none() {
    for args in CLOUD_COMMANDS {
        let out = run(args);
        assert!(!out.status.success(), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(NO_CLOUD) && err.contains("--features cloud"),
            "{args:?}: {err}"
        );
    }
    let help = run(&["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Not in this build (it has no cloud center)"),
        "{text}"
    );
}

#[cfg(feature = "cloud")]
#[test]
fn commands_of_the_cloud_center_are_built_in() {
    for args in CLOUD_COMMANDS {
        let out = run(args);
        assert!(
            !stderr(&out).contains(NO_CLOUD),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// A node config with an OPC UA driver: refused by a build without the
/// client, accepted by one with it.
#[test]
fn an_opcua_driver_needs_the_opcua_feature() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        r#"
[[drivers]]
name = "ua"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840/"

[[drivers.devices]]
name = "press"

[[drivers.devices.points]]
name = "t"
address = "ns=2;s=T"
type = "f64"
"#,
    )
    .expect("write");
    let out = run(&["config", "check", file.to_str().expect("utf-8")]);
    if cfg!(feature = "opcua") {
        assert!(out.status.success(), "{}", stderr(&out));
    } else {
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains("drivers[0] (`ua`)") && err.contains("no OPC UA support"),
            "{err}"
        );
    }
}
