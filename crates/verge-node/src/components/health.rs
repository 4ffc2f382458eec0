//! Health probes: a TCP connect, an HTTP/1.1 GET whose status line is
//! compared with the expected status (plain HTTP on the node's host; the
//! probe reads only the status line), or the MQTT heartbeat: a message on
//! the heartbeat topic within the last `interval` + `timeout`, and no
//! `health.report` saying unhealthy since ([`bus::Heartbeat`]).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use verge_protocol::{HealthCheck, HealthKind};

use super::bus;

/// Probe once within the check's timeout; `Err` says why it failed.
/// `heartbeat` is the component's heartbeat state and topic, for `mqtt`.
pub async fn probe(
    check: &HealthCheck,
    heartbeat: Option<(&bus::Heartbeat, &str)>,
) -> Result<(), String> {
    if check.kind == HealthKind::Mqtt {
        let (hb, topic) =
            heartbeat.ok_or("the mqtt heartbeat check needs the node's broker; none is wired")?;
        return hb.check(topic, check.interval + check.timeout);
    }
    match tokio::time::timeout(check.timeout, probe_inner(check)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "health check timed out after {} ms",
            check.timeout.as_millis()
        )),
    }
}

async fn probe_inner(check: &HealthCheck) -> Result<(), String> {
    match check.kind {
        HealthKind::Alive => Ok(()),
        HealthKind::Tcp => {
            let addr = check.address.as_deref().unwrap_or_default();
            TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| format!("tcp connect to {addr}: {e}"))
        }
        HealthKind::Http => {
            let url = check.url.as_deref().unwrap_or_default();
            http_get(url, check.status).await
        }
        HealthKind::Mqtt => Err("the mqtt heartbeat check is probed apart".to_owned()),
    }
}

async fn http_get(url: &str, expect: u16) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: not an http:// url"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut s = TcpStream::connect(&addr)
        .await
        .map_err(|e| format!("http get {url}: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("http get {url}: {e}"))?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 1024 {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("http get {url}: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("http get {url}: no HTTP status line in the answer"))?;
    if status == expect {
        Ok(())
    } else {
        Err(format!(
            "http get {url}: status {status}, expected {expect}"
        ))
    }
}
