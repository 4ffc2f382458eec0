//! Forwards replaced while the bridge runs: a device keeps publishing at
//! QoS 1 across the change, and every message it was acknowledged for is
//! in the queue exactly once as the old or the new forwards say; a dropped
//! filter's messages stop being queued, a new filter's start, a changed
//! lane switches at one point; a lane the queue does not have changes
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use verge_bridge::{Bridge, Forward, ForwardsChange};
use verge_broker::Message;
use verge_mqtt::QoS;
use verge_queue::{Queue, QueueConfig};

fn fwd(filter: &str, lane: &str) -> Forward {
    Forward {
        filter: filter.into(),
        lane: lane.into(),
    }
}

/// The default lanes (alarms, telemetry); appends wait up to 10 ms for a
/// group commit, so the forwards' subscriptions hold messages meanwhile.
fn queue(dir: &std::path::Path) -> Queue {
    let (q, _) = Queue::open(QueueConfig {
        dir: dir.to_path_buf(),
        group_commit: Duration::from_millis(10),
        ..QueueConfig::default()
    })
    .expect("queue");
    q
}

/// Everything in the queue as (lane, topic, payload), read without
/// acknowledging.
fn contents(q: &Queue) -> Vec<(String, String, String)> {
    let lanes = q.lanes();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while q.try_next_batch(4096, &mut buf) > 0 {
        for e in buf.drain(..) {
            out.push((
                lanes[e.lane].clone(),
                e.record.topic,
                String::from_utf8(e.record.payload.to_vec()).unwrap(),
            ));
        }
    }
    out
}

const GROUPS: [&str; 4] = ["keep", "drop", "move", "new"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_replaced_under_load_lose_and_double_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tmp");
    let (node, addr) = broker(Some(0), true).await;
    let q = queue(dir.path());
    let mut cfg = bridge_config(free_port().await); // the cloud is down
    cfg.forwards = vec![
        fwd("keep/#", "telemetry"),
        fwd("drop/#", "telemetry"),
        fwd("move/#", "telemetry"),
    ];
    let bridge = Bridge::start(cfg.plan("n1").expect("plan"), q.clone(), node.handle())
        .await
        .expect("bridge");
    let handle = bridge.handle();

    // The device: message k goes to `{group}/d1` with group k % 4 and
    // payload k; up to WINDOW are on their way at once, so the forwards'
    // subscriptions hold messages when the change comes.
    let device = Device::connect(addr.expect("listener"), "dev1").await;
    let (sent, acked, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let publisher = tokio::spawn(pipelined(device, sent.clone(), acked.clone(), stop.clone()));
    wait_for("a first stretch of messages", || {
        acked.load(Ordering::SeqCst) >= 200
    })
    .await;
    let before = acked.load(Ordering::SeqCst);
    let change = handle
        .set_forwards(vec![
            fwd("keep/#", "telemetry"),
            fwd("move/#", "alarms"),
            fwd("new/#", "telemetry"),
        ])
        .await
        .expect("set_forwards");
    let after = sent.load(Ordering::SeqCst);
    assert_eq!(
        change,
        ForwardsChange {
            kept: 1,
            relaned: 1,
            added: 1,
            removed: 1
        }
    );
    assert_eq!(
        handle.forwards().await,
        vec![
            fwd("keep/#", "telemetry"),
            fwd("move/#", "alarms"),
            fwd("new/#", "telemetry"),
        ]
    );
    wait_for("a second stretch of messages", || {
        acked.load(Ordering::SeqCst) >= after + 200
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let codes = publisher.await.expect("publisher");
    let last = codes.len() as u64;
    assert!(
        after >= before && last > after + 100,
        "{before} {after} {last}"
    );
    assert!(
        codes.iter().all(|c| *c == 0),
        "no publisher is failed by the change: {:?}",
        codes.iter().filter(|c| **c != 0).count()
    );
    bridge.shutdown().await;

    // Where each message is, by k.
    let mut found: HashMap<u64, Vec<String>> = HashMap::new();
    for (lane, topic, payload) in contents(&q) {
        let k: u64 = payload.parse().unwrap();
        assert_eq!(topic, format!("{}/d1", GROUPS[(k % 4) as usize]));
        found.entry(k).or_default().push(lane);
    }
    let lane_of = |k: u64| -> Option<&str> {
        let lanes = found.get(&k)?;
        assert_eq!(lanes.len(), 1, "message {k} queued {} times", lanes.len());
        Some(lanes[0].as_str())
    };
    // Acknowledged before the change began: the old forwards; sent after
    // it returned: the new ones; in between, either, each group switching
    // once (the router routes one connection's messages in order).
    let mut drop_stopped = false;
    let mut new_started = false;
    let mut moved = false;
    for k in 1..=last {
        let lane = lane_of(k);
        let (old, new) = (k <= before, k > after);
        match GROUPS[(k % 4) as usize] {
            "keep" => assert_eq!(lane, Some("telemetry"), "keep {k}"),
            "drop" => {
                if old {
                    assert_eq!(lane, Some("telemetry"), "drop {k} before the change");
                } else if new {
                    assert_eq!(lane, None, "drop {k} after the change");
                } else if lane.is_none() {
                    drop_stopped = true;
                } else {
                    assert!(!drop_stopped, "drop {k} queued after a later one was not");
                }
            }
            "new" => {
                if old {
                    assert_eq!(lane, None, "new {k} before the change");
                } else if new {
                    assert_eq!(lane, Some("telemetry"), "new {k} after the change");
                } else if lane.is_some() {
                    new_started = true;
                } else {
                    assert!(!new_started, "new {k} not queued after an earlier one was");
                }
            }
            _ => {
                if old {
                    assert_eq!(lane, Some("telemetry"), "move {k} before the change");
                } else if new {
                    assert_eq!(lane, Some("alarms"), "move {k} after the change");
                } else if lane == Some("alarms") {
                    moved = true;
                } else {
                    assert_eq!(lane, Some("telemetry"), "move {k}");
                    assert!(
                        !moved,
                        "move {k} in telemetry after an earlier one in alarms"
                    );
                }
            }
        }
    }
    // Nothing but the device's messages.
    assert_eq!(
        found.len() as u64,
        (1..=last).filter(|k| lane_of(*k).is_some()).count() as u64
    );
    q.close().await;
    node.shutdown().await;
}

/// Publish k = 1, 2, … at QoS 1 with up to WINDOW unacknowledged, until
/// `stop`; `sent` is the last k written, `acked` the last k acknowledged
/// (PUBACKs come in order). Returns each PUBACK's reason code, by k.
async fn pipelined(
    device: Device,
    sent: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use verge_mqtt::{Packet, Properties, Protocol, Publish};
    const WINDOW: u64 = 200;
    let Device { stream, mut buf } = device;
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn({
        let (sent, acked, stop) = (sent.clone(), acked.clone(), stop.clone());
        async move {
            let mut k = 0u64;
            let mut out = bytes::BytesMut::new();
            while !stop.load(Ordering::SeqCst) {
                if k - acked.load(Ordering::SeqCst) >= WINDOW {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                }
                k += 1;
                let p = Packet::Publish(Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: format!("{}/d1", GROUPS[(k % 4) as usize]),
                    packet_id: (k % 60_000) as u16 + 1,
                    properties: Properties::default(),
                    payload: bytes::Bytes::from(k.to_string()),
                });
                out.clear();
                verge_mqtt::encode(&p, Protocol::V5, &mut out).expect("encode");
                wr.write_all(&out).await.expect("write");
                sent.store(k, Ordering::SeqCst);
            }
            wr
        }
    });
    let mut codes = Vec::new();
    let mut deadline = Instant::now() + WAIT;
    loop {
        while let Some(p) = verge_mqtt::decode(&mut buf, Protocol::V5, usize::MAX).expect("decode")
        {
            match p {
                Packet::PubAck(a) => {
                    let k = codes.len() as u64 + 1;
                    assert_eq!(a.packet_id, (k % 60_000) as u16 + 1, "PUBACK out of order");
                    codes.push(a.reason_code);
                    acked.store(k, Ordering::SeqCst);
                    deadline = Instant::now() + WAIT;
                }
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
        if writer.is_finished() && codes.len() as u64 == sent.load(Ordering::SeqCst) {
            break;
        }
        // Short reads: the writer may finish while nothing more comes.
        match tokio::time::timeout(Duration::from_millis(20), rd.read_buf(&mut buf)).await {
            Ok(n) => assert!(n.expect("read") > 0, "the broker closed the connection"),
            Err(_) => assert!(Instant::now() < deadline, "no PUBACK within WAIT"),
        }
    }
    drop(writer.await.expect("writer"));
    codes
}

#[tokio::test]
async fn an_unknown_lane_is_refused_and_the_running_forwards_stay() {
    let dir = tempfile::tempdir().expect("tmp");
    let (node, _) = broker(None, true).await;
    let q = queue(dir.path());
    let mut cfg = bridge_config(free_port().await);
    cfg.forwards = vec![fwd("a/#", "telemetry")];
    let bridge = Bridge::start(cfg.plan("n1").expect("plan"), q.clone(), node.handle())
        .await
        .expect("bridge");
    let handle = bridge.handle();
    let e = handle
        .set_forwards(vec![fwd("b/#", "telemetry"), fwd("c/#", "nope")])
        .await
        .expect_err("an unknown lane")
        .to_string();
    assert!(
        e.contains("bridge.forwards[1].lane")
            && e.contains("`nope`")
            && e.contains("lanes: alarms, telemetry"),
        "{e}"
    );
    let e = handle
        .set_forwards(vec![fwd("b/#/c", "telemetry")])
        .await
        .expect_err("a bad filter")
        .to_string();
    assert!(e.contains("bridge.forwards[0].filter"), "{e}");
    assert_eq!(handle.forwards().await, vec![fwd("a/#", "telemetry")]);
    assert_eq!(handle.configured_forwards(), &[fwd("a/#", "telemetry")]);
    // Still forwarding `a/#`, and nothing of `b/#`.
    for topic in ["b/1", "a/1"] {
        node.handle()
            .publish(Message::local(topic, "x", QoS::AtLeastOnce, false))
            .await
            .expect("publish");
    }
    wait_for("a/1 to be queued", || handle.link().forwarded == 1).await;
    bridge.shutdown().await;
    let topics: Vec<String> = contents(&q).into_iter().map(|(_, t, _)| t).collect();
    assert_eq!(topics, ["a/1"]);
    q.close().await;
    node.shutdown().await;
}

/// The change repeated under load: each dropped forward hands over what
/// its subscription holds, so no device is told a publish failed, and no
/// message is queued twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_switched_back_and_forth_fail_no_publisher() {
    let dir = tempfile::tempdir().expect("tmp");
    let (node, addr) = broker(Some(0), true).await;
    let q = queue(dir.path());
    let a = vec![
        fwd("keep/#", "telemetry"),
        fwd("drop/#", "telemetry"),
        fwd("move/#", "telemetry"),
    ];
    let b = vec![
        fwd("keep/#", "telemetry"),
        fwd("move/#", "alarms"),
        fwd("new/#", "telemetry"),
    ];
    let mut cfg = bridge_config(free_port().await);
    cfg.forwards = a.clone();
    let bridge = Bridge::start(cfg.plan("n1").expect("plan"), q.clone(), node.handle())
        .await
        .expect("bridge");
    let handle = bridge.handle();
    let (sent, acked, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut publishers = Vec::new();
    for d in 0..3 {
        let device = Device::connect(addr.expect("listener"), &format!("dev{d}")).await;
        let sent = if d == 0 {
            sent.clone()
        } else {
            Arc::new(AtomicU64::new(0))
        };
        let acked = if d == 0 {
            acked.clone()
        } else {
            Arc::new(AtomicU64::new(0))
        };
        publishers.push(tokio::spawn(pipelined(device, sent, acked, stop.clone())));
    }
    for round in 0..20 {
        let at = acked.load(Ordering::SeqCst);
        wait_for("messages between changes", || {
            acked.load(Ordering::SeqCst) >= at + 50
        })
        .await;
        let next = if round % 2 == 0 { &b } else { &a };
        let change = handle.set_forwards(next.clone()).await.expect("set");
        assert_eq!((change.added, change.removed), (1, 1));
    }
    stop.store(true, Ordering::SeqCst);
    for p in publishers {
        let codes = p.await.expect("publisher");
        let failed = codes.iter().filter(|c| **c != 0).count();
        assert_eq!(failed, 0, "of {} publishes", codes.len());
    }
    bridge.shutdown().await;
    let mut seen = std::collections::HashSet::new();
    let mut keep = 0;
    for (_, topic, payload) in contents(&q) {
        // Three devices send the same (topic, payload) pairs; each once.
        let n = (1..).find(|n| seen.insert((topic.clone(), payload.clone(), *n)));
        assert!(
            n.is_some_and(|n| n <= 3),
            "{topic} {payload} queued too often"
        );
        keep += usize::from(topic == "keep/d1");
    }
    assert!(keep > 0);
    q.close().await;
    node.shutdown().await;
}
