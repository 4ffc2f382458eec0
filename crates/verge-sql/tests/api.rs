//! The public API as the rules runtime uses it: sources, deadlines, rows by name, stats, errors.

mod common;

use common::ev;
use verge_sql::{Limits, Query, SqlError, Value};

#[test]
fn query_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Query>();
    let q = Query::parse(r##"select a from "x/+", 'y/#'"##).expect("compiles");
    assert_eq!(q.sources(), ["x/+", "y/#"]);
    assert!(!q.is_aggregate());
    assert_eq!(q.columns(), ["a"]);
    assert_eq!(q.clone().sql(), q.sql());
}

#[test]
fn parse_errors_expose_line_and_column() {
    let e: SqlError = Query::parse("SELECT a\nFROM \"t\"\nWHERE a >").expect_err("incomplete");
    assert_eq!((e.line, e.column), (3, 10));
    assert_eq!(
        e.message,
        "expected an expression after '>', found end of input"
    );
    let _: &dyn std::error::Error = &e;
}

#[test]
fn tumbling_deadlines_drive_advance() {
    let q = Query::parse(r##"SELECT device, count(*) AS n FROM "devices/+/telemetry" GROUP BY device, TUMBLING(10s)"##)
        .expect("compiles");
    assert!(q.is_aggregate());
    let mut ex = q.start(Limits::default());
    assert_eq!(ex.next_deadline(), None);
    let mut out = Vec::new();
    ex.push(&ev(r##"{"device":"d1"}"##, 1_500), &mut out)
        .expect("push");
    assert!(out.is_empty());
    assert_eq!(ex.next_deadline(), Some(10_000));
    let s = ex.stats();
    assert_eq!((s.open_windows, s.open_groups, s.messages_in), (1, 1, 1));
    ex.advance(9_999, &mut out);
    assert!(out.is_empty());
    ex.advance(10_000, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].get("device"), Some(&Value::str("d1")));
    assert_eq!(out[0].get("n"), Some(&Value::Int(1)));
    assert_eq!(out[0].to_json(), r##"{"device":"d1","n":1}"##);
    assert_eq!(ex.next_deadline(), None);
    assert_eq!(ex.stats().rows_out, 1);
}

#[test]
fn session_deadline_follows_the_latest_message() {
    let q =
        Query::parse(r##"SELECT count(*) AS n FROM "#" GROUP BY SESSION(5s)"##).expect("compiles");
    let mut ex = q.start(Limits::default());
    let mut out = Vec::new();
    ex.push(&ev("{}", 1_000), &mut out).expect("push");
    assert_eq!(ex.next_deadline(), Some(6_001));
    ex.push(&ev("{}", 4_000), &mut out).expect("push");
    // The cached deadline may be early; advancing to it emits nothing and moves it.
    ex.advance(6_001, &mut out);
    assert!(out.is_empty());
    assert_eq!(ex.next_deadline(), Some(9_001));
    ex.advance(9_000, &mut out);
    assert!(out.is_empty());
    ex.advance(9_001, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(ex.next_deadline(), None);
}

#[test]
fn event_time_and_count_windows_need_no_timer() {
    for sql in [
        r##"SELECT count(*) AS n FROM "#" TIMESTAMP BY ts GROUP BY TUMBLING(1s)"##,
        r##"SELECT count(*) AS n FROM "#" GROUP BY COUNT(2)"##,
        r##"SELECT count(*) AS n FROM "#" GROUP BY SLIDING(1s)"##,
    ] {
        let q = Query::parse(sql).expect("compiles");
        let mut ex = q.start(Limits::default());
        let mut out = Vec::new();
        ex.push(&ev(r##"{"ts":5}"##, 1), &mut out).expect("push");
        assert_eq!(ex.next_deadline(), None, "{sql}");
    }
}

#[test]
fn eval_errors_are_counted_and_named() {
    let q = Query::parse(r##"SELECT temperature + unit AS x FROM "#""##).expect("compiles");
    let mut ex = q.start(Limits::default());
    let mut out = Vec::new();
    let e = ex
        .push(&ev(r##"{"temperature":1,"unit":"C"}"##, 0), &mut out)
        .expect_err("type error");
    assert_eq!(
        e.to_string(),
        "cannot add int and string in 'temperature + unit'"
    );
    let s = ex.stats();
    assert_eq!(s.eval_errors, 1);
    assert_eq!(
        s.last_error.as_deref(),
        Some("cannot add int and string in 'temperature + unit'")
    );
}

fn rows_json(rows: &[verge_sql::Row]) -> Vec<String> {
    rows.iter().map(verge_sql::Row::to_json).collect()
}

#[test]
fn flush_closes_every_window_kind_and_leaves_the_executor_empty() {
    let cases: &[(&str, &[i64], &[&str])] = &[
        (
            "TUMBLING(10s)",
            &[1000, 2000],
            &[r#"{"n":2,"ws":0,"we":10000}"#],
        ),
        (
            "HOPPING(10s, 5s)",
            &[1000],
            &[
                r#"{"n":1,"ws":-5000,"we":5000}"#,
                r#"{"n":1,"ws":0,"we":10000}"#,
            ],
        ),
        // SLIDING rows come per message; flush only releases the buffers.
        ("SLIDING(10s)", &[1000], &[]),
        (
            "SESSION(5s)",
            &[1000, 3000],
            &[r#"{"n":2,"ws":1000,"we":8000}"#],
        ),
        // A COUNT window that never filled emits nothing, as it would live.
        ("COUNT(3)", &[1000, 2000], &[]),
        // Every message already is in a row: nothing more.
        ("COUNT(2, 1)", &[1000, 2000, 3000], &[]),
    ];
    for event_time in [false, true] {
        for (window, times, want) in cases {
            let ts = if event_time { "TIMESTAMP BY ts " } else { "" };
            let sql = format!(
                "SELECT count(*) AS n, window_start() AS ws, window_end() AS we FROM \"#\" {ts}GROUP BY {window}"
            );
            let q = Query::parse(&sql).expect("compiles");
            let mut ex = q.start(Limits::default());
            let mut rows = Vec::new();
            for t in *times {
                ex.push(&ev(&format!(r#"{{"ts":{t}}}"#), *t), &mut rows)
                    .expect("push");
            }
            rows.clear();
            ex.flush(&mut rows);
            assert_eq!(rows_json(&rows), *want, "{window}, event time {event_time}");
            let s = ex.stats();
            assert_eq!(
                (s.open_windows, s.open_groups, ex.next_deadline()),
                (0, 0, None),
                "{window}: not empty after flush"
            );
            rows.clear();
            ex.flush(&mut rows);
            assert!(rows.is_empty(), "{window}: a second flush emits nothing");
        }
    }
}

#[test]
fn far_future_event_time_is_dropped_and_does_not_poison_the_watermark() {
    let q =
        Query::parse(r##"SELECT count(*) AS n FROM "#" TIMESTAMP BY ts GROUP BY TUMBLING(10s)"##)
            .expect("compiles");
    let mut ex = q.start(Limits::default());
    let mut rows = Vec::new();
    for ts in [1i64, 3_155_760_000_000_000, 20_000] {
        ex.push(&ev(&format!(r#"{{"ts":{ts}}}"#), 25_000), &mut rows)
            .expect("push");
    }
    let s = ex.stats();
    assert_eq!((s.dropped_future, s.dropped_late), (1, 0));
    assert_eq!(s.watermark, Some(20_000));
    assert_eq!(rows_json(&rows), [r#"{"n":1}"#]);
    // Within max_future_ms (1 hour by default) of processing time is fine.
    ex.push(&ev(r#"{"ts":3625000}"#, 25_000), &mut rows)
        .expect("push");
    assert_eq!(ex.stats().dropped_future, 1);
    let limits = Limits {
        max_future_ms: 0,
        ..Limits::default()
    };
    let mut ex = q.start(limits);
    ex.push(&ev(r#"{"ts":25001}"#, 25_000), &mut rows)
        .expect("push");
    assert_eq!(ex.stats().dropped_future, 1);
}

#[test]
fn window_arithmetic_at_extreme_durations_and_times_does_not_overflow() {
    // Durations are capped at 365 days, at the duration.
    for w in [
        "TUMBLING(9223372036854775807ms)",
        "HOPPING(9223372036854775807ms, 9223372036854775807ms)",
        "SLIDING(9223372036854775807ms)",
        "SESSION(366d)",
    ] {
        let e =
            Query::parse(&format!("SELECT count(*) AS n FROM \"#\" GROUP BY {w}")).expect_err(w);
        assert_eq!(
            (e.column, e.message.as_str()),
            (
                u32::try_from(w.find('(').expect("paren") + 41).expect("small"),
                "a window, hop, gap or lateness duration must be at most 365 days (365d)"
            ),
            "{w}"
        );
    }
    let times = [
        i64::MIN,
        -5,
        0,
        5,
        i64::MAX,
        -3_155_760_000_000_000,
        3_155_760_000_000_000,
    ];
    for w in [
        "TUMBLING(365d)",
        "HOPPING(365d, 1d)",
        "SLIDING(365d)",
        "SESSION(365d)",
        "COUNT(2)",
    ] {
        for ts in ["", "TIMESTAMP BY ts LATENESS 365d "] {
            let sql = format!(
                "SELECT count(*) AS n, sum(v) AS s, window_start() AS a, window_end() AS b FROM \"#\" {ts}GROUP BY {w}"
            );
            let q = Query::parse(&sql).expect("compiles");
            let mut ex = q.start(Limits::default());
            let mut rows = Vec::new();
            for &t in &times {
                for &e in &times {
                    let _ = ex.push(&ev(&format!(r#"{{"ts":{e},"v":1}}"#), t), &mut rows);
                }
                ex.advance(t, &mut rows);
            }
            ex.flush(&mut rows);
            let _ = ex.stats();
        }
    }
}

#[test]
fn arithmetic_on_extreme_numbers_is_an_error_not_a_panic() {
    let q = Query::parse(
        r##"SELECT abs(a) AS x1, -a AS x2, a % b AS x3, a / b AS x4, round(f, 18) AS x5,
           substring(s, a, c) AS x6, pow(f, f) AS x7, a * a AS x8, ceil(f) AS x9,
           CAST(f AS INT) AS x10, year(a) AS x11, format_time(c, '%Y') AS x12, mod(a, b) AS x13,
           a - c AS x14, s[9223372036854775807] AS x15 FROM "#""##,
    )
    .expect("compiles");
    let mut ex = q.start(Limits::default());
    let mut rows = Vec::new();
    let payload = format!(
        r#"{{"a":{},"b":-1,"c":{},"f":1e308,"s":"abc"}}"#,
        i64::MIN,
        i64::MAX
    );
    let e = ex.push(&ev(&payload, 0), &mut rows).expect_err("overflow");
    assert_eq!(e.message, "integer overflow in 'abs(a)'");
    for expr in [
        "-a",
        "a / b",
        "a * a",
        "a - c",
        "ceil(f)",
        "CAST(f AS INT)",
        "pow(f, f)",
    ] {
        let q = Query::parse(&format!("SELECT {expr} AS x FROM \"#\"")).expect("compiles");
        let mut ex = q.start(Limits::default());
        assert!(ex.push(&ev(&payload, 0), &mut rows).is_err(), "{expr}");
    }
    for expr in [
        "round(f, 18)",
        "substring(s, a, c)",
        "year(a)",
        "format_time(c, '%Y')",
        "lpad(s, 65536)",
        "a % b",
        "mod(a, b)",
    ] {
        let q = Query::parse(&format!("SELECT {expr} AS x FROM \"#\"")).expect("compiles");
        let mut ex = q.start(Limits::default());
        ex.push(&ev(&payload, 0), &mut rows).expect(expr);
    }
}

#[test]
fn type_errors_never_name_the_internal_type_any() {
    let e = Query::parse(r#"SELECT "é" + 'x' AS y FROM "t/#""#).expect_err("string");
    assert_eq!(e.message, "cannot add a payload field and string");
    let e = Query::parse(r#"SELECT json_get(p, 'a') * TRUE AS y FROM "t/#""#).expect_err("bool");
    assert_eq!(
        e.message,
        "cannot multiply a value of unknown type and bool"
    );
}
