//! kill -9 tests: a child process (this test binary re-executed to run the
//! ignored `child_writer` test) appends from several tasks and prints every
//! seq only after `append` returned; the parent SIGKILLs it mid-write,
//! reopens the queue and checks that every acknowledged record is there,
//! in order, intact, once, and that seqs continue upwards.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use verge_queue::{Queue, QueueConfig, Record, SyncPolicy};

const DIR_VAR: &str = "VERGE_QUEUE_CRASH_DIR";
const POLICY_VAR: &str = "VERGE_QUEUE_CRASH_POLICY";
const TASKS: usize = 8;

fn config(dir: &Path, sync: SyncPolicy) -> QueueConfig {
    let mut cfg = QueueConfig {
        dir: dir.to_path_buf(),
        sync,
        group_commit: Duration::from_millis(2),
        segment_bytes: 64 * 1024,
        ..QueueConfig::default()
    };
    for lane in &mut cfg.lanes {
        lane.max_age = None;
    }
    cfg
}

fn payload(task: usize, n: u64, k: usize) -> String {
    format!(
        "task{task}-call{n}-rec{k}-{}",
        "p".repeat((n as usize * 7 + k) % 200)
    )
}

/// The child: append until killed. Does nothing unless run by the parent.
#[test]
#[ignore = "run by the crash tests in a child process"]
fn child_writer() {
    let (Ok(dir), Ok(policy)) = (std::env::var(DIR_VAR), std::env::var(POLICY_VAR)) else {
        return;
    };
    let sync = match policy.as_str() {
        "always" => SyncPolicy::Always,
        "group" => SyncPolicy::Group,
        _ => SyncPolicy::Buffered,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let (q, _) = Queue::open(config(Path::new(&dir), sync)).expect("child open");
        let mut tasks = Vec::new();
        // The "cloud": reads and acks, saying so before each ack.
        let reader = q.clone();
        tasks.push(tokio::spawn(async move {
            let lanes = reader.lanes();
            let mut batch = Vec::new();
            while reader.next_batch(64, &mut batch).await > 0 {
                {
                    let mut out = std::io::stdout().lock();
                    for e in &batch {
                        writeln!(out, "DONE {} {}", lanes[e.lane], e.seq).expect("stdout");
                    }
                    out.flush().expect("flush");
                }
                // Out of order, to move the cursor the hard way.
                for e in batch.drain(..).rev() {
                    reader.ack(e.lane, e.seq);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }));
        for task in 0..TASKS {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let lane = if task % 4 == 0 { "alarms" } else { "telemetry" };
                for n in 0u64.. {
                    let count = 1 + (n as usize + task) % 3;
                    let records = (0..count)
                        .map(|k| Record {
                            topic: format!("crash/{task}"),
                            payload: Bytes::from(payload(task, n, k)),
                            time_ms: n as i64,
                        })
                        .collect();
                    let seqs = q.append(lane, records).await.expect("append");
                    let mut out = std::io::stdout().lock();
                    for (k, seq) in seqs.iter().enumerate() {
                        writeln!(out, "ACK {lane} {seq} {}", payload(task, n, k)).expect("stdout");
                    }
                    out.flush().expect("flush");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    });
}

/// A number that differs from run to run, for the kill moment.
fn jitter(salt: u64) -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    (t ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % 1000
}

/// Run the child until it has acknowledged `kill_after` records, SIGKILL it,
/// and return every record it acknowledged: lane → seq → payload.
fn run_child(dir: &Path, policy: &str, kill_after: u64) -> BTreeMap<String, BTreeMap<u64, String>> {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([
            "child_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .env(POLICY_VAR, policy)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut acked: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    let mut n = 0u64;
    let mut killed = false;
    let mut done = Vec::new();
    let started = std::time::Instant::now();
    let min_run = Duration::from_millis(150 + kill_after % 300);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        // libtest's "test child_writer ... " has no newline before our first line.
        let Some(at) = line.find("ACK ").or_else(|| line.find("DONE ")) else {
            continue;
        };
        let line = &line[at..];
        if let Some(rest) = line.strip_prefix("DONE ") {
            done.push(rest.to_owned());
            continue;
        }
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let mut parts = rest.splitn(3, ' ');
        let (Some(lane), Some(seq), Some(p)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("bad line {line}");
        };
        let seq: u64 = seq.parse().expect("seq");
        let dup = acked
            .entry(lane.to_owned())
            .or_default()
            .insert(seq, p.to_owned());
        assert!(dup.is_none(), "seq {seq} of {lane} acknowledged twice");
        n += 1;
        // Late enough for cursor writes (every ~100 ms) and segment
        // deletions to have happened in the child too.
        if n >= kill_after && !killed && started.elapsed() >= min_run {
            child.kill().expect("SIGKILL");
            killed = true;
        }
    }
    // Lines after the kill were acknowledged before it: they count too.
    let status = child.wait().expect("wait");
    assert!(killed, "child ended by itself: {status}");
    // What the cloud acked may be gone after recovery: not checked.
    for d in done {
        let (lane, seq) = d.split_once(' ').expect("DONE line");
        let seq: u64 = seq.parse().expect("seq");
        if let Some(l) = acked.get_mut(lane) {
            l.remove(&seq);
        }
    }
    acked
}

fn crash_rounds(policy: &str, sync: SyncPolicy) {
    let tmp = tempfile::tempdir().expect("tmp");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut last_seq: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..4u64 {
        let kill_after = 50 + jitter(round) * 2;
        let acked = run_child(tmp.path(), policy, kill_after);
        rt.block_on(async {
            let (q, recovery) = Queue::open(config(tmp.path(), sync)).expect("reopen");
            eprintln!("{policy} round {round}: {} acknowledged and not yet acked by the reader; {recovery:?}",
                acked.values().map(|s| s.len()).sum::<usize>());
            let mut entries = Vec::new();
            while q.try_next_batch(10_000, &mut entries) > 0 {}
            let mut found: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
            let mut prev: BTreeMap<usize, u64> = BTreeMap::new();
            for e in &entries {
                let p = prev.entry(e.lane).or_insert(0);
                assert!(e.seq > *p, "{policy}: lane {} seq {} after {}", e.lane, e.seq, p);
                *p = e.seq;
                let lane = q.lanes()[e.lane].clone();
                let text = String::from_utf8(e.record.payload.to_vec()).expect("utf8");
                assert!(text.starts_with("task"), "{policy}: garbage record {text:?}");
                found.entry(lane).or_default().insert(e.seq, text);
            }
            for (lane, seqs) in &acked {
                for (seq, payload) in seqs {
                    let got = found.get(lane).and_then(|f| f.get(seq));
                    assert_eq!(
                        got,
                        Some(payload),
                        "{policy} round {round}: acknowledged {lane}/{seq} lost or changed"
                    );
                    let last = last_seq.entry(lane.clone()).or_insert(0);
                    assert!(*seq > *last, "{policy}: seq {seq} of {lane} reused");
                }
            }
            // Appends continue above everything seen.
            for lane in ["alarms", "telemetry"] {
                let max_found = found.get(lane).and_then(|f| f.keys().last().copied()).unwrap_or(0);
                let rec = Record {
                    topic: "after".into(),
                    payload: Bytes::from_static(b"after recovery"),
                    time_ms: 0,
                };
                let seq = q.append(lane, vec![rec]).await.expect("append after recovery")[0];
                assert!(seq > max_found, "{policy}: new seq {seq} not above {max_found}");
                last_seq.insert(lane.to_owned(), seq);
            }
            // Ack everything so the next round starts from a clean cursor.
            let mut rest = Vec::new();
            while q.try_next_batch(10_000, &mut rest) > 0 {}
            for e in entries.iter().chain(&rest) {
                q.ack(e.lane, e.seq);
            }
            assert_eq!(q.stats().depth, 0);
            q.close().await;
        });
    }
}

#[test]
fn kill_9_always() {
    crash_rounds("always", SyncPolicy::Always);
}

#[test]
fn kill_9_group() {
    crash_rounds("group", SyncPolicy::Group);
}

#[test]
fn kill_9_buffered() {
    crash_rounds("buffered", SyncPolicy::Buffered);
}
