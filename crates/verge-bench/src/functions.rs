//! `verge bench functions`: edge function calls per second and their
//! latency, for a trivial function (echo) and a JSON-reshaping one, on the
//! WebAssembly runtime and the process runtime side by side.
//!
//! For WebAssembly it measures the bare call on one thread
//! (`WasmRuntime::call_blocking`: encode, copy in, run, decode: the call
//! overhead) and calls through the node's registry (`Functions::invoke`,
//! what rules and the API use: a permit, a hop to the blocking pool and
//! back, metrics) with several callers at once. The process runtime is
//! measured through the registry with its Python workers.
//!
//! The wasm modules are the examples in `examples/functions` (build them
//! with `examples/functions/build.sh`); without them the trivial function
//! falls back to a WAT echo module and the JSON row is skipped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use verge_functions::wasm::{WasmModule, WasmRuntime};
use verge_functions::{
    FunctionSpec, Functions, FunctionsConfig, HostContext, Limits, Message, RuntimeKind, State,
};
use verge_metrics::Histogram;

use super::thousands;

/// Options of `verge bench functions`.
#[derive(Debug, Args)]
pub struct FunctionsBenchArgs {
    /// Measured seconds per row (after 0.3 s of warm-up).
    #[arg(long, default_value_t = 3.0, value_name = "SECS")]
    pub duration: f64,
    /// Concurrent callers for the calls through the registry.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub callers: u32,
    /// Worker processes of the process functions.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,
    /// Directory with `echo.wasm` and `json_reshape.wasm`
    /// [default: target/wasm-examples/wasm32-unknown-unknown/release of this checkout].
    #[arg(long)]
    pub wasm_dir: Option<PathBuf>,
    /// Python interpreter for the process runtime.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Skip the process runtime.
    #[arg(long)]
    pub no_process: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One measured row.
struct Row {
    runtime: &'static str,
    function: &'static str,
    path: String,
    calls: u64,
    secs: f64,
    hist: Histogram,
}

impl Row {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.secs
    }
}

/// The payload both functions get: a nested telemetry document (220 B).
fn payload() -> Vec<u8> {
    json!({
        "device": {"id": "d1", "site": "plant-1", "battery": 87},
        "timestamp": 1_764_390_000_000_i64,
        "readings": {"env": {"temperature": 21.5, "humidity": 40},
                     "power": {"voltage": 230.1, "current": 1.25, "on": true}},
        "cells": [3.3, 3.4, 3.35],
        "status": "ok"
    })
    .to_string()
    .into_bytes()
}

fn message() -> Message {
    let mut m = Message::new("devices/d1/telemetry", payload());
    m.content_type = Some("application/json".into());
    m
}

const ECHO_WAT: &str = include_str!("../../verge-functions/tests/wat/echo.wat");

/// A Python worker loop around `handle(request) -> list of messages`.
const PY_LOOP: &str = r#"
import json, sys
def main(handle):
    for line in sys.stdin:
        req = json.loads(line)
        try:
            out = {"id": req["id"], "messages": handle(req)}
        except Exception as e:
            out = {"id": req["id"], "error": str(e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
"#;

const PY_ECHO: &str = r#"
def handle(req):
    return [{"topic": req["topic"], "payload": req.get("payload", ""),
             "content_type": req.get("content_type"), "qos": req.get("qos", 1)}]
main(handle)
"#;

/// The same mapping as `examples/functions/json-reshape`.
const PY_RESHAPE: &str = r#"
def flatten(v, path, out, skip):
    if isinstance(v, bool) or (isinstance(v, (int, float))):
        if path not in skip:
            out[path] = v
    elif isinstance(v, dict):
        for k, x in v.items():
            flatten(x, f"{path}.{k}" if path else k, out, skip)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            flatten(x, f"{path}.{i}" if path else str(i), out, skip)

def handle(req):
    doc = json.loads(req["payload"])
    if not isinstance(doc, dict):
        raise ValueError("payload is not a JSON object")
    skip = set()
    device = None
    if isinstance(doc.get("device"), str):
        device = doc["device"]; skip.add("device")
    elif isinstance(doc.get("device"), dict) and isinstance(doc["device"].get("id"), str):
        device = doc["device"]["id"]
    else:
        parts = req["topic"].split("/")
        if len(parts) > 2 and parts[0] == "devices":
            device = parts[1]
    ts = req["time_ms"]
    for k in ("ts", "timestamp"):
        if isinstance(doc.get(k), int) and not isinstance(doc.get(k), bool):
            ts = doc[k]; skip.add(k); break
    metrics = {}
    flatten(doc, "", metrics, skip)
    out = {"device": device, "ts": ts, "metrics": dict(sorted(metrics.items()))}
    return [{"topic": req["topic"] + "/flat", "payload": json.dumps(out, separators=(",", ":")),
             "content_type": "application/json", "qos": req.get("qos", 1)}]
main(handle)
"#;

/// Run the benchmark.
pub fn run(args: &FunctionsBenchArgs) -> anyhow::Result<()> {
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    let wasm_dir = args.wasm_dir.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/wasm-examples/wasm32-unknown-unknown/release")
    });
    let echo = match std::fs::read(wasm_dir.join("echo.wasm")) {
        Ok(b) => b,
        Err(_) => {
            eprintln!(
                "note: {} not found (run examples/functions/build.sh); the trivial function is the WAT echo",
                wasm_dir.join("echo.wasm").display()
            );
            ECHO_WAT.as_bytes().to_vec()
        }
    };
    let reshape = std::fs::read(wasm_dir.join("json_reshape.wasm")).ok();
    if reshape.is_none() {
        eprintln!(
            "note: {} not found (run examples/functions/build.sh); skipping the wasm JSON row",
            wasm_dir.join("json_reshape.wasm").display()
        );
    }
    let dur = Duration::from_secs_f64(args.duration);
    let mut rows = Vec::new();

    // Bare calls on this thread.
    for (name, bytes) in [("echo", Some(&echo)), ("json-reshape", reshape.as_ref())] {
        let Some(bytes) = bytes else { continue };
        eprintln!("wasm {name}: direct calls for {:.1}s…", args.duration);
        rows.push(direct(name, bytes, dur)?);
    }

    let tmp = std::env::temp_dir().join(format!("verge-bench-functions-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = rt.block_on(async {
        let f = Functions::open(FunctionsConfig {
            dir: tmp.join("functions"),
        })
        .await
        .map_err(anyhow::Error::msg)?;
        let mut deployed: Vec<(&'static str, &'static str, &'static str)> = Vec::new();
        let mut spec = FunctionSpec::wasm("wasm-echo");
        spec.limits.concurrency = args.callers;
        f.deploy(spec, Some(echo.clone())).await?;
        deployed.push(("wasm", "echo", "wasm-echo"));
        if let Some(r) = &reshape {
            let mut spec = FunctionSpec::wasm("wasm-json-reshape");
            spec.limits.concurrency = args.callers;
            f.deploy(spec, Some(r.clone())).await?;
            deployed.push(("wasm", "json-reshape", "wasm-json-reshape"));
        }
        if !args.no_process {
            for (func, name, body) in [
                ("echo", "process-echo", PY_ECHO),
                ("json-reshape", "process-json-reshape", PY_RESHAPE),
            ] {
                let script = tmp.join(format!("{name}.py"));
                std::fs::write(&script, format!("{PY_LOOP}\n{body}"))?;
                let spec = FunctionSpec {
                    runtime: RuntimeKind::Process,
                    path: None,
                    command: vec![args.python.clone(), script.display().to_string()],
                    limits: Limits {
                        concurrency: args.workers,
                        ..Limits::default()
                    },
                    ..FunctionSpec::wasm(name)
                };
                f.deploy(spec, None)
                    .await
                    .with_context(|| format!("starting {} (--no-process skips it)", args.python))?;
                deployed.push(("process", func, name));
            }
        }
        // Check the outputs once before measuring.
        for (_, func, name) in &deployed {
            let out = f.invoke(name, message()).await?;
            let ok = match *func {
                "echo" => out.len() == 1 && out[0].payload[..] == payload()[..],
                _ => {
                    out.len() == 1
                        && out[0].topic == "devices/d1/telemetry/flat"
                        && serde_json::from_slice::<serde_json::Value>(&out[0].payload)
                            .map(|v| v["metrics"]["readings.env.temperature"] == json!(21.5))
                            .unwrap_or(false)
                }
            };
            if !ok {
                bail!("{name} returned unexpected output: {out:?}");
            }
        }
        for (runtime, func, name) in deployed {
            eprintln!(
                "{name}: {} callers through the registry for {:.1}s…",
                args.callers, args.duration
            );
            rows.push(through_registry(&f, runtime, func, name, args.callers, dur).await?);
        }
        f.shutdown().await;
        anyhow::Ok(())
    });
    drop(rt);
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    report(&rows, args);
    Ok(())
}

fn direct(name: &'static str, module: &[u8], dur: Duration) -> anyhow::Result<Row> {
    let module = WasmModule::new(module).map_err(anyhow::Error::msg)?;
    let ctx = HostContext {
        name: Arc::from(name),
        version: 1,
        config: Arc::from("{}"),
        state: Arc::new(State::in_memory(1 << 20)),
        limits: Limits::default(),
    };
    let rt = WasmRuntime::new(module, ctx).map_err(anyhow::Error::msg)?;
    let msg = message();
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        rt.call_blocking(&msg)?;
    }
    let mut hist = Histogram::default();
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < dur {
        let t = Instant::now();
        let out = rt.call_blocking(&msg)?;
        hist.record_mut(t.elapsed().as_nanos() as u64);
        std::hint::black_box(out);
        calls += 1;
    }
    Ok(Row {
        runtime: "wasm",
        function: name,
        path: "direct, 1 thread".into(),
        calls,
        secs: start.elapsed().as_secs_f64(),
        hist,
    })
}

async fn through_registry(
    f: &Functions,
    runtime: &'static str,
    function: &'static str,
    name: &'static str,
    callers: u32,
    dur: Duration,
) -> anyhow::Result<Row> {
    let warm_until = Instant::now() + Duration::from_millis(300);
    let end = warm_until + dur;
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::default();
            let mut calls = 0u64;
            let msg = message();
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                f.invoke(name, msg.clone()).await?;
                if t >= warm_until {
                    hist.record_mut(t.elapsed().as_nanos() as u64);
                    calls += 1;
                }
            }
            anyhow::Ok((calls, hist))
        }));
    }
    let mut hist = Histogram::default();
    let mut calls = 0;
    for t in tasks {
        let (c, h) = t.await??;
        calls += c;
        hist.merge(&h);
    }
    Ok(Row {
        runtime,
        function,
        path: format!("registry, {callers} callers"),
        calls,
        secs: dur.as_secs_f64(),
        hist,
    })
}

fn report(rows: &[Row], args: &FunctionsBenchArgs) {
    let us = |ns: u64| ns as f64 / 1000.0;
    if args.json {
        let out: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "runtime": r.runtime, "function": r.function, "path": r.path,
                    "calls": r.calls, "calls_per_sec": r.rate().round(),
                    "p50_us": us(r.hist.quantile(0.5)), "p99_us": us(r.hist.quantile(0.99)),
                    "max_us": us(r.hist.max()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return;
    }
    println!(
        "{:<8} {:<13} {:<22} {:>12} {:>10} {:>10}",
        "runtime", "function", "path", "calls/s", "p50 µs", "p99 µs"
    );
    for r in rows {
        println!(
            "{:<8} {:<13} {:<22} {:>12} {:>10.1} {:>10.1}",
            r.runtime,
            r.function,
            r.path,
            thousands(r.rate() as u64),
            us(r.hist.quantile(0.5)),
            us(r.hist.quantile(0.99)),
        );
    }
}
