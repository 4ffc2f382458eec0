//! The store through its public API on a temporary directory: round trips
//! across reopen, downsampling, latest values, retention, the disk bound,
//! torn tails, bad queries and non-numeric values.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::OpenOptions;
use std::path::Path;
use std::time::Duration;

use verge_net::now_ms;
use verge_tsdb::{Point, RangeQuery, Tsdb, TsdbConfig, TsdbError, Value};

const HOUR: i64 = 3_600_000;

fn cfg(dir: &Path) -> TsdbConfig {
    TsdbConfig {
        dir: dir.to_path_buf(),
        ..TsdbConfig::default()
    }
}

fn p(device: &str, metric: &str, time_ms: i64, value: Value) -> Point {
    Point {
        device: device.into(),
        metric: metric.into(),
        time_ms,
        value,
    }
}

fn q(device: &str, metric: &str, from_ms: i64, to_ms: i64) -> RangeQuery {
    RangeQuery {
        device: device.into(),
        metric: metric.into(),
        from_ms,
        to_ms,
        limit: 0,
    }
}

fn chunk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("chunk-")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn write_query_reopen_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let base = now_ms() - 2 * HOUR;
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    // Out of order, across two chunks, two series.
    let mut pts = Vec::new();
    for i in (0..100).rev() {
        pts.push(p("d1", "temp", base + i * 60_000, Value::Number(i as f64)));
        pts.push(p(
            "d2",
            "temp",
            base + i * 60_000,
            Value::Number(-(i as f64)),
        ));
    }
    db.write(&pts).unwrap();
    let check = |db: &Tsdb| {
        let got = db
            .range(&q("d1", "temp", base, base + 99 * 60_000))
            .unwrap();
        assert_eq!(got.len(), 100);
        assert!(got.windows(2).all(|w| w[0].time_ms < w[1].time_ms));
        assert_eq!(got[5].value, Value::Number(5.0));
        let some = db
            .range(&q("d2", "temp", base + 10 * 60_000, base + 19 * 60_000))
            .unwrap();
        assert_eq!(some.len(), 10);
        assert_eq!(some[0].value, Value::Number(-10.0));
        let mut limited = q("d1", "temp", base, base + 99 * 60_000);
        limited.limit = 7;
        let got = db.range(&limited).unwrap();
        assert_eq!(got.len(), 7);
        assert_eq!(got[6].time_ms, base + 6 * 60_000);
        assert!(db.range(&q("d3", "temp", 0, base)).unwrap().is_empty());
        assert_eq!(
            db.series(),
            [("d1".into(), "temp".into()), ("d2".into(), "temp".into())]
        );
    };
    check(&db); // from the buffers
    db.close();
    assert!(matches!(db.write(&pts), Err(TsdbError::Closed)));
    drop(db);
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    check(&db); // from the files
    let s = db.stats();
    assert_eq!(s.series, 2);
    assert!(s.chunks >= 2, "{s:?}");
    assert!(s.disk_bytes > 200 * 20, "{s:?}");
    assert_eq!(s.torn_bytes_cut, 0);
}

#[test]
fn flusher_writes_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(TsdbConfig {
        flush_interval: Duration::from_millis(20),
        ..cfg(dir.path())
    })
    .unwrap();
    db.write(&[p("d", "m", now_ms(), Value::Number(1.0))])
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while chunk_files(dir.path())
        .iter()
        .all(|f| std::fs::metadata(f).unwrap().len() == 0)
    {
        assert!(std::time::Instant::now() < deadline, "nothing flushed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn downsampling_math() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let base = (now_ms() - HOUR) / 10_000 * 10_000;
    // Bucket 0: 1, 2, 6; bucket 1: empty; bucket 2: 10 and a string.
    db.write(&[
        p("d", "v", base + 1_000, Value::Number(1.0)),
        p("d", "v", base + 5_000, Value::Number(2.0)),
        p("d", "v", base + 9_999, Value::Number(6.0)),
        p("d", "v", base + 20_000, Value::Number(10.0)),
        p("d", "v", base + 21_000, Value::Text("n/a".into())),
        p("d", "v", base + 35_000, Value::Bool(true)),
    ])
    .unwrap();
    let b = db
        .downsample(&q("d", "v", base, base + 39_999), 10_000)
        .unwrap();
    assert_eq!(b.len(), 2, "{b:?}");
    assert_eq!(b[0].start_ms, base);
    assert_eq!(
        (b[0].count, b[0].avg, b[0].min, b[0].max),
        (3, 3.0, 1.0, 6.0)
    );
    assert_eq!(b[0].non_numeric, 0);
    assert_eq!(b[1].start_ms, base + 20_000);
    assert_eq!(
        (b[1].count, b[1].avg, b[1].min, b[1].max),
        (1, 10.0, 10.0, 10.0)
    );
    assert_eq!(b[1].non_numeric, 1);
    // A range starting mid-bucket keeps aligned bucket starts and only the
    // points inside the range.
    let b = db
        .downsample(&q("d", "v", base + 2_000, base + 25_000), 10_000)
        .unwrap();
    assert_eq!(b[0].start_ms, base);
    assert_eq!((b[0].count, b[0].avg), (2, 4.0));
    // Same after reopen.
    drop(db);
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let b = db
        .downsample(&q("d", "v", base, base + 39_999), 5_000)
        .unwrap();
    let starts: Vec<i64> = b.iter().map(|b| b.start_ms - base).collect();
    assert_eq!(starts, [0, 5_000, 20_000]);
}

#[test]
fn latest_values_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    {
        let db = Tsdb::open(cfg(dir.path())).unwrap();
        db.write(&[
            p("d1", "t", now - 2 * HOUR, Value::Number(1.0)),
            p("d1", "t", now - 1000, Value::Number(2.0)),
            p("d1", "t", now - HOUR, Value::Number(3.0)), // older, arrives last
            p("d1", "ok", now - 10, Value::Bool(true)),
            p("d2", "s", now - 5, Value::Json("{\"a\":[1,2]}".into())),
        ])
        .unwrap();
        let l = db.latest(Some("d1"));
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[1].metric.as_str(), &l[1].value),
            ("t", &Value::Number(2.0))
        );
    }
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let l = db.latest(None);
    assert_eq!(l.len(), 3);
    assert_eq!(l[0].device, "d1");
    assert_eq!(l[0].metric, "ok");
    assert_eq!(l[0].value, Value::Bool(true));
    assert_eq!(l[1].value, Value::Number(2.0));
    assert_eq!(l[1].time_ms, now - 1000);
    assert_eq!(serde_json::to_string(&l[2].value).unwrap(), "{\"a\":[1,2]}");
    assert!(db.latest(Some("nobody")).is_empty());
}

#[test]
fn retention_deletes_old_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    {
        let db = Tsdb::open(cfg(dir.path())).unwrap();
        db.write(&[
            p("d", "t", now - 5 * 86_400_000, Value::Number(1.0)),
            p("d", "t", now - 3 * 86_400_000, Value::Number(2.0)),
            p("d", "t", now - 1000, Value::Number(3.0)),
            // Older than the retention: refused.
            p("d", "t", now - 8 * 86_400_000, Value::Number(0.0)),
            // Too far ahead of the clock: refused.
            p("d", "t", now + 2 * 86_400_000, Value::Number(0.0)),
        ])
        .unwrap();
        assert_eq!(db.stats().points_dropped, 2);
        assert_eq!(db.stats().chunks, 3);
        // Four days later the first chunk has passed the 7d retention.
        db.expire(now + 4 * 86_400_000);
        let s = db.stats();
        assert_eq!((s.chunks, s.chunks_expired, s.points_deleted), (2, 1, 1));
    }
    assert_eq!(chunk_files(dir.path()).len(), 2);
    // Reopening with a shorter retention expires at open.
    let db = Tsdb::open(TsdbConfig {
        retention: Duration::from_secs(2 * 86_400),
        ..cfg(dir.path())
    })
    .unwrap();
    let s = db.stats();
    assert_eq!((s.chunks, s.chunks_expired), (1, 1));
    assert_eq!(chunk_files(dir.path()).len(), 1);
    let all = db.range(&q("d", "t", 0, now)).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].value, Value::Number(3.0));
}

#[test]
fn retention_changes_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    db.write(&[
        p("d", "t", now - 3 * 86_400_000, Value::Number(1.0)),
        p("d", "t", now - 1000, Value::Number(2.0)),
    ])
    .unwrap();
    // Less than one chunk: refused, nothing changes.
    let e = db.set_retention(Duration::from_secs(1)).unwrap_err();
    assert!(e.to_string().contains("retention"), "{e}");
    assert_eq!(db.retention(), Duration::from_secs(7 * 86_400));
    db.expire(now);
    assert_eq!(db.stats().chunks, 2);
    // Two days: the three-day-old chunk goes at the next pass.
    db.set_retention(Duration::from_secs(2 * 86_400)).unwrap();
    assert_eq!(db.retention(), Duration::from_secs(2 * 86_400));
    db.expire(now);
    let s = db.stats();
    assert_eq!((s.chunks, s.chunks_expired), (1, 1));
}

#[test]
fn max_bytes_evicts_oldest_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(TsdbConfig {
        max_bytes: 1 << 20,
        ..cfg(dir.path())
    })
    .unwrap();
    let base = (now_ms() - 100 * HOUR) / HOUR * HOUR;
    // 100 hours × 2000 points × ~27 bytes ≈ 5 MiB through a 1 MiB bound.
    for h in 0..100 {
        let pts: Vec<Point> = (0..2000)
            .map(|i| p("d", "t", base + h * HOUR + i, Value::Number(i as f64)))
            .collect();
        db.write(&pts).unwrap();
        assert!(db.stats().disk_bytes <= 1 << 20);
    }
    db.flush().unwrap();
    let s = db.stats();
    assert!(s.chunks_evicted > 50, "{s:?}");
    assert_eq!(s.chunks + s.chunks_evicted, 100, "{s:?}");
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 1 << 20, "{on_disk}");
    // The newest data is what is left.
    let last = db
        .range(&q("d", "t", base + 99 * HOUR, base + 100 * HOUR))
        .unwrap();
    assert_eq!(last.len(), 2000);
    assert!(
        db.range(&q("d", "t", base, base + HOUR - 1))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn torn_tail_is_cut_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let t = now_ms() / HOUR * HOUR;
    {
        let db = Tsdb::open(cfg(dir.path())).unwrap();
        let pts: Vec<Point> = (0..10)
            .map(|i| p("d", "t", t + i, Value::Number(i as f64)))
            .collect();
        db.write(&pts).unwrap();
    }
    let file = chunk_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    // Half of the last record was written.
    OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let got = db.range(&q("d", "t", t, t + 100)).unwrap();
    assert_eq!(got.len(), 9);
    let record = len / 10;
    assert_eq!(db.stats().torn_bytes_cut, record - 10);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 9 * record);
    // Appending after the cut makes a valid file again.
    db.write(&[p("d", "t", t + 50, Value::Number(50.0))])
        .unwrap();
    drop(db);
    // Now corrupt a byte in the last record's value: its checksum fails.
    let mut bytes = std::fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let got = db.range(&q("d", "t", t, t + 100)).unwrap();
    assert_eq!(got.len(), 9);
    assert_eq!(db.stats().torn_bytes_cut, record);
    assert_eq!(db.latest(None)[0].time_ms, t + 8);
}

#[test]
fn bad_queries_are_errors_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let db = Tsdb::open(cfg(dir.path())).unwrap();
    let param = |r: Result<_, TsdbError>| match r {
        Err(TsdbError::InvalidQuery { param, .. }) => param,
        other => panic!("expected an invalid query, got {:?}", other.map(|_: ()| ())),
    };
    assert_eq!(param(db.range(&q("d", "t", 10, 5)).map(drop)), "from");
    assert_eq!(param(db.range(&q("", "t", 0, 5)).map(drop)), "device");
    assert_eq!(param(db.range(&q("d", "", 0, 5)).map(drop)), "metric");
    let mut big = q("d", "t", 0, 5);
    big.limit = 100_001;
    assert_eq!(param(db.range(&big).map(drop)), "limit");
    assert_eq!(
        param(db.downsample(&q("d", "t", 0, 5), 0).map(drop)),
        "bucket"
    );
    let e = db.downsample(&q("d", "t", 0, 10_000_000), 1).unwrap_err();
    assert!(e.to_string().contains("buckets"), "{e}");
    assert!(e.to_string().starts_with("bucket:"), "{e}");
}

#[test]
fn bad_config_names_the_key() {
    let e = Tsdb::open(TsdbConfig::default()).err().unwrap();
    assert_eq!(e.to_string(), "dir: not set");
    let dir = tempfile::tempdir().unwrap();
    let e = Tsdb::open(TsdbConfig {
        max_bytes: 10,
        ..cfg(dir.path())
    })
    .err()
    .unwrap();
    assert!(e.to_string().starts_with("max_bytes:"), "{e}");
    let parsed: TsdbConfig =
        serde_json::from_str(r#"{"dir":"/x","chunk":"30m","retention":"2d"}"#).unwrap();
    assert_eq!(parsed.chunk, Duration::from_secs(1800));
    assert!(serde_json::from_str::<TsdbConfig>(r#"{"nope":1}"#).is_err());
}

#[test]
fn non_numeric_values_and_refused_points() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let db = Tsdb::open(TsdbConfig {
        max_series: 2,
        ..cfg(dir.path())
    })
    .unwrap();
    db.write(&[
        p("d", "state", now - 3, Value::Text("open".into())),
        p("d", "state", now - 2, Value::Bool(false)),
        p(
            "d",
            "state",
            now - 1,
            Value::Json("[1,{\"x\":null}]".into()),
        ),
        p("d", "n", now, Value::Number(f64::NAN)), // refused
        p("d", "other", now, Value::Number(1.0)),
        p("d", "third", now, Value::Number(1.0)), // over max_series
        p("", "x", now, Value::Number(1.0)),      // no device
        p("d", "x", now, Value::Text("a".repeat(70_000))), // too big
    ])
    .unwrap();
    let got = db.range(&q("d", "state", 0, now)).unwrap();
    let values: Vec<String> = got
        .iter()
        .map(|s| serde_json::to_string(&s.value).unwrap())
        .collect();
    assert_eq!(values, ["\"open\"", "false", "[1,{\"x\":null}]"]);
    assert!(
        db.downsample(&q("d", "state", now - 10, now), 1000)
            .unwrap()
            .is_empty()
    );
    let s = db.stats();
    assert_eq!((s.points_written, s.points_dropped, s.series), (4, 4, 2));
}
