//! One simulated node: tasks on the bench's runtime, no threads of its
//! own. Its MQTT 5 connection publishes telemetry QoS 1 with a unique
//! `verge-id` and takes commands on `nodes/{id}/down/#`; its heartbeat
//! and its desired-state long poll go over the shared HTTP/2 pool.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::sync::watch;
use verge_metrics::Histogram;
use verge_mqtt::{Ack, Packet, Properties, Protocol, Publish, QoS};
use verge_protocol::device::{CommandRequest, CommandState, CommandStatus, DeviceChannel};
use verge_protocol::paths::{self, DesiredQuery};
use verge_protocol::topics::{self, VERGE_ID_PROPERTY, VERGE_TIME_PROPERTY};
use verge_protocol::{DesiredState, StatusReport, VergeId};

use super::http::Pool;
use crate::client::Client;

/// How long the cloud may hold a long poll.
const POLL_WAIT_MS: u64 = 30_000;

/// Most QoS 1 publishes of one node waiting for their PUBACK; the node
/// skips a tick beyond this (counted in `Stats::skipped`).
const MAX_INFLIGHT: usize = 1000;

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Connected, not publishing yet.
    Ready,
    /// The measured window: publishing.
    Measure,
    /// Publishing stopped; waiting for the last acknowledgements.
    Drain,
    /// Everything ends.
    Stop,
}

/// Counters and latencies of all nodes together.
#[derive(Default)]
pub struct Stats {
    /// Telemetry publishes sent.
    pub published: AtomicU64,
    /// Telemetry publishes acknowledged with success.
    pub acked: AtomicU64,
    /// Telemetry publishes acknowledged with an error code.
    pub refused: AtomicU64,
    /// Publish ticks skipped because too many were unacknowledged.
    pub skipped: AtomicU64,
    /// Heartbeat round trips, ns.
    pub heartbeat: Histogram,
    /// Heartbeats that failed.
    pub heartbeat_errors: AtomicU64,
    /// Time from a desired-state change's API call to the long poll
    /// returning it, ns.
    pub poll_change: Histogram,
    /// Long polls that failed.
    pub poll_errors: AtomicU64,
    /// Time from a command's API call to its PUBLISH at the node, ns.
    pub command: Histogram,
    /// MQTT connections that ended before the run did.
    pub mqtt_lost: AtomicU64,
    /// MQTT connections made again after one was lost.
    pub reconnects: AtomicU64,
    /// Reconnection attempts that failed.
    pub reconnect_errors: AtomicU64,
    /// Unacknowledged telemetry sent again after a reconnect.
    pub resent: AtomicU64,
}

/// One node's identity and what the load loops share about it.
pub struct Node {
    /// Its index in the fleet.
    pub index: usize,
    /// Node id (MQTT username).
    pub id: String,
    /// Its secret (MQTT password, HTTP bearer after `{id}.`).
    pub secret: String,
    /// The replica that joined it.
    pub replica: usize,
    /// The replica it talks to now (moves on when one fails).
    pub current: AtomicUsize,
    /// Its long poll's connection in its replica's pool (its rank among
    /// that replica's nodes, so the polls spread evenly).
    pub slot: usize,
    /// The MQTT address from the join answer.
    pub mqtt: SocketAddr,
    /// The device commands are queued for, on sampled nodes.
    pub device: Option<String>,
    /// Sequence numbers of its acknowledged telemetry.
    pub acked: Mutex<Vec<u64>>,
    /// When the pending command was queued through the API.
    pub command_at: Mutex<Option<Instant>>,
    /// When the pending desired-state change was made through the API.
    pub change_at: Mutex<Option<Instant>>,
    /// The desired version the node runs.
    pub version: AtomicI64,
    /// Whether its MQTT connection is up.
    pub connected: AtomicBool,
}

impl Node {
    /// `{id}.{secret}`: the node's HTTP bearer credential.
    pub fn bearer(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The `verge-id` queue id of this node (16 hex characters).
    fn queue_id(&self) -> String {
        format!("{:016x}", self.index as u64 + 0xf1ee_7000_0000_0000)
    }
}

/// Connect the node's MQTT 5 session to `at` and subscribe to its
/// downstream.
pub async fn connect(node: &Node, at: SocketAddr) -> anyhow::Result<Client> {
    // A real node's bridge client id, which an external broker's
    // authentication requires of a node (docs/scale-out.md).
    let client_id = format!("verge-node-{}", node.id);
    let mut c = Client::connect_as(
        at,
        None,
        Protocol::V5,
        &client_id,
        // No keep alive: a node idle while the rest of the fleet connects
        // must not be timed out (the simulator sends no PINGREQ).
        0,
        Some((&node.id, node.secret.as_bytes())),
    )
    .await
    .with_context(|| format!("MQTT connect of node {}", node.id))?;
    c.subscribe(&topics::down_filter(&node.id), QoS::AtLeastOnce)
        .await
        .with_context(|| format!("subscribe of node {}", node.id))?;
    node.connected.store(true, Ordering::Relaxed);
    Ok(c)
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A QoS 1 publish stamped with `verge-id` and `verge-time` (`at_ms`: a
/// resend repeats the first send's time, as a node's queue does).
fn publish(
    topic: String,
    packet_id: u16,
    verge_id: String,
    at_ms: u64,
    payload: Vec<u8>,
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic,
        packet_id,
        properties: Properties {
            user_properties: vec![
                (VERGE_ID_PROPERTY.to_owned(), verge_id),
                (VERGE_TIME_PROPERTY.to_owned(), at_ms.to_string()),
            ],
            ..Properties::default()
        },
        payload: Bytes::from(payload),
    })
}

/// Where a node's traffic goes: every replica's endpoints, as a load
/// balancer in front of the replicas would offer them. A node uses its
/// current replica and moves to the next one when a connection fails (a
/// single replica, or one external broker, is simply retried).
pub struct Routes {
    /// Each replica's MQTT address (all the same in external mode).
    pub mqtt: Vec<SocketAddr>,
    /// Each replica's HTTP pool for API calls and heartbeats.
    pub api: Vec<Pool>,
    /// Each replica's HTTP pool for long polls.
    pub polls: Vec<Pool>,
}

impl Routes {
    /// The replica after `from` (itself when there is one).
    fn next(&self, from: usize) -> usize {
        (from + 1) % self.api.len()
    }

    /// The node's requests failed on replica `on`: move it to the next
    /// one, unless another of its loops already moved it.
    fn fail_over(&self, node: &Node, on: usize) {
        let _ =
            node.current
                .compare_exchange(on, self.next(on), Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// Why an MQTT session ended.
enum Ended {
    /// The run is over.
    Stop,
    /// The connection failed.
    Lost,
}

/// The MQTT side: publish at `rate` msg/s while measuring, acknowledge
/// and time commands, until the phase is `Stop`. A lost connection is
/// made again (on the next replica when there are several); the
/// telemetry that was not acknowledged on it is sent again with the same
/// `verge-id` and `verge-time`, as a node's queue does, so the cloud must
/// drop what it had already stored.
pub async fn mqtt_loop(
    node: Arc<Node>,
    mut client: Client,
    routes: Arc<Routes>,
    rate: f64,
    stats: Arc<Stats>,
    mut phase: watch::Receiver<Phase>,
) {
    // Telemetry sent and not acknowledged: packet id → (seq, verge-time);
    // `None` for a command status (not resent).
    let mut inflight: HashMap<u16, Option<(u64, u64)>> = HashMap::new();
    let mut seq: u64 = 0;
    let mut status_seq: u64 = 0;
    let mut resend = false;
    let mut connected_to = node.replica;
    loop {
        let ended = session(
            &node,
            client,
            resend,
            rate,
            &stats,
            &mut phase,
            &mut inflight,
            &mut seq,
            &mut status_seq,
        )
        .await;
        if matches!(ended, Ended::Stop) {
            return;
        }
        node.connected.store(false, Ordering::Relaxed);
        stats.mqtt_lost.fetch_add(1, Ordering::Relaxed);
        // Reconnect, moving to the next replica each try, until the run
        // stops.
        // Reconnect, moving on from the replica that failed (unless a
        // heartbeat or poll already moved the node), until the run stops.
        let mut failed_on = connected_to;
        client = loop {
            if *phase.borrow() == Phase::Stop {
                return;
            }
            if routes.mqtt.len() > 1 {
                routes.fail_over(&node, failed_on);
            }
            let target = node.current.load(Ordering::Acquire) % routes.mqtt.len();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = phase.wait_for(|p| *p == Phase::Stop) => return,
            }
            match connect(&node, routes.mqtt[target]).await {
                Ok(c) => {
                    connected_to = target;
                    break c;
                }
                Err(_) => {
                    failed_on = target;
                    stats.reconnect_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        };
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        resend = true;
        // The new connection knows none of the old packet ids: the next
        // session resends the unacknowledged telemetry under them and
        // forgets the statuses.
        inflight.retain(|_, v| v.is_some());
    }
}

/// The topic (after `nodes/{id}/up/`) of the simulated telemetry.
const TELEMETRY_TOPIC: &str = "fleet/telemetry";

/// The telemetry payload of message `seq`.
fn payload_of(seq: u64) -> Vec<u8> {
    format!("{{\"seq\":{seq},\"value\":{}}}", seq % 100).into_bytes()
}

/// One MQTT connection's life.
#[allow(clippy::too_many_arguments)]
async fn session(
    node: &Node,
    client: Client,
    resend: bool,
    rate: f64,
    stats: &Stats,
    phase: &mut watch::Receiver<Phase>,
    inflight: &mut HashMap<u16, Option<(u64, u64)>>,
    seq: &mut u64,
    status_seq: &mut u64,
) -> Ended {
    let (mut rd, mut wr) = client.into_split();
    // Stagger the nodes' ticks over one period.
    let period = Duration::from_secs_f64(if rate > 0.0 { 1.0 / rate } else { 3600.0 });
    let offset = period.mul_f64((node.index % 1000) as f64 / 1000.0);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let topic = topics::up(&node.id, TELEMETRY_TOPIC);
    let queue = node.queue_id();
    if resend {
        // In sequence order, as a node's queue sends them.
        let mut unacked: Vec<(u64, u64, u16)> = inflight
            .iter()
            .filter_map(|(pid, v)| v.map(|(seq, at)| (seq, at, *pid)))
            .collect();
        unacked.sort_unstable();
        for (seq, at_ms, pid) in unacked {
            let _ = wr.queue(&publish(
                topic.clone(),
                pid,
                VergeId::format(&queue, "telemetry", seq),
                at_ms,
                payload_of(seq),
            ));
            stats.resent.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut next_pid: u16 = 0;
    let alloc = |next_pid: &mut u16, inflight: &HashMap<u16, Option<(u64, u64)>>| loop {
        *next_pid = next_pid.wrapping_add(1).max(1);
        if !inflight.contains_key(next_pid) {
            return *next_pid;
        }
    };
    loop {
        let now = *phase.borrow();
        if now == Phase::Stop {
            break;
        }
        let publishing = now == Phase::Measure && rate > 0.0;
        tokio::select! {
            n = rd.fill(4096) => {
                if !matches!(n, Ok(k) if k > 0) {
                    return Ended::Lost;
                }
                loop {
                    let p = match rd.next_packet() {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(_) => return Ended::Lost,
                    };
                    match p {
                        Packet::PubAck(a) => match inflight.remove(&a.packet_id) {
                            Some(Some((s, _))) if a.reason_code < 0x80 => {
                                stats.acked.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut v) = node.acked.lock() {
                                    v.push(s);
                                }
                            }
                            Some(Some(_)) => {
                                stats.refused.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {}
                        },
                        Packet::Publish(p) => {
                            if p.qos != QoS::AtMostOnce {
                                let _ = wr.queue(&Packet::PubAck(Ack {
                                    packet_id: p.packet_id,
                                    reason_code: 0,
                                    properties: Properties::default(),
                                }));
                            }
                            if let Some(status) = on_down(node, &p, stats) {
                                *status_seq += 1;
                                let pid = alloc(&mut next_pid, inflight);
                                inflight.insert(pid, None);
                                let _ = wr.queue(&publish(
                                    topics::up(&node.id, &DeviceChannel::CommandStatus.topic(&status.device)),
                                    pid,
                                    VergeId::format(&queue, "status", *status_seq),
                                    now_ms(),
                                    serde_json::to_vec(&status).unwrap_or_default(),
                                ));
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ = tick.tick(), if publishing => {
                if inflight.len() >= MAX_INFLIGHT {
                    stats.skipped.fetch_add(1, Ordering::Relaxed);
                } else {
                    *seq += 1;
                    let pid = alloc(&mut next_pid, inflight);
                    let at = now_ms();
                    inflight.insert(pid, Some((*seq, at)));
                    if wr
                        .queue(&publish(
                            topic.clone(),
                            pid,
                            VergeId::format(&queue, "telemetry", *seq),
                            at,
                            payload_of(*seq),
                        ))
                        .is_ok()
                    {
                        stats.published.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ = phase.changed() => {}
        }
        if wr.has_queued() && wr.flush().await.is_err() {
            return Ended::Lost;
        }
    }
    wr.disconnect().await;
    Ended::Stop
}

/// A message from the cloud: a command for the node's device is timed and
/// answered `delivered` (so the cloud does not send it again).
fn on_down(node: &Node, p: &Publish, stats: &Stats) -> Option<CommandStatus> {
    let (_, rest) = topics::parse_down(&p.topic)?;
    let (kind, _) = verge_protocol::device::parse_device_channel(rest)?;
    if kind != DeviceChannel::Command {
        return None;
    }
    let req: CommandRequest = serde_json::from_slice(&p.payload).ok()?;
    if let Some(t) = node.command_at.lock().ok().and_then(|mut s| s.take()) {
        stats.command.record(t.elapsed().as_nanos() as u64);
    }
    Some(CommandStatus {
        id: req.id,
        device: req.device,
        state: CommandState::Delivered,
        at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        reply: None,
        error: None,
    })
}

/// Heartbeat every `every` until `Stop`.
pub async fn heartbeat_loop(
    node: Arc<Node>,
    routes: Arc<Routes>,
    every: Duration,
    stats: Arc<Stats>,
    mut phase: watch::Receiver<Phase>,
) {
    let offset = every.mul_f64((node.index % 1000) as f64 / 1000.0);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let bearer = node.bearer();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = phase.wait_for(|p| *p == Phase::Stop) => return,
        }
        let report = StatusReport {
            applied_version: node.version.load(Ordering::Relaxed),
            agent_version: "fleet-sim".into(),
            link_up: node.connected.load(Ordering::Relaxed),
            ..StatusReport::default()
        };
        let body = serde_json::to_vec(&report).unwrap_or_default();
        let t0 = Instant::now();
        let on = node.current.load(Ordering::Acquire);
        match routes.api[on]
            .request(None, Method::POST, paths::STATUS, &bearer, Some(body))
            .await
        {
            Ok(a) if a.status == StatusCode::NO_CONTENT => {
                stats.heartbeat.record(t0.elapsed().as_nanos() as u64);
            }
            Ok(_) => {
                stats.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                stats.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
                routes.fail_over(&node, on);
            }
        }
    }
}

/// Hold the desired-state long poll until `Stop`; a returned change that
/// the bench made is timed.
pub async fn poll_loop(
    node: Arc<Node>,
    routes: Arc<Routes>,
    stats: Arc<Stats>,
    mut phase: watch::Receiver<Phase>,
) {
    let bearer = node.bearer();
    loop {
        let q = DesiredQuery {
            version: node.version.load(Ordering::Relaxed),
            wait_ms: POLL_WAIT_MS,
        };
        let url = paths::desired_poll("", q);
        let on = node.current.load(Ordering::Acquire);
        let answer = tokio::select! {
            a = routes.polls[on].request(Some(node.slot), Method::GET, &url, &bearer, None) => a,
            _ = phase.wait_for(|p| *p == Phase::Stop) => return,
        };
        match answer {
            Ok(a) if a.status == StatusCode::NO_CONTENT => {}
            Ok(a) => match a.json::<DesiredState>(StatusCode::OK) {
                Ok(state) => {
                    node.version.store(state.version, Ordering::Relaxed);
                    if let Some(t) = node.change_at.lock().ok().and_then(|mut s| s.take()) {
                        stats.poll_change.record(t.elapsed().as_nanos() as u64);
                    }
                }
                Err(_) => {
                    stats.poll_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            Err(_) => {
                stats.poll_errors.fetch_add(1, Ordering::Relaxed);
                routes.fail_over(&node, on);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = phase.wait_for(|p| *p == Phase::Stop) => return,
                }
            }
        }
    }
}
