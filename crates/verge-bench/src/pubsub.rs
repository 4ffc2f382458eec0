//! The publisher and subscriber loops of `verge bench broker` and `verge
//! bench rules`.
//!
//! Publishers either put a send timestamp (nanoseconds since the run's
//! shared start `Instant`, 8 bytes big-endian) at the start of every payload
//! or cycle through prepared messages ([`Messages`]), and write
//! batches of PUBLISH packets as fast as the broker takes them; at QoS 1 a
//! semaphore bounds the unacknowledged ones. Subscribers read with a large
//! buffer, decode every packet a read brought, record latencies and answer
//! PUBACKs in one write per read, so they are not the bottleneck.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Semaphore;
use verge_metrics::Histogram;
use verge_mqtt::{Ack, Packet, Properties, Publish, QoS};

use super::client::{Client, Reader};

/// Packets encoded per write by a publisher.
const BATCH: usize = 64;
/// Read buffer of a subscriber.
const READ_BUF: usize = 256 * 1024;
/// Read buffer of a publisher's acknowledgement reader.
const ACK_READ_BUF: usize = 64 * 1024;
/// Poll interval of a subscriber waiting for the end of the run.
const TICK: Duration = Duration::from_millis(100);

/// What every publisher and subscriber of one run shares.
#[derive(Debug)]
pub struct Plan {
    /// QoS of publishes and subscriptions.
    pub qos: QoS,
    /// Payload size in bytes (at least 8).
    pub payload: usize,
    /// Most unacknowledged QoS 1 publishes per publisher.
    pub window: usize,
    /// Messages per second per publisher; 0 = as fast as possible.
    pub rate: u64,
    /// Origin of the payload timestamps.
    pub t0: Instant,
    /// Measurement window, as offsets from `t0`: `[from, to)`; publishing
    /// stops at `to`.
    pub from: Duration,
    /// End of the measurement window.
    pub to: Duration,
    /// How long to wait for outstanding acknowledgements and deliveries
    /// after publishing stopped (subscribers: without progress).
    pub drain: Duration,
    /// Per-subscriber expected deliveries, `u64::MAX` while publishers run.
    pub expected: AtomicU64,
    /// Whether delivered payloads start with the send timestamp
    /// ([`Messages::Stamped`]), so subscribers record latency.
    pub stamped: bool,
}

impl Plan {
    fn in_window(&self, ns: u64) -> bool {
        (self.from.as_nanos() as u64..self.to.as_nanos() as u64).contains(&ns)
    }

    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }
}

/// What a publisher sends.
#[derive(Debug, Clone)]
pub enum Messages {
    /// Payloads of `Plan::payload` bytes to this one topic, each starting
    /// with its send timestamp, so subscribers measure latency.
    Stamped(String),
    /// These topic/payload pairs in turn, round and round (no timestamp);
    /// must not be empty.
    Cycle(Arc<[(String, Bytes)]>),
}

impl Messages {
    /// The `seq`th message, stamped with `ts`.
    fn nth(&self, seq: u64, ts: u64, size: usize) -> Option<(String, Bytes)> {
        match self {
            Messages::Stamped(topic) => {
                let mut payload = BytesMut::with_capacity(size);
                payload.put_u64(ts);
                payload.put_bytes(0, size.saturating_sub(8));
                Some((topic.clone(), payload.freeze()))
            }
            Messages::Cycle(list) => {
                let i = usize::try_from(seq % list.len().max(1) as u64).ok()?;
                list.get(i).cloned()
            }
        }
    }
}

/// One publisher's counts.
#[derive(Debug, Default, Clone)]
pub struct PubResult {
    /// PUBLISH packets written.
    pub sent: u64,
    /// Of those, sent inside the measurement window.
    pub sent_in_window: u64,
    /// QoS 1: acknowledged with success.
    pub acked: u64,
    /// QoS 1: acknowledged with an error reason code.
    pub refused: u64,
}

/// One subscriber's counts and latencies.
#[derive(Debug, Default)]
pub struct SubResult {
    /// PUBLISH packets received.
    pub received: u64,
    /// Of those, received inside the measurement window.
    pub received_in_window: u64,
    /// End-to-end latency (ns) of messages sent inside the window.
    pub latency: Histogram,
}

/// Publish `messages` until the end of the window, then wait for the
/// outstanding acknowledgements and disconnect.
pub async fn publisher(
    plan: Arc<Plan>,
    client: Client,
    messages: Messages,
) -> anyhow::Result<PubResult> {
    if matches!(&messages, Messages::Cycle(list) if list.is_empty()) {
        bail!("a publisher has no messages to send");
    }
    let qos1 = plan.qos != QoS::AtMostOnce;
    let (rd, mut wr) = client.into_split();
    let permits = Arc::new(Semaphore::new(plan.window));
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(read_acks(
        rd,
        permits.clone(),
        acked.clone(),
        refused.clone(),
    ));
    let stop_at = plan.t0 + plan.to;
    let mut res = PubResult::default();
    wr.reserve(BATCH * (plan.payload + 64));
    let mut next_id: u16 = 0;
    loop {
        if Instant::now() >= stop_at || reader.is_finished() {
            break;
        }
        let mut n = BATCH as u64;
        if plan.rate > 0 {
            let due = (plan.t0.elapsed().as_secs_f64() * plan.rate as f64) as u64;
            if res.sent >= due {
                let next =
                    plan.t0 + Duration::from_secs_f64((res.sent + 1) as f64 / plan.rate as f64);
                tokio::time::sleep_until(next.min(stop_at).into()).await;
                continue;
            }
            n = n.min(due - res.sent);
        }
        if qos1 {
            let permit = tokio::select! {
                p = permits.acquire() => p.context("ack reader stopped")?,
                _ = tokio::time::sleep_until(stop_at.into()) => break,
            };
            permit.forget();
            let extra = (permits.available_permits() as u64).min(n - 1) as u32;
            let extra = match permits.try_acquire_many(extra) {
                Ok(p) if extra > 0 => {
                    p.forget();
                    extra
                }
                _ => 0,
            };
            n = 1 + extra as u64;
        }
        for k in 0..n {
            let ts = plan.now_ns();
            let (topic, payload) = messages
                .nth(res.sent + k, ts, plan.payload)
                .context("no message to publish")?;
            let packet_id = if qos1 {
                next_id = next_id.checked_add(1).unwrap_or(1);
                next_id
            } else {
                0
            };
            let publish = Publish {
                dup: false,
                qos: plan.qos,
                retain: false,
                topic,
                packet_id,
                properties: Properties::default(),
                payload,
            };
            wr.queue(&Packet::Publish(publish))
                .context("encoding PUBLISH")?;
            if plan.in_window(ts) {
                res.sent_in_window += 1;
            }
        }
        // A broker that stops reading must not hang the bench.
        match tokio::time::timeout_at((stop_at + plan.drain).into(), wr.flush()).await {
            Ok(r) => r.context("publishing")?,
            Err(_) => {
                bail!("the broker stopped reading (a publish blocked past the end of the run)")
            }
        }
        res.sent += n;
        // A socket that always has room never makes this task yield; give
        // the subscribers on the same workers their turn.
        tokio::task::yield_now().await;
    }
    if qos1 {
        let deadline = Instant::now() + plan.drain;
        while acked.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed) < res.sent
            && Instant::now() < deadline
            && !reader.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    res.acked = acked.load(Ordering::Relaxed);
    res.refused = refused.load(Ordering::Relaxed);
    if reader.is_finished() {
        reader.await.context("ack reader")??;
        bail!("the broker closed the connection");
    }
    wr.disconnect().await;
    reader.abort();
    Ok(res)
}

/// Count PUBACKs and give their window slots back.
async fn read_acks(
    mut rd: Reader,
    permits: Arc<Semaphore>,
    acked: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    loop {
        while let Some(p) = rd.next_packet().context("decoding from the broker")? {
            match p {
                Packet::PubAck(a) => {
                    let counter = if a.reason_code < 0x80 {
                        &acked
                    } else {
                        &refused
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    permits.add_permits(1);
                }
                Packet::Disconnect(d) => bail!(
                    "the broker disconnected a publisher (reason 0x{:02x})",
                    d.reason_code
                ),
                _ => {}
            }
        }
        if rd
            .fill(ACK_READ_BUF)
            .await
            .context("reading acknowledgements")?
            == 0
        {
            return Ok(());
        }
    }
}

/// Receive until every expected message arrived or nothing arrived for the
/// drain time after publishing stopped.
pub async fn subscriber(plan: Arc<Plan>, client: Client) -> anyhow::Result<SubResult> {
    let (mut rd, mut wr) = client.into_split();
    let mut res = SubResult::default();
    wr.reserve(16 * 1024);
    let mut last_progress = Instant::now();
    loop {
        let expected = plan.expected.load(Ordering::Relaxed);
        if res.received >= expected
            || (expected != u64::MAX && last_progress.elapsed() >= plan.drain)
        {
            break;
        }
        match tokio::time::timeout(TICK, rd.fill(READ_BUF)).await {
            Err(_) => continue,
            Ok(Ok(0)) => bail!("the broker closed the connection"),
            Ok(Err(e)) => return Err(e).context("reading deliveries"),
            Ok(Ok(_)) => {}
        }
        let now = plan.now_ns();
        let before = res.received;
        while let Some(p) = rd.next_packet().context("decoding from the broker")? {
            match p {
                Packet::Publish(p) => {
                    res.received += 1;
                    if plan.in_window(now) {
                        res.received_in_window += 1;
                    }
                    if let Some(ts) = p
                        .payload
                        .get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .filter(|_| plan.stamped)
                    {
                        let ts = u64::from_be_bytes(ts);
                        if plan.in_window(ts) {
                            res.latency.record_mut(now.saturating_sub(ts));
                        }
                    }
                    let ack = Ack {
                        packet_id: p.packet_id,
                        ..Ack::default()
                    };
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => wr.queue(&Packet::PubAck(ack))?,
                        QoS::ExactlyOnce => wr.queue(&Packet::PubRec(ack))?,
                    }
                }
                Packet::PubRel(a) => wr.queue(&Packet::PubComp(a))?,
                Packet::Disconnect(d) => {
                    bail!(
                        "the broker disconnected a subscriber (reason 0x{:02x})",
                        d.reason_code
                    )
                }
                _ => {}
            }
        }
        if res.received > before {
            last_progress = Instant::now();
        }
        if wr.has_queued() {
            wr.flush().await.context("acknowledging deliveries")?;
        }
    }
    wr.disconnect().await;
    Ok(res)
}
