//! The desired state's protocol drivers on the node: each [`DriverSpec`]
//! becomes the driver crate's `DriverConfig` (through JSON, so that its
//! config type checks it), runs in the node's one set of drivers
//! ([`verge_drivers::Drivers`]) and is replaced only when what runs
//! differs from it. A driver whose new config does not start keeps the
//! config it ran with (the item fails; the agent then returns the node to
//! its last good state as a whole).

use std::collections::HashSet;

use verge_drivers::config::ProtocolKind;
use verge_drivers::{DriverConfig, Drivers};
use verge_protocol::{DesiredState, DriverSpec};

use crate::apply::Results;
use crate::parts::NodeParts;

/// The driver config of `spec` as `drivers` would run it (an OPC UA
/// driver without `pki_dir` gets the node's default under its data dir),
/// checked whole. A spec that names a file of the node is refused here
/// too, whatever the cloud checked.
fn driver_config(drivers: &Drivers, spec: &DriverSpec) -> Result<DriverConfig, String> {
    spec.check_files().map_err(|e| {
        // The item already names the driver.
        let prefix = format!("driver `{}`: ", spec.name);
        e.strip_prefix(&prefix)
            .map_or_else(|| e.clone(), str::to_owned)
    })?;
    let mut config: DriverConfig = serde_json::to_value(spec)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string())?;
    if let Some(serial) = &config.serial {
        check_serial_target(&serial.device)?;
    }
    // A cloud driver's certificates are its own: never those of a node's
    // driver of the same name, whose trusted servers it would share.
    if config.protocol == ProtocolKind::Opcua
        && config.pki_dir.is_none()
        && let Some(root) = drivers.pki_root()
    {
        config.pki_dir = Some(root.join("cloud").join(&config.name).display().to_string());
    }
    config.validate()?;
    Ok(drivers.with_defaults(config))
}

/// A serial line that exists must be one where its links lead: a udev
/// name under `/dev/serial/` resolves to a `/dev/tty…`, not to another
/// device file. One that does not exist (unplugged) is opened, and
/// checked, when it is there.
fn check_serial_target(device: &str) -> Result<(), String> {
    match std::fs::canonicalize(device) {
        Ok(real) => match real.to_str() {
            Some(p) if verge_protocol::serial_line(p) && !p.starts_with("/dev/serial/") => Ok(()),
            _ => Err(format!(
                "`serial.device` {device} leads to {}, which is no serial line",
                real.display()
            )),
        },
        Err(_) => Ok(()),
    }
}

/// Make the driver of `spec` run as it says unless it does; `true` when
/// it changed something. `managed` are the names the cloud deployed
/// before: a running driver of another name is the node's own (its config
/// file's or its API's), which the cloud's replaces with a warning. A
/// disabled driver does not run.
async fn apply_driver(
    drivers: &Drivers,
    managed: &HashSet<&str>,
    spec: &DriverSpec,
) -> Result<bool, String> {
    let config = driver_config(drivers, spec)?;
    let running = drivers.get(&config.name).map(|(c, _)| c);
    if running.as_ref() == Some(&config) {
        return Ok(false);
    }
    if running.is_some() && !managed.contains(config.name.as_str()) {
        tracing::warn!(
            driver = %config.name,
            "a driver from the cloud replaces the node's own driver of the same name"
        );
    }
    if !config.enabled {
        return Ok(drivers.delete(&config.name).await);
    }
    let name = config.name.clone();
    match drivers.create(config).await {
        Ok(_) => Ok(true),
        Err(e) => {
            // `create` checks the new config before it stops the old
            // driver, so the old one runs on; should it be gone anyway,
            // it is started again.
            if let Some(old) = running
                && drivers.get(&name).is_none()
                && let Err(again) = drivers.create(old).await
            {
                tracing::error!(driver = %name, "the driver's old config did not start again: {again}");
            }
            Err(e)
        }
    }
}

/// Run exactly the drivers of `specs` among those the cloud manages:
/// remove the ones the previous cloud state had and `specs` has not,
/// start new ones, replace changed ones. The node's own drivers of other
/// names are left alone.
pub(crate) async fn apply_drivers(
    parts: &NodeParts,
    prev: Option<&DesiredState>,
    specs: &[DriverSpec],
    out: &mut Results,
) {
    let Some(drivers) = &parts.drivers else {
        for spec in specs {
            out.failed("driver", &spec.name, "this node runs no protocol drivers");
        }
        return;
    };
    let managed: HashSet<&str> = prev
        .map(|p| p.drivers.iter().map(|d| d.name.as_str()).collect())
        .unwrap_or_default();
    // Names the new state lists, even when their config is invalid: such a
    // driver keeps its old config rather than disappear.
    let wanted: HashSet<&str> = specs.iter().map(|d| d.name.as_str()).collect();
    // Removals first: a device belongs to one driver, and one a removed
    // driver read may be read by a driver of this state.
    for name in &managed {
        if !wanted.contains(name) && drivers.delete(name).await {
            out.removed("driver", name);
        }
    }
    let mut seen = HashSet::new();
    let mut again = Vec::new();
    for spec in specs {
        if !seen.insert(spec.name.as_str()) {
            out.failed("driver", &spec.name, "listed twice");
            continue;
        }
        match apply_driver(drivers, &managed, spec).await {
            Ok(true) => out.applied("driver", &spec.name),
            Ok(false) => {}
            Err(_) => again.push(spec),
        }
    }
    // A device that moves from one driver to another in this state is
    // refused while the first still reads it: once every other driver
    // runs its new config, the refused ones are tried once more.
    for spec in again {
        match apply_driver(drivers, &managed, spec).await {
            Ok(true) => out.applied("driver", &spec.name),
            Ok(false) => {}
            Err(e) => out.failed("driver", &spec.name, e),
        }
    }
}

/// Put back the drivers of `d` changed or deleted on the node since it
/// was applied; one line per driver put back.
pub(crate) async fn reconcile(parts: &NodeParts, d: &DesiredState) -> Vec<String> {
    let Some(drivers) = &parts.drivers else {
        return Vec::new();
    };
    let managed: HashSet<&str> = d.drivers.iter().map(|s| s.name.as_str()).collect();
    let mut restored = Vec::new();
    for spec in &d.drivers {
        match apply_driver(drivers, &managed, spec).await {
            Ok(true) => restored.push(format!("driver `{}` restored", spec.name)),
            Ok(false) => {}
            Err(e) => tracing::debug!(driver = %spec.name, "not restored: {e}"),
        }
    }
    restored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serial_line_must_lead_to_a_tty() {
        let dir = tempfile::tempdir().expect("tmp");
        let link = dir.path().join("by-id-like");
        std::os::unix::fs::symlink("/dev/null", &link).expect("link");
        let e = check_serial_target(link.to_str().expect("utf-8")).expect_err("refused");
        assert!(
            e.contains("/dev/null") && e.contains("no serial line"),
            "{e}"
        );
        // Not there (unplugged): checked when it is.
        assert!(check_serial_target("/dev/ttyUSB-not-there-42").is_ok());
    }
}
