//! Modbus RTU end to end over a real serial line: a pseudo-terminal pair,
//! the driver opening the `/dev/pts/N` end by path through
//! `verge_drivers::serial::open`, and a small RTU slave written here (CRC
//! included) on the other end answering FC 3 and FC 6 for unit 5.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use serial2_tokio::SerialPort;
use verge_broker::{Broker, BrokerConfig, Message};
use verge_drivers::{Driver, DriverConfig};
use verge_mqtt::QoS;

/// Modbus's CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF).
fn crc(bytes: &[u8]) -> u16 {
    let mut c: u16 = 0xFFFF;
    for b in bytes {
        c ^= u16::from(*b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xA001
            } else {
                c >> 1
            };
        }
    }
    c
}

fn framed(mut pdu: Vec<u8>) -> Vec<u8> {
    let c = crc(&pdu);
    pdu.extend_from_slice(&c.to_le_bytes());
    pdu
}

/// The `/dev/pts/N` paths this process has open.
fn open_pts() -> HashSet<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|p| p.starts_with("/dev/pts/"))
        .collect()
}

/// Serve unit 5's 100 holding registers on the master end until it closes.
async fn slave(port: SerialPort, mut regs: Vec<u16>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let Ok(n) = port.read(&mut chunk).await else {
            return;
        };
        buf.extend_from_slice(&chunk[..n]);
        // Both requests served here are 8 bytes.
        while buf.len() >= 8 {
            let req: Vec<u8> = buf.drain(..8).collect();
            if crc(&req[..6]).to_le_bytes() != [req[6], req[7]] || req[0] != 5 {
                continue;
            }
            let addr = usize::from(u16::from_be_bytes([req[2], req[3]]));
            let val = u16::from_be_bytes([req[4], req[5]]);
            let answer = match req[1] {
                3 if addr + usize::from(val) <= regs.len() => {
                    let mut pdu = vec![5, 3, (val * 2) as u8];
                    for r in &regs[addr..addr + usize::from(val)] {
                        pdu.extend_from_slice(&r.to_be_bytes());
                    }
                    pdu
                }
                6 if addr < regs.len() => {
                    regs[addr] = val;
                    req[..6].to_vec()
                }
                f => vec![5, f | 0x80, 2],
            };
            if port.write_all(&framed(answer)).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test]
async fn rtu_reads_and_writes_over_a_serial_line() {
    let before = open_pts();
    let (master, line) = SerialPort::pair().expect("pseudo-terminal pair");
    let path = open_pts()
        .difference(&before)
        .next()
        .cloned()
        .expect("the pair's /dev/pts path");
    let mut regs = vec![0u16; 100];
    regs[10] = 0x41AC; // f32 21.5
    regs[12] = 7;
    tokio::spawn(slave(master, regs));

    let cfg = BrokerConfig::default();
    let auth = Broker::authenticator(&cfg).expect("auth");
    let b = Broker::start(cfg, auth);
    let cfg: DriverConfig = serde_json::from_value(json!({
        "name": "rtu", "protocol": "modbus-rtu",
        // A pseudo-terminal refuses parity (serial2 checks the settings took).
        "serial": {"device": path.to_string_lossy(), "baud": 19200, "parity": "none"},
        "timeout": "500ms", "retry": {"initial": "50ms", "max": "200ms"},
        "devices": [{"name": "meter", "unit": 5, "poll": "50ms", "points": [
            {"name": "flow", "address": "hr:10", "type": "f32"},
            {"name": "mode", "address": "hr:12", "access": "rw"}]}],
    }))
    .expect("config");
    let mut sub = b
        .handle()
        .subscribe("devices/meter/telemetry", 64)
        .await
        .expect("sub");
    let d = Driver::start(cfg, b.handle()).expect("driver");
    let next = |doc: Option<Value>| doc.expect("telemetry");
    let recv = async |sub: &mut verge_broker::LocalSubscription| -> Option<Value> {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .ok()??;
        serde_json::from_slice(&m.payload).ok()
    };
    let doc = recv(&mut sub).await;
    let doc = doc.unwrap_or_else(|| panic!("no telemetry: {:?}", d.status()));
    assert_eq!(doc["values"], json!({"flow": 21.5, "mode": 7}), "{doc}");

    let mut replies = b
        .handle()
        .subscribe("devices/meter/commands/write/reply", 8)
        .await
        .expect("sub");
    let m = Message::local(
        "devices/meter/commands/write",
        json!({"point": "mode", "value": 3}).to_string(),
        QoS::AtLeastOnce,
        false,
    );
    b.handle().publish(m).await.expect("publish");
    let r = next(recv(&mut replies).await);
    assert_eq!(r["ok"], true, "{r}");
    loop {
        let doc = next(recv(&mut sub).await);
        if doc["values"]["mode"] == 3 {
            break;
        }
    }
    assert_eq!(d.status().devices[0].state, "good");
    d.stop().await;
    drop(line);
}
