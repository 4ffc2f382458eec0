//! The queue's recovery: opening a lane directory whose files hold
//! arbitrary bytes. The input describes a lane: an optional cursor file,
//! then segment files of records (written in the on-disk format, which is
//! spelled out here again rather than taken from the crate) and damage to
//! each (cut, a flipped byte, garbage appended, or the file replaced by raw
//! bytes).
//! - opening never panics or fails;
//! - exactly the intact records are handed out, in order: in every segment
//!   those before its first damaged one, above the acked-up-to point;
//! - the recovery report counts them, `next_seq` lies above them all;
//! - opening a second time (after the first cut the torn tail) hands out
//!   the same records.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use verge_fuzz::Choices;
use verge_queue::{Entry, LaneConfig, Queue, QueueConfig, SyncPolicy, WhenFull};

/// `[len u32][crc32 u32][seq u64][time_ms i64][topic_len u16][topic][payload]`
fn frame(seq: u64, time_ms: i64, topic: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    let mut body = Vec::new();
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&time_ms.to_le_bytes());
    body.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    body.extend_from_slice(topic);
    body.extend_from_slice(payload);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// One record as the queue should hand it out.
#[derive(Debug, PartialEq)]
struct Want {
    seq: u64,
    topic: String,
    payload: Vec<u8>,
    time_ms: i64,
}

/// The intact records at the start of a segment whose first seq is
/// `first`: each frame whole, its checksum right, its topic UTF-8 and its
/// seq the next one (and below u64::MAX).
fn intact(first: u64, mut bytes: &[u8]) -> Vec<Want> {
    let mut out = Vec::new();
    let mut seq = first;
    loop {
        let Some(len) = bytes
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        else {
            return out;
        };
        let len = len as usize;
        if !(18..=16 << 20).contains(&len) || bytes.len() < 8 + len {
            return out;
        }
        let body = &bytes[8..8 + len];
        if crc32fast::hash(body).to_le_bytes() != bytes[4..8] {
            return out;
        }
        let at = |i: usize| <[u8; 8]>::try_from(&body[i..i + 8]).expect("8 bytes");
        let topic_len = usize::from(u16::from_le_bytes([body[16], body[17]]));
        // (no record can follow seq u64::MAX: the queue takes it as damage)
        if u64::from_le_bytes(at(0)) != seq || seq == u64::MAX || topic_len > len - 18 {
            return out;
        }
        let Ok(topic) = std::str::from_utf8(&body[18..18 + topic_len]) else {
            return out;
        };
        out.push(Want {
            seq,
            topic: topic.to_owned(),
            payload: body[18 + topic_len..].to_vec(),
            time_ms: i64::from_le_bytes(at(8)),
        });
        bytes = &bytes[8 + len..];
        seq += 1;
    }
}

fn scratch() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = Path::new("/dev/shm");
    let base = if base.is_dir() {
        base.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    base.join(format!(
        "verge-fuzz-queue-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn config(dir: &Path) -> QueueConfig {
    QueueConfig {
        dir: dir.to_path_buf(),
        sync: SyncPolicy::Buffered,
        lanes: vec![LaneConfig {
            name: "l".into(),
            priority: 0,
            max_bytes: 1 << 30,
            max_age: None,
            when_full: WhenFull::Reject,
        }],
        ..QueueConfig::default()
    }
}

/// Open the queue, take everything it hands out, close it.
fn drain(dir: &Path) -> (Vec<Entry>, u64, u64) {
    let (q, rec) = Queue::open(config(dir)).expect("a lane of any bytes opens");
    let mut got = Vec::new();
    while q.try_next_batch(64, &mut got) > 0 {}
    let next_seq = q.stats().lanes[0].next_seq;
    drop(q);
    (got, rec.lanes[0].records, next_seq)
}

fuzz_target!(|data: &[u8]| {
    let mut c = Choices::new(data);
    let flags = c.byte();
    let dir = scratch();
    let lane = dir.join("l");
    std::fs::create_dir_all(&lane).expect("scratch dir");

    let big = |c: &mut Choices, huge: bool| {
        let b = u64::from(c.byte());
        if huge { u64::MAX - b % 4 } else { b % 16 }
    };
    let cursor = (flags & 1 != 0).then(|| {
        let acked = big(&mut c, flags & 2 != 0);
        let next = big(&mut c, flags & 2 != 0);
        let mut buf = b"VQC1".to_vec();
        buf.extend_from_slice(&acked.to_le_bytes());
        buf.extend_from_slice(&next.to_le_bytes());
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(lane.join("cursor"), buf).expect("cursor");
        (acked, next)
    });

    let mut first = big(&mut c, flags & 4 != 0).max(1);
    let mut segments = Vec::new();
    for _ in 0..c.byte() % 4 + 1 {
        let records = u64::from(c.byte() % 6);
        let mut bytes = Vec::new();
        for k in 0..records {
            let n = usize::from(c.byte() % 8);
            let topic = c.take(n);
            let n = usize::from(c.byte() % 32);
            let time_ms = i64::from(c.byte());
            frame(first.wrapping_add(k), time_ms, topic, c.take(n), &mut bytes);
        }
        let at = usize::from(c.u16());
        match c.byte() % 6 {
            1 => bytes.truncate(at % (bytes.len() + 1)),
            2 if !bytes.is_empty() => {
                let i = at % bytes.len();
                bytes[i] ^= c.byte() | 1;
            }
            3 => {
                let n = usize::from(c.byte() % 24);
                bytes.extend_from_slice(c.take(n));
            }
            4 => {
                let n = usize::from(c.byte());
                bytes = c.take(n).to_vec();
            }
            _ => {}
        }
        std::fs::write(lane.join(format!("{first:020}.seg")), &bytes).expect("segment");
        segments.push((first, intact(first, &bytes)));
        let Some(next) = first.checked_add(records + u64::from(c.byte() % 3)) else {
            break;
        };
        first = next;
    }

    // What must come out: above the acked-up-to point (the cursor's unless
    // it acks at or past its own next seq, at least the first segment's
    // first seq - 1), every intact record.
    let cursor = cursor.filter(|&(acked, next)| acked < next);
    let mut acked = cursor.map_or(0, |c| c.0);
    acked = acked.max(segments[0].0 - 1);
    // Segments whose intact records run into the next one's seqs (raw
    // bytes that happen to hold more valid frames) have no one right
    // order; only the first properties are checked then.
    let overlap = segments
        .windows(2)
        .any(|w| w[0].1.last().is_some_and(|r| r.seq >= w[1].0));
    let want: Vec<&Want> = segments
        .iter()
        .flat_map(|(_, recs)| recs)
        .filter(|r| r.seq > acked)
        .collect();

    let (got, recovered, next_seq) = drain(&dir);
    if !overlap {
        let got_view: Vec<Want> = got
            .iter()
            .map(|e| Want {
                seq: e.seq,
                topic: e.record.topic.clone(),
                payload: e.record.payload.to_vec(),
                time_ms: e.record.time_ms,
            })
            .collect();
        let want_view: Vec<&Want> = got_view.iter().collect();
        assert_eq!(want_view, want, "records handed out");
        assert_eq!(recovered, want.len() as u64, "recovery's count");
    }
    for e in &got {
        assert!(e.seq < next_seq, "next_seq {next_seq} after seq {}", e.seq);
    }
    if let Some((_, cursor_next)) = cursor {
        assert!(next_seq >= cursor_next);
    }
    let (again, _, _) = drain(&dir);
    let seqs = |v: &[Entry]| v.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(&again), seqs(&got), "the second open");
    std::fs::remove_dir_all(&dir).expect("clean up");
});
