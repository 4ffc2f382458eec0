//! Regression tests for resource limits: expression depth, size and SQL length
//! (the compiler and evaluator recurse through the syntax tree, so a deep tree
//! must be rejected at parse time instead of overflowing the stack).

use verge_sql::{Event, Limits, Query};

/// The deepest expression tree accepted (levels).
const MAX_DEPTH: usize = 128;

fn ev(payload: &str) -> Event<'_> {
    Event {
        topic: "t/x",
        payload: payload.as_bytes(),
        client_id: "c",
        qos: 0,
        timestamp_ms: 1,
        user_properties: &[],
    }
}

/// An expression of exactly `depth` levels of each recursive shape.
fn shapes(depth: usize) -> Vec<(&'static str, String)> {
    let n = depth - 1; // operators/wrappers around one leaf
    let chain = |op: &str, leaf: &str| vec![leaf; n + 1].join(op);
    let mut v = vec![
        ("left-deep +", chain(" + ", "a")),
        ("left-deep *", chain(" * ", "a")),
        ("left-deep ||", chain(" || ", "s")),
        ("left-deep AND", chain(" AND ", "b")),
        ("left-deep OR", chain(" OR ", "b")),
        ("left-deep =", chain(" = ", "b")),
        (
            "right-deep +",
            format!("{}a{}", "(a + ".repeat(n), ")".repeat(n)),
        ),
        (
            "unary minus",
            format!("{}a", "-".repeat(n).replace('-', "- ")),
        ),
        ("NOT", format!("{}b", "NOT ".repeat(n))),
        ("abs()", format!("{}a{}", "abs(".repeat(n), ")".repeat(n))),
        (
            "CASE",
            format!("{}a{}", "CASE WHEN b THEN ".repeat(n), " END".repeat(n)),
        ),
        ("IS NULL", format!("a{}", " IS NULL = b".repeat(n / 2))),
    ];
    // Parentheses add no tree level, but their nesting is limited the same way.
    v.push((
        "parentheses",
        format!("{}a{}", "(".repeat(depth), ")".repeat(depth)),
    ));
    v
}

fn run(expr: &str) -> Result<(), String> {
    let sql = format!("SELECT {expr} AS x FROM \"t/#\"");
    let q = Query::parse(&sql).map_err(|e| e.to_string())?;
    let mut ex = q.start(Limits::default());
    let mut out = Vec::new();
    let _ = ex.push(&ev(r#"{"a":1,"b":true,"s":"x"}"#), &mut out);
    let agg = format!(
        "SELECT count(*) AS n FROM \"t/#\" WHERE ({expr}) IS NOT NULL GROUP BY {expr}, TUMBLING(1s) HAVING ({expr}) IS NULL OR TRUE"
    );
    // The same tree as a WHERE condition, a group key and in HAVING.
    if let Ok(q) = Query::parse(&agg) {
        let mut ex = q.start(Limits::default());
        let _ = ex.push(&ev(r#"{"a":1,"b":true,"s":"x"}"#), &mut out);
        ex.advance(10_000, &mut out);
    }
    Ok(())
}

#[test]
fn deepest_accepted_expressions_run_on_a_small_stack() {
    // Parse, compile and evaluate the deepest accepted trees as a column, a
    // WHERE condition, a group key and in HAVING. Release builds fit in
    // 384 KiB; unoptimised frames are several times larger. Both stay well
    // below the 2 MiB default of spawned and tokio worker threads.
    let stack = if cfg!(debug_assertions) {
        1536 * 1024
    } else {
        384 * 1024
    };
    let h = std::thread::Builder::new()
        .stack_size(stack)
        .spawn(|| {
            // The select item `x` adds no level; the deepest accepted tree has MAX_DEPTH levels.
            for (name, e) in shapes(MAX_DEPTH) {
                if let Err(err) = run(&e) {
                    panic!("{name}: the deepest accepted expression was rejected: {err}");
                }
            }
        })
        .expect("spawn");
    h.join().expect("no stack overflow");
}

#[test]
fn expression_nested_too_deeply_is_an_error_not_a_stack_overflow() {
    for (name, e) in shapes(MAX_DEPTH + 1) {
        if name == "IS NULL" {
            continue; // built two levels at a time
        }
        let err = Query::parse(&format!("SELECT {e} AS x FROM \"t/#\"")).expect_err(name);
        assert!(
            err.message == "expression nested too deeply (more than 128 levels)",
            "{name}: {err}"
        );
    }
    // The reviewer's case: 300 terms in a left-deep chain, then 10,000.
    for n in [300, 10_000] {
        let sql = format!(
            "SELECT a FROM \"t/#\" WHERE {} > 1",
            vec!["a"; n].join(" + ")
        );
        let err = Query::parse(&sql).expect_err("too deep");
        assert_eq!(
            err.to_string(),
            // The 128th '+' (column 29 + 127 * 4) makes the 129th level.
            "line 1, column 537: expression nested too deeply (more than 128 levels)"
        );
    }
}

#[test]
fn expression_with_too_many_terms_is_an_error() {
    // Flat, so never deep: 10,001 terms in an IN list.
    let sql = format!(
        "SELECT a FROM \"t/#\" WHERE a IN ({})",
        vec!["1"; 10_000].join(",")
    );
    let err = Query::parse(&sql).expect_err("too many terms");
    assert!(
        err.message == "expression is too large (more than 10000 terms in the rule)",
        "{err}"
    );
    let ok = format!(
        "SELECT a FROM \"t/#\" WHERE a IN ({})",
        vec!["1"; 9_990].join(",")
    );
    Query::parse(&ok).expect("9,992 terms are fine");
}

#[test]
fn sql_longer_than_64_kib_is_an_error() {
    let sql = format!("SELECT a FROM \"t/#\" /*{}*/", "x".repeat(64 * 1024));
    let err = Query::parse(&sql).expect_err("too long");
    assert_eq!(err.message, "the rule is too long (more than 65536 bytes)");
    let sql = format!("SELECT a FROM \"t/#\" /*{}*/", "x".repeat(60 * 1024));
    Query::parse(&sql).expect("60 KiB is fine");
}
