//! Dry runs (`verge_rules::dry_run`) show what the live rule would do with
//! the same messages; regression tests named after the defects they pin.

use verge_rules::{Sample, dry_run};

fn samples(json: &str) -> Vec<Sample> {
    serde_json::from_str(json).expect("samples")
}

fn rows(sql: &str, json: &str) -> Vec<String> {
    let out = dry_run(sql, &samples(json)).expect("dry run");
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    out.rows.iter().map(verge_sql::Row::to_json).collect()
}

#[test]
fn dry_run_select_star_sorts_payload_keys() {
    let got = rows(
        r##"SELECT * FROM "#""##,
        r#"[{"topic": "t", "payload": {"z": 1, "a": {"y": 2, "b": 3}, "m": 10928588.983213553}}]"#,
    );
    assert_eq!(got, [r#"{"z":1,"a":{"y":2,"b":3},"m":10928588.983213553}"#]);
}

#[test]
fn dry_run_payload_is_read_like_a_live_one() {
    // A number beyond the FLOAT range reaches the rule as sent, and fails
    // there as it would live (not the whole request).
    let out = dry_run(
        r##"SELECT a FROM "#""##,
        &samples(
            r#"[{"topic": "t", "payload": {"a": 1e400}}, {"topic": "t", "payload": {"a": 2}}]"#,
        ),
    )
    .expect("dry run");
    assert_eq!(out.rows.len(), 1);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].sample, 0);
    assert_eq!(
        out.errors[0].error,
        "payload number is out of the FLOAT range (line 1, column 11)"
    );
}

#[test]
fn dry_run_count_window_flush_emits_partial_rows() {
    let got = rows(
        r##"SELECT count(*) AS n, sum(v) AS s FROM "#" GROUP BY COUNT(3)"##,
        r#"[{"topic": "t", "payload": {"v": 1}}, {"topic": "t", "payload": {"v": 2}},
            {"topic": "t", "payload": {"v": 3}}, {"topic": "t", "payload": {"v": 4}},
            {"topic": "t", "payload": {"v": 5}}]"#,
    );
    // Live, the last two messages make no row until a third one comes.
    assert_eq!(got, [r#"{"n":3,"s":6}"#]);
    // Time windows still open at the end are shown: live, time closes them.
    let got = rows(
        r##"SELECT count(*) AS n FROM "#" GROUP BY TUMBLING(10s)"##,
        r#"[{"topic": "t", "payload": {}, "time": 1000}, {"topic": "t", "payload": {}, "time": 2000}]"#,
    );
    assert_eq!(got, [r#"{"n":2}"#]);
}
