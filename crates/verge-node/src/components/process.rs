//! Starting a component's process (its own process group, output piped
//! into its log ring) and signalling its group.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use verge_protocol::ComponentSpec;

use super::bus::Credentials;
use super::log::{LogRing, take_lines};

/// Spawn `spec` in `workdir`, its stdout and stderr read into `logs`,
/// with `mqtt` credentials in its environment.
pub fn spawn(
    spec: &ComponentSpec,
    workdir: &std::path::Path,
    logs: &Arc<Mutex<LogRing>>,
    mqtt: Option<&Credentials>,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.command);
    cmd.args(&spec.args)
        .current_dir(workdir)
        .envs(super::env::component_env(spec, workdir, mqtt))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(read_into(out, "stdout", logs.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(read_into(err, "stderr", logs.clone()));
    }
    Ok(child)
}

async fn read_into(mut r: impl AsyncRead + Unpin, stream: &'static str, logs: Arc<Mutex<LogRing>>) {
    let mut buf = Vec::new();
    let mut skipping = false;
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let lines = take_lines(&mut buf, &mut skipping);
        if let Ok(mut ring) = logs.lock() {
            for l in lines {
                ring.push(stream, l);
            }
        }
    }
    if !buf.is_empty()
        && !skipping
        && let Ok(mut ring) = logs.lock()
    {
        ring.push(stream, String::from_utf8_lossy(&buf).into_owned());
    }
}

/// Which signal to send.
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    /// Ask to stop.
    Term,
    /// Stop now.
    Kill,
}

/// Send `sig` to the process group `pgid` (the component's process and
/// whatever it started); a group that is gone is not an error.
#[allow(unsafe_code)]
pub fn signal_group(pgid: u32, sig: Signal) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    let sig = match sig {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of this
    // process; a negative pid addresses the group the component leads
    // (it was spawned with its own process group), never pid 0 or -1.
    unsafe {
        libc::kill(-pgid, sig);
    }
}
