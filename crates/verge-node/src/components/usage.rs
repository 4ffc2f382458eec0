//! CPU and memory of a component's process (the process group leader, not
//! its children), read from `/proc/<pid>/stat` (user + system time) and
//! `/proc/<pid>/status` (`VmRSS`, resident memory).

use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on
/// every Linux architecture the node runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// CPU seconds (user + system) since the process started.
    pub cpu_seconds: f64,
    /// Resident memory in bytes.
    pub memory_bytes: u64,
}

/// Read `pid`'s usage; `None` when it is gone or `/proc` is not there.
pub fn read(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Usage {
        cpu_seconds: cpu_ticks(&stat)? as f64 / TICKS_PER_SECOND,
        memory_bytes: rss_bytes(&status)?,
    })
}

/// utime + stime (fields 14 and 15; the command name in field 2 may hold
/// spaces and parentheses, so fields are counted after its last `)`).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The CPU share between two readings of one process.
#[derive(Debug, Default)]
pub struct Sampler {
    last: Option<(u32, Instant, f64)>,
}

impl Sampler {
    /// `pid`'s usage and its CPU percent (of one core) since the previous
    /// call for the same process (at least a second apart; the first
    /// time, since `started`).
    pub fn sample(&mut self, pid: u32, started: Instant) -> Option<(Usage, f64)> {
        let u = read(pid)?;
        let now = Instant::now();
        let (t0, c0) = match self.last {
            Some((p, t, c)) if p == pid => (t, c),
            _ => (started, 0.0),
        };
        let wall = now.duration_since(t0).as_secs_f64();
        let percent = if wall > 0.0 {
            ((u.cpu_seconds - c0).max(0.0) / wall * 100.0 * 10.0).round() / 10.0
        } else {
            0.0
        };
        let keep =
            matches!(self.last, Some((p, t, _)) if p == pid && now.duration_since(t).as_secs() < 1);
        if !keep {
            self.last = Some((pid, now, u.cpu_seconds));
        }
        Some((u, percent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat =
            "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 1000 10";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(
            rss_bytes("Name:\tx\nVmRSS:\t  1234 kB\n"),
            Some(1234 * 1024)
        );
        let me = read(std::process::id()).expect("own usage");
        assert!(me.memory_bytes > 0);
    }
}
