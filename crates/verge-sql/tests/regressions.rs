//! Regression tests for defects found by comparing the rule language with a
//! reference SQL engine; each test is named after the defect it pins.

mod common;

use common::{Rng, ev};
use verge_sql::{Limits, Query, Row, Value};

/// Runs a stateless query over one payload: its row, or the error text.
fn one(sql: &str, payload: &str) -> Result<Row, String> {
    let q = Query::parse(sql).map_err(|e| format!("compile: {e}"))?;
    let mut ex = q.start(Limits::default());
    let mut out = Vec::new();
    ex.push(&ev(payload, 0), &mut out)
        .map_err(|e| e.to_string())?;
    out.pop().ok_or_else(|| "no row".to_string())
}

/// The value of column `col` of the row `sql` gives for `payload`.
fn val(sql: &str, payload: &str, col: &str) -> Value {
    match one(sql, payload) {
        Ok(row) => row.get(col).cloned().unwrap_or(Value::Null),
        Err(e) => panic!("{sql} on {payload}: {e}"),
    }
}

#[test]
fn payload_floats_are_read_one_ulp_off() {
    let sql = r##"SELECT a, a = 10928588.983213553 AS eq FROM "#""##;
    let row = one(sql, r#"{"a": 10928588.983213553}"#).expect("row");
    assert_eq!(row.to_json(), r#"{"a":10928588.983213553,"eq":true}"#);

    // Random doubles written in their shortest form read back bit for bit.
    let q = Query::parse(r##"SELECT a FROM "#""##).expect("compiles");
    let mut ex = q.start(Limits::default());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut checked = 0;
    while checked < 20_000 {
        let x = f64::from_bits(rng.next());
        if !x.is_finite() {
            continue;
        }
        checked += 1;
        let text = format!("{x:e}");
        let payload = format!(r#"{{"a": {text}}}"#);
        let mut out = Vec::new();
        ex.push(&ev(&payload, 0), &mut out).expect("push");
        match out[0].get("a") {
            Some(Value::Float(y)) => assert_eq!(y.to_bits(), x.to_bits(), "payload {payload}"),
            other => panic!("payload {payload} gave {other:?}"),
        }
        let parsed = Value::from_json(text.as_bytes());
        assert!(
            matches!(parsed, Some(Value::Float(y)) if y.to_bits() == x.to_bits()),
            "{text} parsed as {parsed:?}"
        );
    }
}

#[test]
fn round_with_digits_is_inexact() {
    let r = |x: &str, n: i64| {
        let sql = format!(r##"SELECT round({x}, {n}) AS r FROM "#""##);
        val(&sql, "{}", "r")
    };
    assert_eq!(r("123456789", -5), Value::Float(123_500_000.0));
    assert_eq!(r("-946949363", 10), Value::Float(-946_949_363.0));
    assert_eq!(r("-123450000", -4), Value::Float(-123_450_000.0));
    assert_eq!(r("-123450000", -5), Value::Float(-123_500_000.0));
    assert_eq!(r("9223372036854775807", -18), Value::Float(9e18));
    // Halves of the decimal the double is written as round away from zero.
    assert_eq!(r("2.675", 2), Value::Float(2.68));
    assert_eq!(r("143.355", 2), Value::Float(143.36));
    assert_eq!(r("-143.355", 2), Value::Float(-143.36));
    assert_eq!(r("2.45", 1), Value::Float(2.5));
    assert_eq!(r("0.0049", 2), Value::Float(0.0));
    assert_eq!(r("0.005", 2), Value::Float(0.01));
    assert_eq!(r("99.99", 1), Value::Float(100.0));
    assert_eq!(r("123456.7", -2), Value::Float(123_500.0));
    assert_eq!(r("1e300", 2), Value::Float(1e300));
    assert_eq!(r("1.5e-300", 18), Value::Float(0.0));

    // Every integer and every n: the exact decimal answer, computed independently.
    let mut rng = Rng(42);
    for _ in 0..3_000 {
        let magnitude = (rng.next() >> (rng.next() % 64)) as i64;
        let i = if rng.next().is_multiple_of(2) {
            magnitude
        } else {
            magnitude.wrapping_neg()
        };
        let n = (rng.next() % 37) as i64 - 18;
        let want = if n >= 0 {
            i as f64
        } else {
            let p = 10i128.pow(n.unsigned_abs() as u32);
            let q = (i128::from(i).abs() + p / 2) / p * p;
            (if i < 0 { -q } else { q }) as f64
        };
        let q = Query::parse(r##"SELECT round(a, b) AS r FROM "#""##).expect("compiles");
        let mut ex = q.start(Limits::default());
        let mut out = Vec::new();
        let payload = format!(r#"{{"a":{i},"b":{n}}}"#);
        ex.push(&ev(&payload, 0), &mut out).expect("push");
        assert_eq!(
            out[0].get("r"),
            Some(&Value::Float(want)),
            "round({i}, {n})"
        );
    }
}

#[test]
fn int_min_remainder_minus_one_reports_overflow() {
    let sql = r##"SELECT -9223372036854775808 AS m, a % -1 AS r, mod(a, -1) AS md, -9223372036854775808 % -1 AS c FROM "#""##;
    let row = one(sql, r#"{"a": -9223372036854775808}"#).expect("row");
    assert_eq!(
        row.to_json(),
        r#"{"m":-9223372036854775808,"r":0,"md":0,"c":0}"#
    );
    // The quotient still overflows, and 2^63 without a minus is no INT.
    assert!(
        one(
            r##"SELECT a / -1 AS q FROM "#""##,
            r#"{"a": -9223372036854775808}"#
        )
        .is_err()
    );
    let e = Query::parse(r##"SELECT 9223372036854775808 AS x FROM "#""##).expect_err("too large");
    assert_eq!(
        e.to_string(),
        "line 1, column 8: number '9223372036854775808' is too large for a 64-bit integer"
    );
}

#[test]
fn int_float_comparison_loses_precision() {
    let payload = r#"{"a": 9007199254740993, "f": 9007199254740992.0}"#;
    let sql = r##"SELECT a = f AS eq, a < f AS lt, a > f AS gt, a <= f AS le, a >= f AS ge,
        a <> f AS ne, a IN (f) AS isin, nullif(a, f) AS ni, greatest(a, f) AS g, least(a, f) AS l,
        a BETWEEN f AND f AS btw, CASE a WHEN f THEN 'same' ELSE 'different' END AS cs FROM "#""##;
    let row = one(sql, payload).expect("row");
    assert_eq!(
        row.to_json(),
        r#"{"eq":false,"lt":false,"gt":true,"le":false,"ge":true,"ne":true,"isin":false,"ni":9007199254740993,"g":9007199254740993,"l":9007199254740992.0,"btw":false,"cs":"different"}"#
    );
    // min and max over a window compare the same way.
    let q = Query::parse(r##"SELECT min(v) AS lo, max(v) AS hi FROM "#" GROUP BY COUNT(2)"##)
        .expect("compiles");
    let mut ex = q.start(Limits::default());
    let mut out = Vec::new();
    ex.push(&ev(r#"{"v": 9007199254740992.0}"#, 0), &mut out)
        .expect("push");
    ex.push(&ev(r#"{"v": 9007199254740993}"#, 1), &mut out)
        .expect("push");
    assert_eq!(
        out[0].to_json(),
        r#"{"lo":9007199254740992.0,"hi":9007199254740993}"#
    );
}

#[test]
fn session_splits_messages_exactly_gap_apart() {
    let q = Query::parse(
        r##"SELECT count(*) AS n, window_start() AS ws, window_end() AS we FROM "#" GROUP BY SESSION(5s)"##,
    )
    .expect("compiles");
    let mut ex = q.start(Limits::default());
    let mut out = Vec::new();
    ex.push(&ev("{}", 1_000), &mut out).expect("push");
    ex.advance(6_000, &mut out);
    ex.push(&ev("{}", 6_000), &mut out).expect("push");
    assert!(out.is_empty(), "{out:?}");
    ex.push(&ev("{}", 11_001), &mut out).expect("push");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to_json(), r#"{"n":2,"ws":1000,"we":11000}"#);

    // Event time: the same rule, as the watermark moves.
    let q = Query::parse(r##"SELECT count(*) AS n FROM "#" TIMESTAMP BY ts GROUP BY SESSION(5s)"##)
        .expect("compiles");
    let mut ex = q.start(Limits::default());
    let mut out = Vec::new();
    for ts in [1_000, 6_000, 11_000, 16_001] {
        ex.push(&ev(&format!(r#"{{"ts":{ts}}}"#), 20_000), &mut out)
            .expect("push");
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to_json(), r#"{"n":3}"#);
}

#[test]
fn where_with_a_non_bool_value_silently_drops_the_message() {
    for (sql, what) in [
        (r##"SELECT 1 AS x FROM "#" WHERE flag"##, "WHERE"),
        (r##"SELECT NOT flag AS x FROM "#""##, "NOT"),
        (r##"SELECT flag AND true AS x FROM "#""##, "AND"),
        (r##"SELECT flag OR false AS x FROM "#""##, "OR"),
        (
            r##"SELECT CASE WHEN flag THEN 1 END AS x FROM "#""##,
            "WHEN",
        ),
    ] {
        let q = Query::parse(sql).expect("compiles");
        let mut ex = q.start(Limits::default());
        let mut out = Vec::new();
        let e = ex.push(&ev(r#"{"flag": 1}"#, 0), &mut out).expect_err(sql);
        assert_eq!(
            e.message,
            format!("{what} expects a boolean, found int in 'flag'"),
            "{sql}"
        );
        let s = ex.stats();
        assert_eq!((s.eval_errors, s.filtered), (1, 0), "{sql}");
        // NULL is no error: the condition is not true.
        ex.push(&ev(r#"{"flag": null}"#, 0), &mut out)
            .expect("null");
    }
    // HAVING: the row is dropped and counted as an error.
    let q = Query::parse(r##"SELECT max(v) AS m FROM "#" GROUP BY COUNT(1) HAVING m"##)
        .expect("compiles");
    let mut ex = q.start(Limits::default());
    let mut out = Vec::new();
    ex.push(&ev(r#"{"v": 3}"#, 0), &mut out).expect("push");
    assert!(out.is_empty());
    let s = ex.stats();
    assert_eq!(s.eval_errors, 1);
    assert_eq!(
        s.last_error.as_deref(),
        Some("HAVING expects a boolean, found int in 'm'")
    );
}

#[test]
fn coalesce_and_ifnull_evaluate_every_argument() {
    let sql = r##"SELECT coalesce(a, b / c) AS co, ifnull(a, b / c) AS ifn, coalesce(n, a, b / c) AS co3 FROM "#""##;
    let row = one(sql, r#"{"a": 5, "b": 1, "c": 0}"#).expect("row");
    assert_eq!(row.to_json(), r#"{"co":5,"ifn":5,"co3":5}"#);
    // An argument that is reached is still evaluated, errors included.
    let e = one(sql, r#"{"a": null, "b": 1, "c": 0}"#).expect_err("division by zero");
    assert_eq!(e, "division by zero in 'b / c'");
}

#[test]
fn float_overflow_is_null_in_functions_but_an_error_in_operators() {
    let sql =
        r##"SELECT exp(x) AS e, pow(x, y) AS p, ln(y) AS l, sqrt(y) AS s, x * y AS m FROM "#""##;
    assert_eq!(
        one(sql, r#"{"x": 0, "y": 4}"#).expect("row").to_json(),
        r#"{"e":1.0,"p":0.0,"l":1.3862943611198906,"s":2.0,"m":0}"#
    );
    for (payload, error) in [
        (
            r#"{"x": 710, "y": 1}"#,
            "exp(710) is not a finite number in 'exp(x)'",
        ),
        (
            r#"{"x": 2, "y": 1024}"#,
            "pow(2, 1024) is not a finite number in 'pow(x, y)'",
        ),
        (
            r#"{"x": 0, "y": -1}"#,
            "pow(0, -1) is not a finite number in 'pow(x, y)'",
        ),
        (
            r#"{"x": 1, "y": 0}"#,
            "ln(0) is not a finite number in 'ln(y)'",
        ),
        (
            r#"{"x": 1, "y": -1}"#,
            "ln(-1) is not a finite number in 'ln(y)'",
        ),
        (
            r#"{"x": -8, "y": 0.5}"#,
            "pow(-8, 0.5) is not a finite number in 'pow(x, y)'",
        ),
    ] {
        assert_eq!(one(sql, payload).expect_err(payload), error, "{payload}");
    }
    assert_eq!(
        one(
            r##"SELECT x * y AS m FROM "#""##,
            r#"{"x": 1e308, "y": 10}"#
        )
        .expect_err("overflow"),
        "float overflow in 'x * y'"
    );
    // Aggregates: a sum that would leave the FLOAT range fails that message.
    let q = Query::parse(r##"SELECT sum(v) AS s, avg(v) AS a FROM "#" GROUP BY TUMBLING(10s)"##)
        .expect("compiles");
    let mut ex = q.start(Limits::default());
    let mut out = Vec::new();
    ex.push(&ev(r#"{"v": 1e308}"#, 0), &mut out).expect("push");
    let e = ex
        .push(&ev(r#"{"v": 1e308}"#, 1), &mut out)
        .expect_err("overflow");
    assert_eq!(e.message, "float overflow in 'sum(v)'");
    ex.push(&ev(r#"{"v": -1e308}"#, 2), &mut out).expect("push");
    ex.push(&ev(r#"{"v": 0.5}"#, 3), &mut out).expect("push");
    ex.flush(&mut out);
    assert_eq!(out.len(), 1);
    assert!(
        matches!(out[0].get("s"), Some(Value::Float(s)) if *s == 0.5),
        "{:?}",
        out[0]
    );
}

#[test]
fn payload_integers_beyond_64_bits_and_minus_zero_are_floats() {
    let sql = r##"SELECT a, b, z, z = 0 AS zero FROM "#""##;
    let row = one(
        sql,
        r#"{"a": 18446744073709551615, "b": -9223372036854775809, "z": -0}"#,
    )
    .expect("row");
    assert_eq!(
        row.to_json(),
        r#"{"a":1.8446744073709552e+19,"b":-9.223372036854776e+18,"z":-0.0,"zero":true}"#
    );
}

#[test]
fn payload_nested_too_deeply_gives_silent_nulls() {
    let deep = format!(r#"{{"a": 1, "b": {}{}}}"#, "[".repeat(200), "]".repeat(200));
    let sql = r##"SELECT a, b FROM "#""##;
    let q = Query::parse(sql).expect("compiles");
    let mut ex = q.start(Limits::default());
    let mut out = Vec::new();
    let e = ex.push(&ev(&deep, 0), &mut out).expect_err("too deep");
    assert_eq!(
        e.message,
        "payload is nested more than 127 levels deep (line 1, column 141)"
    );
    assert!(out.is_empty());
    let s = ex.stats();
    assert_eq!(
        (s.eval_errors, s.last_error.as_deref()),
        (1, Some(e.message.as_str()))
    );
    // SELECT * reads every field, so it fails the same way; a query that does
    // not read the deep field does not.
    assert!(one(r##"SELECT * FROM "#""##, &deep).is_err());
    assert_eq!(
        one(r##"SELECT a FROM "#""##, &deep).expect("row").to_json(),
        r#"{"a":1}"#
    );

    // A number beyond the FLOAT range is the same kind of error, not NULL fields.
    let e = one(sql, r#"{"a": 1, "b": 1e400}"#).expect_err("out of range");
    assert_eq!(
        e,
        "payload number is out of the FLOAT range (line 1, column 19)"
    );
    // A payload that is not a JSON object still gives NULL fields, as documented.
    assert_eq!(
        one(sql, "not json").expect("row").to_json(),
        r#"{"a":null,"b":null}"#
    );
}

#[test]
fn constant_expressions_that_always_fail_are_accepted_at_creation() {
    for (sql, error) in [
        (
            r##"SELECT 1/0 AS x FROM "#""##,
            "line 1, column 8: division by zero in '1/0'",
        ),
        (
            r##"SELECT a, round(a, 19) AS r FROM "#""##,
            "line 1, column 20: round() digits must be between -18 and 18",
        ),
        (
            r##"SELECT lpad(s, 70000) AS p FROM "#""##,
            "line 1, column 16: lpad() length must be between 0 and 65536",
        ),
        (
            r##"SELECT rpad(s, -1, 'x') AS p FROM "#""##,
            "line 1, column 16: rpad() length must be between 0 and 65536",
        ),
        (
            r##"SELECT substring(s, 1, -2) AS p FROM "#""##,
            "line 1, column 24: substring() length must not be negative",
        ),
        (
            r##"SELECT a % 0 AS m FROM "#""##,
            "line 1, column 8: division by zero in 'a % 0'",
        ),
        (
            r##"SELECT a / 0.0 AS m FROM "#""##,
            "line 1, column 8: division by zero in 'a / 0.0'",
        ),
        (
            r##"SELECT mod(a, 0) AS m FROM "#""##,
            "line 1, column 15: division by zero",
        ),
        (
            r##"SELECT json_get(j, 'a..b') AS m FROM "#""##,
            "line 1, column 20: json_get() path 'a..b' is not valid",
        ),
        (
            r##"SELECT a FROM "#" WHERE a > sqrt(-1)"##,
            "line 1, column 29: sqrt(-1) is not a finite number in 'sqrt(-1)'",
        ),
        (
            r##"SELECT CAST('x' AS INT) + a AS m FROM "#""##,
            "line 1, column 8: cannot cast string \"x\" to INT in 'CAST('x' AS INT)'",
        ),
        (
            r##"SELECT upper(topic()) AS t, 9223372036854775807 + 1 AS m FROM "#""##,
            "line 1, column 29: integer overflow in '9223372036854775807 + 1'",
        ),
    ] {
        let e = Query::parse(sql).expect_err(sql);
        assert_eq!(e.to_string(), error, "{sql}");
    }
    // Constants that work are computed once; NULL arguments are no error.
    assert_eq!(
        val(r##"SELECT round(2.5) + 1 AS x FROM "#""##, "{}", "x"),
        Value::Int(4)
    );
    assert_eq!(
        val(
            r##"SELECT round(a, NULL) AS x FROM "#""##,
            r#"{"a":1.5}"#,
            "x"
        ),
        Value::Null
    );
    assert_eq!(
        val(r##"SELECT lpad('7', 3, '0') AS x FROM "#""##, "{}", "x"),
        Value::str("007")
    );
}

#[test]
fn time_functions_accept_some_float_epochs_but_not_others() {
    let sql = r##"SELECT year(t) AS y, format_time(t, '%Y-%m-%dT%H:%M:%S.%fZ') AS f, second(t) AS s FROM "#""##;
    for (t, y, f) in [
        ("266917550683.0", 1978, "1978-06-17T07:45:50.683Z"),
        ("1126681071262.1", 2005, "2005-09-14T06:57:51.262Z"),
        ("1126681071262.9", 2005, "2005-09-14T06:57:51.262Z"),
        ("-0.5", 1969, "1969-12-31T23:59:59.999Z"),
        ("1126681071262", 2005, "2005-09-14T06:57:51.262Z"),
    ] {
        let row = one(sql, &format!(r#"{{"t": {t}}}"#)).expect(t);
        assert_eq!(row.get("y"), Some(&Value::Int(y)), "{t}");
        assert_eq!(row.get("f"), Some(&Value::str(f)), "{t}");
    }
    let e = one(sql, r#"{"t": 1e19}"#).expect_err("out of range");
    assert_eq!(
        e,
        "year() expects milliseconds within the INT range, found 1e+19 in 'year(t)'"
    );
    // Event time reads FLOAT milliseconds the same way.
    let q = Query::parse(
        r##"SELECT window_start() AS ws FROM "#" TIMESTAMP BY t GROUP BY TUMBLING(1s)"##,
    )
    .expect("compiles");
    let mut ex = q.start(Limits::default());
    let mut out = Vec::new();
    ex.push(&ev(r#"{"t": -0.5}"#, 0), &mut out).expect("push");
    ex.flush(&mut out);
    assert_eq!(out[0].to_json(), r#"{"ws":-1000}"#);
}

#[test]
fn parse_time_rejects_rfc3339_without_seconds() {
    let p = |s: &str| {
        one(
            &format!(r##"SELECT parse_time('{s}') AS t FROM "#""##),
            "{}",
        )
    };
    for (text, ms) in [
        ("2024-01-01T10:00Z", 1_704_103_200_000),
        ("2024-01-01T10:00", 1_704_103_200_000),
        ("2024-01-01 10:00+01:00", 1_704_099_600_000),
        ("2024-01-01t10:00:00z", 1_704_103_200_000),
        ("2024-01-01T10:00:00.123456789123Z", 1_704_103_200_123),
        ("2024-01-01", 1_704_067_200_000),
    ] {
        assert_eq!(
            p(text).expect(text).get("t"),
            Some(&Value::Int(ms)),
            "{text}"
        );
    }
    for bad in [
        "2024-01-01T10Z",
        "2024-01-01T10:00.5Z",
        "2024-01-01T10:0Z",
        "2024-01-01T10:00:00+0100",
        "2024-01-01Z",
    ] {
        assert!(p(bad).is_err(), "{bad}");
    }
}
