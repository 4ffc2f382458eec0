//! The upstream consumer on the external broker: an MQTT 5 connection on
//! a persistent session (clean start off, a session expiry, a client id
//! stable per replica) holding the shared subscription
//! `$share/{group}/nodes/+/up/#` at QoS 1 with manual acknowledgement.
//! Each message goes to `ingest::run` with an [`Ack`] that sends its
//! PUBACK once the batch holding it committed. A message that could not
//! be stored is not acknowledged: the connection is dropped and made
//! again, and the broker resends what the session holds unacknowledged.
//!
//! Store replies (`…/up/$verge/store-reply/…`) reach every replica on
//! its own plain subscription (`crate::downlink`); the shared consumer
//! acknowledges and skips them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use tokio::sync::{Notify, mpsc};
use verge_broker::{DurableMessage, Message};
use verge_protocol::device::{self, DeviceChannel};
use verge_protocol::topics;

use super::Plan;
use crate::Cloud;
use crate::ingest::Upstream;

/// Most unacknowledged messages the broker may send one connection
/// (MQTT 5 Receive Maximum; Mosquitto also caps it at its
/// `max_inflight_messages`).
pub const RECEIVE_MAXIMUM: u16 = 1000;

/// The acknowledgement of one message received from the external broker.
pub struct Ack {
    client: AsyncClient,
    pkid: u16,
    qos: QoS,
    /// Wakes the connection's owner to drop and remake the connection.
    failed: Arc<Notify>,
    /// Messages of the connection not yet acknowledged (adoption drains
    /// until none are left).
    outstanding: Arc<AtomicUsize>,
    /// Acknowledgements queued so far (an adoption's quiet time counts
    /// from the last of them too).
    acked: Arc<AtomicU64>,
    /// Settled: acknowledged or failed (an `Ack` dropped unsettled fails).
    done: bool,
}

impl Ack {
    /// Send the PUBACK. If the connection is gone meanwhile, the broker
    /// resends the message on the next one (the database drops the
    /// duplicate by its `verge-id`).
    pub async fn ok(mut self) {
        let p = Publish {
            dup: false,
            qos: self.qos,
            retain: false,
            topic: Bytes::new(),
            pkid: self.pkid,
            payload: Bytes::new(),
            properties: None,
        };
        if self.client.ack(&p).await.is_err() {
            tracing::debug!(
                pkid = self.pkid,
                "external broker: acknowledgement for a closed connection"
            );
        }
        self.settle();
    }

    /// Not stored: drop the connection without acknowledging, so the
    /// broker sends the message again once the session is resumed.
    pub fn fail(mut self) {
        self.failed.notify_one();
        self.settle();
    }

    fn settle(&mut self) {
        if !self.done {
            self.done = true;
            self.acked.fetch_add(1, Ordering::AcqRel);
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Dropped without a decision (a task that ended mid-batch): as
/// [`Ack::fail`], so the broker sends the message again.
impl Drop for Ack {
    fn drop(&mut self) {
        if !self.done {
            self.failed.notify_one();
            self.settle();
        }
    }
}

/// One connection to the external broker.
pub struct Conn {
    /// Its client.
    pub client: AsyncClient,
    events: EventLoop,
    failed: Arc<Notify>,
    /// Messages received and not yet acknowledged.
    pub outstanding: Arc<AtomicUsize>,
    acked: Arc<AtomicU64>,
}

impl Conn {
    /// Prepare a connection as `client_id` (connected on the first poll).
    pub fn new(plan: &Plan, client_id: &str, clean_start: bool, session_expiry_secs: u32) -> Conn {
        let mut o = plan.options(client_id);
        o.set_clean_start(clean_start);
        o.set_session_expiry_interval(Some(session_expiry_secs));
        o.set_manual_acks(true);
        o.set_receive_maximum(Some(RECEIVE_MAXIMUM));
        // Acknowledgements and the subscription go through this channel;
        // room for every message the broker may have in flight, so an
        // acknowledgement never waits for the event loop.
        let (client, events) = AsyncClient::new(o, usize::from(RECEIVE_MAXIMUM) * 2);
        Conn {
            client,
            events,
            failed: Arc::new(Notify::new()),
            outstanding: Arc::new(AtomicUsize::new(0)),
            acked: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Conn {
    /// Poll until the CONNACK (true) or a failure (false).
    pub async fn connected(&mut self) -> bool {
        loop {
            match self.events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// Poll until the connection ends (after a DISCONNECT was queued).
    /// The number of messages that arrived meanwhile (left unacknowledged
    /// in the session).
    pub async fn events_until_closed(&mut self) -> usize {
        let mut arrived = 0;
        loop {
            match self.events.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => arrived += 1,
                Ok(_) => {}
                Err(_) => return arrived,
            }
        }
    }
}

/// How a [`pump`] ended.
pub enum Ended {
    /// The cloud is stopping.
    Stopped,
    /// Nothing arrived and nothing was acknowledged for the quiet time, and
    /// nothing is unacknowledged.
    Quiet,
    /// The connection failed or was dropped on purpose.
    Lost(String),
}

/// What a connection is for (logs and metrics).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This replica's own shared consumer.
    Own,
    /// Draining another replica's session.
    Adopting,
}

/// Poll `conn` and send its messages to `tx` until it fails, the cloud
/// stops, or (with `quiet`) every message was acknowledged and nothing
/// arrived or was acknowledged for that long (an acknowledgement is
/// queued before its PUBACK leaves, and the broker sends the next window
/// of a backlog only after the PUBACKs: quiet counts from both).
pub async fn pump(
    cloud: &Cloud,
    conn: &mut Conn,
    tx: &mpsc::Sender<Upstream>,
    role: Role,
    quiet: Option<Duration>,
) -> Ended {
    let mut stop = cloud.inner().stop.subscribe();
    let m = &cloud.inner().metrics;
    let mut last = Instant::now();
    let mut acked = conn.acked.load(Ordering::Acquire);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let ev = tokio::select! {
            ev = conn.events.poll() => ev,
            () = conn.failed.notified() => {
                return Ended::Lost(
                    "a message could not be stored; reconnecting so the broker resends it".into(),
                );
            }
            _ = tick.tick() => {
                let now_acked = conn.acked.load(Ordering::Acquire);
                if now_acked != acked {
                    acked = now_acked;
                    last = Instant::now();
                }
                if let Some(q) = quiet
                    && last.elapsed() >= q
                    && conn.outstanding.load(Ordering::Acquire) == 0
                {
                    return Ended::Quiet;
                }
                continue;
            }
            _ = stop.wait_for(|s| *s) => return Ended::Stopped,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return Ended::Lost(e.to_string()),
        };
        let Event::Incoming(packet) = ev else {
            continue;
        };
        match packet {
            Packet::ConnAck(ack) => {
                if role == Role::Own {
                    m.external_connected.store(1, Ordering::Relaxed);
                }
                m.external_connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    session_present = ack.session_present,
                    adopting = role == Role::Adopting,
                    "external broker: connected"
                );
            }
            Packet::SubAck(s) => {
                if let Some(bad) = s.return_codes.iter().find(|c| {
                    !matches!(
                        c,
                        rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                    )
                }) {
                    return Ended::Lost(format!(
                        "the broker refused the subscription ({bad:?}); check the cloud user's ACL"
                    ));
                }
            }
            Packet::Publish(p) => {
                last = Instant::now();
                if role == Role::Adopting {
                    m.external_adopted_messages.fetch_add(1, Ordering::Relaxed);
                }
                conn.outstanding.fetch_add(1, Ordering::AcqRel);
                let ack = Ack {
                    client: conn.client.clone(),
                    pkid: p.pkid,
                    qos: p.qos,
                    failed: conn.failed.clone(),
                    outstanding: conn.outstanding.clone(),
                    acked: conn.acked.clone(),
                    done: false,
                };
                let Some(msg) = message(&p) else {
                    // A topic that is not UTF-8: never storable.
                    ack.ok().await;
                    continue;
                };
                if is_store_reply(&msg.topic) {
                    // Answered through every replica's own subscription.
                    ack.ok().await;
                    continue;
                }
                let up = Upstream {
                    msg: DurableMessage {
                        msg: Arc::new(msg),
                        confirm: Default::default(),
                    },
                    ack: Some(ack),
                };
                if tx.send(up).await.is_err() {
                    return Ended::Stopped;
                }
            }
            Packet::Disconnect(d) => {
                return Ended::Lost(format!("the broker disconnected: {:?}", d.reason_code));
            }
            _ => {}
        }
    }
}

/// The broker's message as the ingest takes it.
pub fn message(p: &Publish) -> Option<Message> {
    let topic = std::str::from_utf8(&p.topic).ok()?;
    let mut msg = Message::local(
        topic,
        p.payload.clone(),
        verge_mqtt::QoS::AtLeastOnce,
        false,
    );
    if let Some(props) = &p.properties {
        msg.properties.user_properties = props.user_properties.clone();
    }
    msg.origin = Arc::from("$external");
    Some(msg)
}

/// `nodes/{id}/up/$verge/store-reply/{device}`.
pub fn is_store_reply(topic: &str) -> bool {
    topics::parse_up(topic).is_some_and(|(_, rest)| {
        matches!(
            device::parse_device_channel(rest),
            Some((DeviceChannel::StoreReply, _))
        )
    })
}

/// This replica's consumer: connect, subscribe, pump; reconnect with
/// backoff (1 s doubling to 30 s, back to 1 s after a connection that
/// lasted a minute) until the cloud stops.
pub async fn run(cloud: Cloud, plan: Arc<Plan>, tx: mpsc::Sender<Upstream>) {
    let client_id = plan.consumer_client_id();
    let m = &cloud.inner().metrics;
    let mut backoff = Duration::from_secs(1);
    let mut stop = cloud.inner().stop.subscribe();
    loop {
        let mut conn = Conn::new(&plan, &client_id, false, plan.session_expiry_secs);
        // Queued now, sent after the CONNACK; repeated on every connect
        // (a session the broker expired has lost it).
        if let Err(e) = conn
            .client
            .subscribe(plan.shared_filter(), QoS::AtLeastOnce)
            .await
        {
            tracing::warn!("external broker: subscription not queued: {e}");
        }
        let started = Instant::now();
        let ended = pump(&cloud, &mut conn, &tx, Role::Own, None).await;
        m.external_connected.store(0, Ordering::Relaxed);
        match ended {
            Ended::Stopped => {
                // A clean DISCONNECT keeps the session (its expiry is set).
                let _ = conn.client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_millis(500), conn.events.poll()).await;
                return;
            }
            Ended::Quiet => {}
            Ended::Lost(why) => {
                m.external_connection_losses.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    client_id = %client_id,
                    "external broker {}:{}: {why}; reconnecting in {}s",
                    plan.host,
                    plan.port,
                    backoff.as_secs()
                );
            }
        }
        drop(conn);
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_replies_are_told_apart() {
        assert!(is_store_reply("nodes/n1/up/$verge/store-reply/d1"));
        assert!(!is_store_reply("nodes/n1/up/$verge/shadow/d1"));
        assert!(!is_store_reply("nodes/n1/up/devices/d1/telemetry"));
    }

    #[test]
    fn messages_keep_their_verge_id() {
        let mut p = Publish::new(
            "nodes/n1/up/t",
            QoS::AtLeastOnce,
            Bytes::from_static(b"x"),
            None,
        );
        p.properties = Some(rumqttc::v5::mqttbytes::v5::PublishProperties {
            user_properties: vec![("verge-id".into(), "abc".into())],
            ..Default::default()
        });
        let m = message(&p).expect("utf-8 topic");
        assert_eq!(&*m.topic, "nodes/n1/up/t");
        assert_eq!(
            m.properties.user_properties,
            vec![("verge-id".to_owned(), "abc".to_owned())]
        );
        p.topic = Bytes::from_static(b"\xff");
        assert!(message(&p).is_none());
    }
}
