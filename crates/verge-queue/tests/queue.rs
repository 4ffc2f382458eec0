//! Behaviour of the queue through its public API: reading, acks, rewind,
//! priorities, limits, segment deletion, recovery from torn and corrupt
//! files.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use verge_queue::{
    Entry, LaneConfig, Queue, QueueConfig, QueueError, Record, SyncPolicy, WhenFull,
};

fn lane(name: &str, priority: u8, max_bytes: u64, when_full: WhenFull) -> LaneConfig {
    LaneConfig {
        name: name.into(),
        priority,
        max_bytes,
        max_age: None,
        when_full,
    }
}

fn config(dir: &Path) -> QueueConfig {
    QueueConfig {
        dir: dir.to_path_buf(),
        sync: SyncPolicy::Group,
        group_commit: Duration::from_millis(1),
        segment_bytes: 4096,
        lanes: vec![
            lane("alarms", 10, 1 << 20, WhenFull::Reject),
            lane("telemetry", 0, 1 << 20, WhenFull::DropOldest),
        ],
        ..QueueConfig::default()
    }
}

/// Test record `i`: the same every time it is made in a test process.
fn rec(i: u64) -> Record {
    static T0: OnceLock<i64> = OnceLock::new();
    Record {
        topic: format!("devices/d{}/telemetry", i % 7),
        payload: Bytes::from(format!("payload-{i:06}-{}", "x".repeat((i % 50) as usize))),
        time_ms: *T0.get_or_init(verge_net::now_ms) + i as i64,
    }
}

fn recs(range: std::ops::Range<u64>) -> Vec<Record> {
    range.map(rec).collect()
}

fn segments(dir: &Path, lane: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join(lane))
        .expect("lane dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Everything readable now.
fn drain(q: &Queue) -> Vec<Entry> {
    let mut out = Vec::new();
    while q.try_next_batch(1000, &mut out) > 0 {}
    out
}

fn seqs(entries: &[Entry]) -> Vec<(usize, u64)> {
    entries.iter().map(|e| (e.lane, e.seq)).collect()
}

#[tokio::test]
async fn priority_order_ack_and_rewind() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (q, rec0) = Queue::open(config(tmp.path())).expect("open");
    assert_eq!(rec0.lanes.len(), 2);
    assert_eq!(q.lanes(), vec!["alarms", "telemetry"]);
    assert_eq!(q.lane_index("telemetry"), Some(1));
    assert_eq!(q.id().len(), 16);

    assert_eq!(
        q.append("telemetry", recs(0..5)).await.expect("append"),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        q.append("alarms", recs(100..103)).await.expect("append"),
        vec![1, 2, 3]
    );
    assert!(matches!(
        q.append("nope", recs(0..1)).await,
        Err(QueueError::UnknownLane(_))
    ));

    let mut out = Vec::new();
    assert_eq!(q.next_batch(4, &mut out).await, 4);
    assert_eq!(seqs(&out), vec![(0, 1), (0, 2), (0, 3), (1, 1)]);
    assert_eq!(out[0].record, rec(100));
    let rest = drain(&q);
    assert_eq!(seqs(&rest), vec![(1, 2), (1, 3), (1, 4), (1, 5)]);
    assert_eq!(rest[3].record, rec(4));
    assert!(drain(&q).is_empty(), "handed out once");

    // Out of order: 3 and 2 wait for 1.
    q.ack(1, 3);
    q.ack(1, 2);
    let s = q.stats();
    assert_eq!(
        (s.lanes[1].acked_upto, s.lanes[1].depth, s.lanes[1].acked),
        (0, 3, 2)
    );
    q.ack(1, 1);
    q.ack(0, 2);
    let s = q.stats();
    assert_eq!(s.lanes[1].acked_upto, 3);
    assert_eq!(s.lanes[0].acked_upto, 0);
    assert_eq!(s.depth, 2 + 2);
    assert!(s.lanes[0].oldest_age_ms.is_some());

    // Rewind hands out the unacked ones again, in order, skipping acked ones.
    q.rewind();
    let again = drain(&q);
    assert_eq!(seqs(&again), vec![(0, 1), (0, 3), (1, 4), (1, 5)]);
    for e in &again {
        q.ack(e.lane, e.seq);
    }
    let s = q.stats();
    assert_eq!(s.depth, 0);
    assert_eq!(s.bytes, 0);
    assert_eq!(s.lanes[0].oldest_age_ms, None);
    assert_eq!((s.lanes[0].acked_upto, s.lanes[1].acked_upto), (3, 5));
    q.close().await;
}

#[tokio::test]
async fn next_batch_waits_and_close_ends_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (q, _) = Queue::open(config(tmp.path())).expect("open");
    let reader = {
        let q = q.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            let n = q.next_batch(10, &mut out).await;
            (n, out)
        })
    };
    tokio::task::yield_now().await;
    q.append("telemetry", recs(0..2)).await.expect("append");
    let (n, out) = reader.await.expect("join");
    assert!(n >= 1 && out[0].seq == 1, "{n}");

    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.next_batch(10, &mut Vec::new()).await })
    };
    drain(&q);
    q.close().await;
    assert_eq!(waiter.await.expect("join"), 0);
    assert!(matches!(
        q.append("telemetry", recs(0..1)).await,
        Err(QueueError::Closed)
    ));
    assert_eq!(q.next_batch(10, &mut Vec::new()).await, 0);
}

#[tokio::test]
async fn a_directory_is_opened_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (q, _) = Queue::open(config(tmp.path())).expect("open");
    assert!(matches!(
        Queue::open(config(tmp.path())),
        Err(QueueError::Locked(_))
    ));
    q.close().await;
    let (q2, _) = Queue::open(config(tmp.path())).expect("reopen after close");
    q2.close().await;
}

#[tokio::test]
async fn reject_refuses_whole_appends_when_full() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = config(tmp.path());
    cfg.lanes[0].max_bytes = 8192;
    let (q, _) = Queue::open(cfg).expect("open");
    let big = |i| Record {
        topic: "t".into(),
        payload: Bytes::from(vec![i as u8; 1000]),
        time_ms: 0,
    };
    let mut n = 0u64;
    loop {
        match q.append("alarms", vec![big(n)]).await {
            Ok(_) => n += 1,
            Err(QueueError::Full { lane }) => {
                assert_eq!(lane, "alarms");
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(n < 100, "never full");
    }
    assert!((6..=8).contains(&n), "{n} records of 1 KiB in 8 KiB");
    let before = q.stats().lanes[0].clone();
    assert!(before.disk_bytes <= 8192);
    let err = q
        .append("alarms", vec![big(1), big(2), big(3)])
        .await
        .expect_err("full");
    assert!(matches!(err, QueueError::Full { .. }));
    let after = q.stats().lanes[0].clone();
    assert_eq!(after.rejected, before.rejected + 3);
    assert_eq!(
        (after.depth, after.next_seq),
        (before.depth, before.next_seq)
    );

    // Too large can never fit.
    let huge = Record {
        topic: "t".into(),
        payload: Bytes::from(vec![0; 9000]),
        time_ms: 0,
    };
    assert!(matches!(
        q.append("alarms", vec![huge]).await,
        Err(QueueError::TooLarge { .. })
    ));

    // Acking makes room once the acked segments are gone.
    for e in drain(&q) {
        q.ack(e.lane, e.seq);
    }
    q.append("alarms", vec![big(1), big(2), big(3)])
        .await
        .expect("room again");
    q.close().await;
}

#[tokio::test]
async fn drop_oldest_evicts_and_counts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = config(tmp.path());
    cfg.lanes[1].max_bytes = 8192;
    let (q, _) = Queue::open(cfg).expect("open");
    let total = 200u64;
    for i in 0..total {
        q.append("telemetry", vec![rec(i)])
            .await
            .expect("never refused");
    }
    let s = q.stats().lanes[1].clone();
    assert!(s.disk_bytes <= 8192, "{}", s.disk_bytes);
    assert!(s.dropped_full > 0);
    assert_eq!(s.depth + s.dropped_full, total);
    let got = drain(&q);
    assert_eq!(got.len() as u64, s.depth);
    let first = got[0].seq;
    assert_eq!(first, s.dropped_full + 1);
    for (k, e) in got.iter().enumerate() {
        assert_eq!(e.seq, first + k as u64);
        assert_eq!(e.record, rec(e.seq - 1));
    }
    assert_eq!(got.last().map(|e| e.seq), Some(total));
    q.close().await;
}

#[tokio::test]
async fn expired_records_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = config(tmp.path());
    cfg.lanes[1].max_age = Some(Duration::from_secs(3600));
    let (q, _) = Queue::open(cfg).expect("open");
    let old = |i| Record {
        time_ms: verge_net::now_ms() - 2 * 3600 * 1000,
        ..rec(i)
    };
    q.append("telemetry", vec![old(0), old(1), rec(2), old(3), rec(4)])
        .await
        .expect("append");
    let got = drain(&q);
    assert_eq!(seqs(&got), vec![(1, 3), (1, 5)]);
    let s = q.stats().lanes[1].clone();
    assert_eq!((s.dropped_ttl, s.depth, s.acked_upto), (3, 2, 2));
    q.ack(1, 3);
    assert_eq!(q.stats().lanes[1].acked_upto, 4);
    q.close().await;
}

#[tokio::test]
async fn acked_segments_are_deleted_and_seqs_never_reused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (q, _) = Queue::open(config(tmp.path())).expect("open");
    let id = q.id().to_owned();
    for chunk in 0..10 {
        q.append("telemetry", recs(chunk * 20..chunk * 20 + 20))
            .await
            .expect("append");
    }
    assert!(segments(tmp.path(), "telemetry").len() > 3);
    let got = drain(&q);
    assert_eq!(got.len(), 200);
    for e in got.iter().rev() {
        q.ack(e.lane, e.seq);
    }
    q.close().await;
    assert!(
        segments(tmp.path(), "telemetry").is_empty(),
        "all acked: all deleted"
    );
    drop(q);

    let (q, recovered) = Queue::open(config(tmp.path())).expect("reopen");
    assert_eq!(q.id(), id);
    assert_eq!(recovered.lanes[1].records, 0);
    assert!(drain(&q).is_empty());
    assert_eq!(
        q.append("telemetry", recs(0..2)).await.expect("append"),
        vec![201, 202]
    );
    assert_eq!(
        q.append("alarms", recs(0..1)).await.expect("append"),
        vec![1]
    );
    q.close().await;
}

#[tokio::test]
async fn unacked_records_survive_reopen() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (q, _) = Queue::open(config(tmp.path())).expect("open");
    q.append("telemetry", recs(0..100)).await.expect("append");
    let got = drain(&q);
    for e in &got[..40] {
        q.ack(e.lane, e.seq);
    }
    q.close().await;
    drop(q);
    let (q, recovered) = Queue::open(config(tmp.path())).expect("reopen");
    assert_eq!(recovered.lanes[1].records, 60);
    let s = q.stats().lanes[1].clone();
    assert_eq!((s.depth, s.acked_upto, s.next_seq), (60, 40, 101));
    let got = drain(&q);
    assert_eq!(got.first().map(|e| e.seq), Some(41));
    assert_eq!(got.len(), 60);
    assert_eq!(got[59].record, rec(99));
    q.close().await;
}

/// Write 10 records to the telemetry lane, close, and hand back the newest
/// segment's path.
async fn ten_records(dir: &Path) -> PathBuf {
    let mut cfg = config(dir);
    cfg.segment_bytes = 1 << 20;
    let (q, _) = Queue::open(cfg).expect("open");
    q.append("telemetry", recs(0..10)).await.expect("append");
    q.close().await;
    segments(dir, "telemetry").pop().expect("a segment")
}

async fn reopen_expecting(dir: &Path, want: u64) -> verge_queue::LaneRecovery {
    let (q, recovered) = Queue::open(config(dir)).expect("reopen");
    let got = drain(&q);
    assert_eq!(got.len() as u64, want);
    for (k, e) in got.iter().enumerate() {
        assert_eq!(e.seq, k as u64 + 1);
        assert_eq!(e.record, rec(k as u64), "record {k} intact");
    }
    assert_eq!(
        q.append("telemetry", recs(0..1)).await.expect("append"),
        vec![11]
    );
    q.close().await;
    recovered.lanes[1].clone()
}

#[tokio::test]
async fn torn_tail_garbage_is_cut() {
    let tmp = tempfile::tempdir().expect("tmp");
    let seg = ten_records(tmp.path()).await;
    let len = fs::metadata(&seg).expect("meta").len();
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .expect("open")
        .write_all(&[0xAB; 37])
        .expect("garbage");
    let rec = reopen_expecting(tmp.path(), 10).await;
    assert_eq!(rec.truncated_bytes, 37);
    // Cut back to the 10 records (the new one went to a new segment).
    assert_eq!(fs::metadata(&seg).expect("meta").len(), len);
}

#[tokio::test]
async fn torn_tail_half_record_is_cut() {
    let tmp = tempfile::tempdir().expect("tmp");
    let seg = ten_records(tmp.path()).await;
    let len = fs::metadata(&seg).expect("meta").len();
    let last = rec(9);
    let last_len = (8 + 18 + last.topic.len() + last.payload.len()) as u64;
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open")
        .set_len(len - last_len / 2)
        .expect("truncate");
    let rec = reopen_expecting(tmp.path(), 9).await;
    assert_eq!(rec.truncated_bytes, last_len - last_len / 2);
    assert!(!rec.corrupt);
    // The new record went to a new segment; the old one was cut at 9.
    assert_eq!(fs::metadata(&seg).expect("meta").len(), len - last_len);
}

#[tokio::test]
async fn flipped_byte_in_last_record_is_cut() {
    let tmp = tempfile::tempdir().expect("tmp");
    let seg = ten_records(tmp.path()).await;
    let mut bytes = fs::read(&seg).expect("read");
    let len = bytes.len();
    bytes[len - 3] ^= 0x01;
    fs::write(&seg, &bytes).expect("write");
    let last = rec(9);
    let last_len = (8 + 18 + last.topic.len() + last.payload.len()) as u64;
    let rec = reopen_expecting(tmp.path(), 9).await;
    assert_eq!(rec.truncated_bytes, last_len);
    assert!(rec.corrupt);
    assert_eq!(
        fs::metadata(&seg).expect("meta").len(),
        len as u64 - last_len
    );
}

#[tokio::test]
async fn corrupt_record_in_a_sealed_segment_is_reported_and_skipped() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (q, _) = Queue::open(config(tmp.path())).expect("open");
    q.append("telemetry", recs(0..200)).await.expect("append");
    q.close().await;
    drop(q);
    let segs = segments(tmp.path(), "telemetry");
    assert!(segs.len() >= 3);
    let mut bytes = fs::read(&segs[0]).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    fs::write(&segs[0], &bytes).expect("write");

    let (q, recovered) = Queue::open(config(tmp.path())).expect("reopen");
    let lane = &recovered.lanes[1];
    assert!(lane.corrupt);
    assert!(lane.unreadable_bytes > 0);
    assert_eq!(lane.truncated_bytes, 0);
    let got = drain(&q);
    assert!(got.len() < 200 && got.len() > 100, "{}", got.len());
    for w in got.windows(2) {
        assert!(w[0].seq < w[1].seq);
    }
    for e in &got {
        assert_eq!(e.record, rec(e.seq - 1));
    }
    assert_eq!(got.last().map(|e| e.seq), Some(200));
    // Acking everything readable moves the cursor over the lost records.
    for e in &got {
        q.ack(e.lane, e.seq);
    }
    assert_eq!(q.stats().lanes[1].acked_upto, 200);
    assert_eq!(q.stats().lanes[1].depth, 0);
    q.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_and_a_reader() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (q, _) = Queue::open(config(tmp.path())).expect("open");
    let per_task = 300u64;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                q.append("telemetry", vec![rec(t * per_task + i)])
                    .await
                    .expect("append");
            }
        }));
    }
    let reader = {
        let q = q.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut batch = Vec::new();
            while (got.len() as u64) < 8 * per_task {
                assert!(q.next_batch(64, &mut batch).await > 0);
                for e in batch.drain(..) {
                    q.ack(e.lane, e.seq);
                    got.push(e.seq);
                }
            }
            got
        })
    };
    for t in tasks {
        t.await.expect("appender");
    }
    let got = reader.await.expect("reader");
    assert_eq!(got, (1..=8 * per_task).collect::<Vec<_>>());
    assert_eq!(q.stats().depth, 0);
    q.close().await;
}
