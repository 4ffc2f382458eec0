//! Starting a component's process (its own process group, output piped
//! into its log ring, its resource limits set in the child before it
//! runs the program) and signalling its group.
//!
//! Limits of a process component: `limits.memory` becomes its address
//! space limit (`RLIMIT_AS`: an allocation past it fails in the process),
//! and `limits.cpu_shares` its nice value, mapped on the kernel's scheduler
//! weights (1024 = nice 0, each nice step about 1.25 times less weight):
//! `nice = round(ln(1024 / shares) / ln(1.25))`, clamped to 0..=19, so 512
//! → 3, 256 → 6, 128 → 9, 2 → 19. More than 1024 shares stays nice 0: a
//! raised priority needs privileges the node should not have.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use verge_protocol::ComponentSpec;

use super::bus::Credentials;
use super::log::{LogRing, take_lines};

/// The node's environment variables a process component inherits; every
/// other one is left out.
const PASSED_THROUGH: [&str; 7] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "TMPDIR"];

/// Spawn `spec` in `workdir`, its stdout and stderr read into `logs`,
/// with `mqtt` credentials in its environment.
pub fn spawn(
    spec: &ComponentSpec,
    workdir: &Path,
    logs: &Arc<Mutex<LogRing>>,
    mqtt: Option<&Credentials>,
) -> std::io::Result<Child> {
    // A relative path with a slash (`./run.sh`, `bin/reader`) is the
    // component's own file, in its working directory.
    let program = Path::new(&spec.command);
    let program = if program.is_relative() && spec.command.contains('/') {
        workdir.join(program)
    } else {
        program.to_path_buf()
    };
    let mut cmd = Command::new(program);
    // The node's own environment (which may hold its secrets) is not
    // inherited: only the variables a program needs to run at all.
    cmd.env_clear();
    for key in PASSED_THROUGH {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.args(&spec.args)
        .current_dir(workdir)
        .envs(super::env::component_env(spec, workdir, mqtt))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    apply_limits(
        &mut cmd,
        spec.limits.memory,
        spec.limits.cpu_shares.map(nice_for_shares),
    );
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

/// The nice value for `shares` (see the module doc).
pub fn nice_for_shares(shares: u32) -> i32 {
    if shares >= 1024 || shares == 0 {
        return 0;
    }
    let steps = (1024.0 / f64::from(shares)).ln() / 1.25f64.ln();
    (steps.round() as i32).clamp(0, 19)
}

/// Set `RLIMIT_AS` to `memory` bytes and the nice value to `nice` in the
/// child between fork and exec.
#[allow(unsafe_code)]
fn apply_limits(cmd: &mut Command, memory: Option<u64>, nice: Option<i32>) {
    if memory.is_none() && nice.is_none_or(|n| n == 0) {
        return;
    }
    let limit = memory.map(|m| libc::rlimit {
        rlim_cur: m as libc::rlim_t,
        rlim_max: m as libc::rlim_t,
    });
    let closure = move || -> std::io::Result<()> {
        if let Some(l) = &limit {
            // SAFETY: setrlimit(2) is a plain system call on a pointer to
            // a value this closure owns; it takes no lock and allocates
            // nothing, so it is safe between fork and exec.
            if unsafe { libc::setrlimit(libc::RLIMIT_AS, l) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if let Some(n) = nice.filter(|n| *n != 0) {
            // SAFETY: setpriority(2) is a plain system call taking
            // integers (who = 0: this process, the child); no lock, no
            // allocation.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and calls
    // only the two system calls above (async-signal-safe in practice: no
    // locks, no allocation, no I/O of the parent's state).
    unsafe {
        cmd.pre_exec(closure);
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

#[cfg(test)]
mod tests {
    use super::nice_for_shares;

    #[test]
    fn shares_map_to_nice_on_the_kernel_weights() {
        assert_eq!(nice_for_shares(1024), 0);
        assert_eq!(nice_for_shares(4096), 0, "no raised priority");
        assert_eq!(nice_for_shares(512), 3);
        assert_eq!(nice_for_shares(256), 6);
        assert_eq!(nice_for_shares(128), 9);
        assert_eq!(nice_for_shares(2), 19);
    }
}
