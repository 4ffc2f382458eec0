//! Property tests: no input makes the parser panic, and compiled queries never panic on any payload.

use proptest::prelude::*;
use verge_sql::{Event, Limits, Query};

const TOKENS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "HAVING",
    "AS",
    "AND",
    "OR",
    "NOT",
    "IN",
    "BETWEEN",
    "LIKE",
    "IS",
    "NULL",
    "TRUE",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "CAST",
    "INT",
    "JSON",
    "TIMESTAMP",
    "LATENESS",
    "TUMBLING",
    "HOPPING",
    "SLIDING",
    "SESSION",
    "COUNT",
    "(",
    ")",
    ",",
    "*",
    "+",
    "-",
    "/",
    "%",
    "||",
    "=",
    "<>",
    "<",
    ">=",
    ".",
    "[",
    "]",
    "0",
    "1",
    "-1",
    "2.5",
    "10s",
    "500ms",
    "'x'",
    "'%a_'",
    "\"devices/+/t\"",
    "\"#\"",
    "a",
    "b",
    "temp",
    "avg",
    "count",
    "sum",
    "percentile",
    "topic",
    "now",
    "window_start",
    "substring",
    "lpad",
    "round",
    "json_get",
    "coalesce",
    "9223372036854775807",
    "--",
    "/*",
    "'",
];

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TOKENS), 0..40).prop_map(|t| t.join(" "))
}

fn valid_prefix_soup() -> impl Strategy<Value = String> {
    token_soup().prop_map(|t| format!("SELECT a, b FROM \"t/#\" WHERE {t}"))
}

const BINARY_OPS: &[&str] = &[
    "+", "-", "*", "/", "%", "||", "=", "==", "<>", "!=", "<", "<=", ">", ">=", "AND", "OR",
];

/// A long or deeply nested expression of one shape (`n` repetitions).
fn long_expr(shape: u8, op: &str, n: usize) -> String {
    match shape {
        0 => vec!["a"; n + 1].join(&format!(" {op} ")),
        1 => format!("{}a{}", format!("(a {op} ").repeat(n), ")".repeat(n)),
        2 => format!("{}b", "NOT ".repeat(n)),
        3 => format!("{}a", "- ".repeat(n)),
        4 => format!(
            "{}a{}",
            "CASE WHEN b THEN ".repeat(n),
            " ELSE a END".repeat(n)
        ),
        5 => format!("{}a{}", "coalesce(a, ".repeat(n), ")".repeat(n)),
        6 => format!("{}a{}", "abs(".repeat(n), ")".repeat(n)),
        _ => format!("{}a{}", "(".repeat(n), ")".repeat(n)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Regression: long chains built iteratively by the Pratt loop used to overflow
    /// the stack of the recursive compiler and evaluator.
    #[test]
    fn long_chains_and_deep_nesting_never_overflow(
        shape in 0u8..8,
        op in prop::sample::select(BINARY_OPS),
        n in prop_oneof![1usize..140, 120usize..3000],
    ) {
        let e = long_expr(shape, op, n);
        for sql in [
            format!("SELECT {e} AS x FROM \"#\" WHERE ({e}) IS NOT NULL"),
            format!("SELECT count(*) AS c FROM \"#\" GROUP BY {e}, TUMBLING(1s) HAVING ({e}) IS NULL OR TRUE"),
        ] {
            if let Ok(q) = Query::parse(&sql) {
                let mut ex = q.start(Limits::default());
                let mut out = Vec::new();
                for p in [&br#"{"a":3,"b":true}"#[..], br#"{"a":"x","b":1}"#] {
                    let ev = Event { topic: "a/b", payload: p, client_id: "c", qos: 1, timestamp_ms: 5, user_properties: &[] };
                    let _ = ex.push(&ev, &mut out);
                }
                ex.advance(10_000, &mut out);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_random_text(s in ".{0,120}") {
        let _ = Query::parse(&s);
    }

    #[test]
    fn parse_never_panics_on_token_soup(s in token_soup()) {
        let _ = Query::parse(&s);
    }

    #[test]
    fn parse_never_panics_after_a_valid_prefix(s in valid_prefix_soup()) {
        let _ = Query::parse(&s);
    }

    #[test]
    fn queries_never_panic_on_payloads(payload in prop::collection::vec(any::<u8>(), 0..64), n in any::<i64>(), s in "[a-z%_]{0,8}") {
        let queries = [
            "SELECT *, a + b AS s, a / b AS d, a % b AS m, -a AS n, substring(s, a, b) AS x, lpad(s, b) AS p, round(a, b) AS r FROM \"#\" WHERE s LIKE s OR a > b",
            "SELECT format_time(a, s) AS f, year(a) AS y, abs(a) AS z, CAST(s AS INT) AS i, json_get(s, s) AS j, base64_decode(s) AS b FROM \"#\"",
            "SELECT s, sum(a) AS t, avg(a), stddev(a), percentile(a, 0.9), collect(a), min(s), max(s) FROM \"#\" GROUP BY s, HOPPING(10s, 3s)",
            "SELECT count(*) AS c, first(a) AS f FROM \"#\" TIMESTAMP BY a LATENESS 1s GROUP BY SESSION(5s)",
        ];
        let text = format!("{{\"a\":{n},\"b\":{},\"s\":\"{s}\"}}", n.wrapping_mul(7) % 100);
        for q in queries {
            let q = Query::parse(q).expect("compiles");
            let mut ex = q.start(Limits { max_groups: 4, max_rows_per_window: 8, max_open_windows: 8, ..Limits::default() });
            let mut out = Vec::new();
            for (i, p) in [&payload[..], text.as_bytes()].into_iter().enumerate() {
                let ev = Event { topic: "a/b", payload: p, client_id: "c", qos: 1, timestamp_ms: n.wrapping_add(i as i64), user_properties: &[] };
                let _ = ex.push(&ev, &mut out);
            }
            ex.advance(n.saturating_add(100_000), &mut out);
            ex.flush(&mut out);
            let _ = ex.stats();
        }
    }
}
