//! A thermostat on the Rust device SDK: the example of
//! `examples/devices/rust/README.md`.
//!
//! It sends a temperature reading every `interval_ms` (JSON telemetry),
//! raises an `overheat` event above its target, answers the commands
//! `set_target` (`{"target": 21.5}`) and `status`, keeps `target` and
//! `interval_ms` in its shadow's `reported` side and applies the `desired`
//! side (at start and on every delta). Ctrl-C closes it cleanly.
//!
//! ```sh
//! VERGE_DEVICE=d1 VERGE_DEVICE_SECRET=… cargo run -p verge-device --example thermostat
//! # VERGE_URL (default mqtt://127.0.0.1:1883), VERGE_CA_FILE for mqtts://
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use verge_device::{Device, DeviceConfig, Error};

/// What the thermostat is set to.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// Wanted temperature, °C.
    target: f64,
    /// Time between readings.
    interval_ms: u64,
}

impl Settings {
    /// Take `target` and `interval_ms` from a shadow's `desired` (or a
    /// delta); whether anything changed.
    fn apply(&mut self, desired: &Map<String, Value>) -> bool {
        let before = (self.target, self.interval_ms);
        if let Some(t) = desired.get("target").and_then(Value::as_f64) {
            self.target = t;
        }
        if let Some(ms) = desired.get("interval_ms").and_then(Value::as_u64) {
            self.interval_ms = ms.max(100);
        }
        before != (self.target, self.interval_ms)
    }

    fn reported(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("target".into(), json!(self.target));
        m.insert("interval_ms".into(), json!(self.interval_ms));
        m
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let env = |k: &str| std::env::var(k).ok();
    let mut config = DeviceConfig::new(
        env("VERGE_URL").unwrap_or_else(|| "mqtt://127.0.0.1:1883".into()),
        env("VERGE_DEVICE").unwrap_or_else(|| "d1".into()),
        env("VERGE_DEVICE_SECRET").unwrap_or_default(),
    );
    config.ca_file = env("VERGE_CA_FILE").map(Into::into);
    config.request_timeout = Duration::from_secs(3);
    let device = Device::connect(config).await?;
    println!("connected as {}", device.client_id());

    let settings = Arc::new(Mutex::new(Settings {
        target: 21.0,
        interval_ms: 1000,
    }));
    let current = move |s: &Arc<Mutex<Settings>>| *s.lock().unwrap_or_else(|e| e.into_inner());

    // commands: the handler's Ok goes to the reply topic, Err to the failed one
    let s = settings.clone();
    let d = device.clone();
    device
        .on_command("set_target", move |cmd| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                let target = cmd.payload["target"]
                    .as_f64()
                    .ok_or("want {\"target\": <number>}")?;
                let now = {
                    let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                    g.target = target;
                    *g
                };
                // the command succeeded even when the shadow cannot be told now
                if let Err(e) = d.update_reported(now.reported()).await {
                    eprintln!("reporting: {e}");
                }
                Ok(json!({ "target": target }))
            }
        })
        .await?;
    let s = settings.clone();
    device
        .on_command("status", move |_| {
            let now = current(&s);
            async move { Ok(Value::Object(now.reported())) }
        })
        .await?;

    // the shadow: apply what is desired now and whenever it changes
    let s = settings.clone();
    let d = device.clone();
    device
        .on_delta(move |delta| {
            let (s, d) = (s.clone(), d.clone());
            async move {
                let now = {
                    let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                    g.apply(&delta.state);
                    *g
                };
                if let Err(e) = d.update_reported(now.reported()).await {
                    eprintln!("reporting: {e}");
                }
            }
        })
        .await?;
    match device.get_shadow().await {
        Ok(shadow) => {
            settings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(&shadow.desired);
            device
                .update_reported(current(&settings).reported())
                .await?;
        }
        // an older node without shadows: carry on with the defaults
        Err(e) => eprintln!("shadow: {e}"),
    }

    // readings until Ctrl-C
    let mut n: u64 = 0;
    loop {
        let now = current(&settings);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(now.interval_ms)) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        n += 1;
        let temperature = now.target - 1.5 + ((n % 20) as f64) * 0.2;
        device
            .send_telemetry(&json!({ "temperature": temperature, "target": now.target }))
            .await?;
        if temperature > now.target + 1.0 {
            device
                .send_event("overheat", &json!({ "temperature": temperature }))
                .await?;
        }
    }
    let stats = device.stats();
    device.close().await?;
    println!(
        "closed: {} messages acknowledged, {} dropped while offline",
        stats.acked, stats.dropped
    );
    Ok(())
}
