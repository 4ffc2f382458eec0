//! Golden tests: every `tests/cases/<name>.sql` runs against `<name>.in.jsonl` and must produce
//! exactly `<name>.out.jsonl`, or fail to compile with exactly the text of `<name>.err`.
//!
//! Input lines: `{"topic":..,"payload":{..}|"payload_raw":"text","time":ms,"clientid":..,"qos":..,
//! "user_properties":[["k","v"]]}`; `{"advance":ms}` calls `advance`; `{"flush":true}` calls
//! `flush`; `{"limits":{..}}` (first line
//! only) sets limits; `{"stats":true}` writes the drop/error counters as a row
//! `{"stats":{"dropped_groups":..,"dropped_late":..,"dropped_rows":..,"eval_errors":..}}`.
//! Output lines: one JSON row per line, or `{"error":"..."}` where `push` failed.
//! Floats compare with a relative tolerance of 1e-9; everything else (including column order and
//! int vs float) exactly.

use std::path::Path;
use std::sync::Arc;

use verge_sql::{Event, Limits, Query, Row, Value};

fn obj(pairs: Vec<(&str, Value)>) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (Arc::from(k), v)).collect())
}

fn approx_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => {
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| approx_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((k1, v1), (k2, v2))| k1 == k2 && approx_eq(v1, v2))
        }
        _ => a == b,
    }
}

fn get<'v>(v: &'v Value, k: &str) -> Option<&'v Value> {
    v.field(k)
}

fn run_case(dir: &Path, name: &str) -> Result<(), String> {
    let sql =
        std::fs::read_to_string(dir.join(format!("{name}.sql"))).map_err(|e| e.to_string())?;
    let err_path = dir.join(format!("{name}.err"));
    if err_path.exists() {
        let want = std::fs::read_to_string(&err_path).map_err(|e| e.to_string())?;
        return match Query::parse(&sql) {
            Ok(_) => Err(format!(
                "expected the error\n  {}\nbut the query compiled",
                want.trim()
            )),
            Err(e) if e.to_string() == want.trim() => Ok(()),
            Err(e) => Err(format!(
                "error text differs\n  want: {}\n  got:  {e}",
                want.trim()
            )),
        };
    }
    let q = Query::parse(&sql).map_err(|e| format!("query does not compile: {e}"))?;
    let input =
        std::fs::read_to_string(dir.join(format!("{name}.in.jsonl"))).map_err(|e| e.to_string())?;
    let mut exec = None;
    let mut got: Vec<Value> = Vec::new();
    for (n, line) in input.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = Value::from_json(line.as_bytes())
            .ok_or_else(|| format!("{name}.in.jsonl:{}: bad JSON", n + 1))?;
        if let Some(l) = get(&v, "limits") {
            let mut limits = Limits::default();
            let num = |k: &str| get(l, k).and_then(Value::as_f64).map(|f| f as usize);
            if let Some(x) = num("max_groups") {
                limits.max_groups = x;
            }
            if let Some(x) = num("max_rows_per_window") {
                limits.max_rows_per_window = x;
            }
            if let Some(x) = num("max_open_windows") {
                limits.max_open_windows = x;
            }
            if let Some(x) = num("max_future_ms") {
                limits.max_future_ms = x as i64;
            }
            exec = Some(q.start(limits));
            continue;
        }
        let ex = exec.get_or_insert_with(|| q.start(Limits::default()));
        let mut rows: Vec<Row> = Vec::new();
        if let Some(t) = get(&v, "advance") {
            ex.advance(t.as_f64().unwrap_or(0.0) as i64, &mut rows);
        } else if get(&v, "flush").is_some() {
            ex.flush(&mut rows);
        } else if get(&v, "stats").is_some() {
            let s = ex.stats();
            got.push(obj(vec![(
                "stats",
                obj(vec![
                    ("dropped_groups", Value::Int(s.dropped_groups as i64)),
                    ("dropped_late", Value::Int(s.dropped_late as i64)),
                    ("dropped_rows", Value::Int(s.dropped_rows as i64)),
                    ("eval_errors", Value::Int(s.eval_errors as i64)),
                ]),
            )]));
        } else {
            let payload: Vec<u8> = match (get(&v, "payload"), get(&v, "payload_raw")) {
                (_, Some(Value::Str(raw))) => raw.as_bytes().to_vec(),
                (Some(p), _) => p.to_json().into_bytes(),
                _ => Vec::new(),
            };
            let props: Vec<(String, String)> = match get(&v, "user_properties") {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(|p| Some((p.index(0)?.to_string(), p.index(1)?.to_string())))
                    .collect(),
                _ => Vec::new(),
            };
            let topic =
                get(&v, "topic").map_or("devices/d1/telemetry".to_string(), |t| t.to_string());
            let client = get(&v, "clientid").map_or("c1".to_string(), |t| t.to_string());
            let ev = Event {
                topic: &topic,
                payload: &payload,
                client_id: &client,
                qos: get(&v, "qos")
                    .and_then(Value::as_f64)
                    .map_or(0, |q| q as u8),
                timestamp_ms: get(&v, "time")
                    .and_then(Value::as_f64)
                    .map_or(0, |t| t as i64),
                user_properties: &props,
            };
            if let Err(e) = ex.push(&ev, &mut rows) {
                got.push(obj(vec![("error", Value::str(&e.to_string()))]));
            }
        }
        // Compare what the runtime would publish: the row's JSON (bytes become base64 strings).
        got.extend(
            rows.iter()
                .map(|r| Value::from_json(r.to_json().as_bytes()).unwrap_or_default()),
        );
    }
    let out = std::fs::read_to_string(dir.join(format!("{name}.out.jsonl")))
        .map_err(|e| e.to_string())?;
    let mut want = Vec::new();
    for (n, line) in out
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        want.push(
            Value::from_json(line.as_bytes())
                .ok_or_else(|| format!("{name}.out.jsonl:{}: bad JSON", n + 1))?,
        );
    }
    let same = want.len() == got.len() && want.iter().zip(&got).all(|(w, g)| approx_eq(w, g));
    if same {
        return Ok(());
    }
    let mut diff = String::from("output differs (- expected, + actual):\n");
    for i in 0..want.len().max(got.len()) {
        match (want.get(i), got.get(i)) {
            (Some(w), Some(g)) if approx_eq(w, g) => {
                diff.push_str(&format!("    {}\n", w.to_json()))
            }
            (w, g) => {
                if let Some(w) = w {
                    diff.push_str(&format!("  - {}\n", w.to_json()));
                }
                if let Some(g) = g {
                    diff.push_str(&format!("  + {}\n", g.to_json()));
                }
            }
        }
    }
    Err(diff)
}

#[test]
fn golden_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("tests/cases exists")
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .into_string()
                .ok()?
                .strip_suffix(".sql")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no golden cases found");
    let mut failures = Vec::new();
    for name in &names {
        if let Err(e) = run_case(&dir, name) {
            failures.push(format!("--- case {name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
    println!("{} golden cases passed", names.len());
}
