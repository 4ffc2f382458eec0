//! Throughput of the SQL core on one core: filter+project and a 10 s tumbling GROUP BY over 1k devices.
//!
//! Run with `cargo run --release -p verge-sql --example throughput`.

use std::time::Instant;

use verge_sql::{Event, Limits, Query, Row};

const N: usize = 2_000_000;
const LATENCY_SAMPLES: usize = 200_000;

fn payloads() -> (Vec<String>, Vec<Vec<u8>>) {
    let mut topics = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..1000 {
        topics.push(format!("devices/dev-{i:04}/telemetry"));
        // About 60 bytes, like a small sensor reading.
        let t = 15.0 + (i % 20) as f64 + 0.25;
        bodies.push(
            format!(
                r#"{{"device":"dev-{i:04}","temperature":{t},"humidity":{}}}"#,
                30 + i % 50
            )
            .into_bytes(),
        );
    }
    (topics, bodies)
}

fn run(name: &str, sql: &str, time_step_div: usize) {
    let (topics, bodies) = payloads();
    let q = Query::parse(sql).expect("query compiles");
    let mut ex = q.start(Limits::default());
    let mut out: Vec<Row> = Vec::with_capacity(1024);
    let mut rows = 0usize;
    let ev = |i: usize| Event {
        topic: &topics[i % 1000],
        payload: &bodies[i % 1000],
        client_id: "bench",
        qos: 0,
        timestamp_ms: (i / time_step_div) as i64,
        user_properties: &[],
    };
    // Warm up.
    for i in 0..100_000 {
        let _ = ex.push(&ev(i), &mut out);
        out.clear();
    }
    let start = Instant::now();
    for i in 0..N {
        let _ = ex.push(&ev(i), &mut out);
        rows += out.len();
        out.clear();
    }
    let secs = start.elapsed().as_secs_f64();
    let mut lat = Vec::with_capacity(LATENCY_SAMPLES);
    for i in N..N + LATENCY_SAMPLES {
        let e = ev(i);
        let t = Instant::now();
        let _ = ex.push(&e, &mut out);
        lat.push(t.elapsed().as_nanos() as u64);
        out.clear();
    }
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    let s = ex.stats();
    println!(
        "{name}: {:.0} msgs/s ({N} msgs in {secs:.3} s, {rows} rows), push latency p50 {} ns, p99 {} ns, errors {}",
        N as f64 / secs,
        p(0.50),
        p(0.99),
        s.eval_errors
    );
}

fn main() {
    run(
        "filter+project",
        r#"SELECT device, temperature*1.8+32 AS f FROM "devices/+/telemetry" WHERE temperature > 20"#,
        1000,
    );
    // 100 messages per ms of processing time: a 10 s window holds 1M messages over 1k groups.
    run(
        "tumbling group by (1k devices)",
        r#"SELECT device, avg(temperature) AS avg_t, max(temperature) AS max_t, count(*) AS n
           FROM "devices/+/telemetry" GROUP BY device, TUMBLING(10s)"#,
        100,
    );
}
