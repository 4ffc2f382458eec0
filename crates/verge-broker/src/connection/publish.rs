//! Incoming PUBLISH: topic aliases, checks and the ACL, the publish rate,
//! exactly-once handling of QoS 2, acknowledgements held behind durable
//! subscribers' gates, and the batch of publishes for the router.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::debug;
use verge_mqtt::{Ack, Packet, Properties, Publish, QoS, encode, reason, topic};

use super::{Conn, End, Io, is_reserved};
use crate::durable::{Confirm, Gate};
use crate::message::Message;
use crate::router::Event;
use crate::stats::inc;

/// An acknowledgement (PUBACK for QoS 1, PUBREC for QoS 2) of a client
/// PUBLISH held back: its own gate is not open yet, or one ahead of it is
/// waiting (acknowledgements go out in arrival order).
pub(super) struct HeldAck {
    pub packet_id: u16,
    pub qos: QoS,
    /// Reason code to send if the gate opens with success.
    code: u8,
    /// Durable subscribers' confirmations, if the message needs them.
    gate: Option<Arc<Gate>>,
}

impl Conn {
    /// Most acknowledgements held at once: the Receive Maximum the broker
    /// advertises, which already bounds a client's unacknowledged QoS 1/2
    /// PUBLISHes.
    pub(super) fn ack_limit(&self) -> usize {
        self.ctx.cfg.max_inflight.max(1) as usize
    }

    pub(super) async fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let _ = self.ctx.router.send(Event::Publish(batch)).await;
    }

    pub(super) async fn on_publish<S>(&mut self, io: &mut Io<S>, mut p: Publish) -> Option<End> {
        inc(&self.ctx.stats.messages_received);
        if self.v5()
            && let Some(alias) = p.properties.topic_alias.take()
        {
            if alias == 0 || alias > self.ctx.cfg.max_topic_alias {
                return Some(End::Error(
                    reason::TOPIC_ALIAS_INVALID,
                    "topic alias out of range",
                ));
            }
            if p.topic.is_empty() {
                match self.aliases_in.get(&alias) {
                    Some(t) => p.topic = t.to_string(),
                    None => return Some(End::Error(reason::PROTOCOL_ERROR, "unknown topic alias")),
                }
            } else {
                self.aliases_in.insert(alias, Arc::from(p.topic.as_str()));
            }
        }
        if p.topic.is_empty() || !topic::valid_topic_name(&p.topic) {
            return Some(End::Error(reason::TOPIC_NAME_INVALID, "invalid topic name"));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            return Some(End::Error(
                reason::PROTOCOL_ERROR,
                "subscription identifier in a client PUBLISH",
            ));
        }
        if self.ctx.cfg.max_publish_rate > 0 {
            self.throttle().await;
        }
        // `$SYS/...` belongs to the broker: clients cannot forge statistics.
        let allowed = !is_reserved(&p.topic) && self.ctx.auth.may_publish(&self.identity, &p.topic);
        if !allowed {
            inc(&self.ctx.stats.denied_publish);
            debug!(client_id = %self.identity.client_id, topic = %p.topic, "publish denied by ACL");
        }
        let code = if allowed || !self.v5() {
            reason::SUCCESS
        } else {
            reason::NOT_AUTHORIZED
        };
        let mut hold = Confirm::none();
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let gate = if allowed { self.gate(&mut hold) } else { None };
                self.ack_publish(io, QoS::AtLeastOnce, p.packet_id, code, gate);
            }
            QoS::ExactlyOnce => {
                let dup = self.qos2_in.contains(&p.packet_id);
                if !dup && self.qos2_in.len() >= self.ctx.cfg.max_inflight.max(1) as usize {
                    return Some(End::Error(
                        reason::RECEIVE_MAXIMUM_EXCEEDED,
                        "receive maximum exceeded",
                    ));
                }
                if dup
                    && self
                        .acks
                        .iter()
                        .any(|a| a.packet_id == p.packet_id && a.qos == QoS::ExactlyOnce)
                {
                    // Its PUBREC is still held: that answer covers the resend.
                    return None;
                }
                if code == reason::SUCCESS {
                    self.qos2_in.insert(p.packet_id);
                }
                let gate = if allowed && !dup {
                    self.gate(&mut hold)
                } else {
                    None
                };
                self.ack_publish(io, QoS::ExactlyOnce, p.packet_id, code, gate);
                if dup {
                    // Exactly once: a resent QoS 2 PUBLISH is not routed again.
                    return None;
                }
            }
        }
        if !allowed {
            return None;
        }
        let now = self.arrived.latest;
        let mut props = p.properties;
        props.subscription_identifiers.clear();
        let expires = props
            .message_expiry_interval
            .take()
            .map(|s| now + Duration::from_secs(s as u64));
        self.batch.push((
            Arc::new(Message {
                topic: Arc::from(p.topic),
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                properties: props,
                origin: self.identity.client_id.clone(),
                received: now,
                expires,
                hops: 0,
            }),
            hold,
        ));
        if self.batch.len() >= 64 {
            self.flush_batch().await;
        }
        None
    }

    /// A gate for a QoS 1/2 PUBLISH if any durable subscription exists
    /// (the router decides whether the message reaches one); `hold` becomes
    /// the router's hold on it.
    pub(super) fn gate(&mut self, hold: &mut Confirm) -> Option<Arc<Gate>> {
        if self.ctx.durable.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let wake = self.wake.get_or_insert_with(Default::default).clone();
        let (gate, router_hold) = Gate::new(wake);
        *hold = router_hold;
        Some(gate)
    }

    /// Acknowledge a PUBLISH now, or hold the acknowledgement if it has a
    /// gate or others are held ahead of it.
    pub(super) fn ack_publish<S>(
        &mut self,
        io: &mut Io<S>,
        qos: QoS,
        packet_id: u16,
        code: u8,
        gate: Option<Arc<Gate>>,
    ) {
        if gate.is_none() && self.acks.is_empty() {
            self.encode_ack(io, qos, packet_id, code);
        } else {
            self.acks.push_back(HeldAck {
                packet_id,
                qos,
                code,
                gate,
            });
        }
    }

    pub(super) fn encode_ack<S>(&self, io: &mut Io<S>, qos: QoS, packet_id: u16, code: u8) {
        let ack = Ack {
            packet_id,
            reason_code: code,
            properties: Properties::default(),
        };
        let packet = if qos == QoS::ExactlyOnce {
            Packet::PubRec(ack)
        } else {
            Packet::PubAck(ack)
        };
        let _ = encode(&packet, self.protocol, &mut io.wbuf);
    }

    /// Send the held acknowledgements whose gates are open, oldest first,
    /// up to the first still waiting. A failed gate (a durable subscriber
    /// could not take or persist the message) is answered with 0x97 quota
    /// exceeded on 5.0 and ends a 3.1.1 connection unacknowledged, so the
    /// client resends.
    pub(super) fn release_acks<S>(&mut self, io: &mut Io<S>) -> Option<End> {
        while let Some(front) = self.acks.front() {
            let ok = match &front.gate {
                None => true,
                Some(g) => match g.outcome() {
                    None => break,
                    Some(ok) => ok,
                },
            };
            let a = self.acks.pop_front()?;
            let code = if ok {
                a.code
            } else {
                inc(&self.ctx.stats.durable_refused);
                if a.qos == QoS::ExactlyOnce {
                    self.qos2_in.remove(&a.packet_id);
                }
                if !self.v5() {
                    return Some(End::Error(
                        reason::QUOTA_EXCEEDED,
                        "a durable subscriber did not persist a publish",
                    ));
                }
                reason::QUOTA_EXCEEDED
            };
            self.encode_ack(io, a.qos, a.packet_id, code);
        }
        None
    }

    pub(super) async fn throttle(&mut self) {
        let rate = self.ctx.cfg.max_publish_rate as f64;
        let now = Instant::now();
        self.rate_tokens =
            (self.rate_tokens + now.duration_since(self.rate_at).as_secs_f64() * rate).min(rate);
        self.rate_at = now;
        self.rate_tokens -= 1.0;
        if self.rate_tokens < 0.0 {
            self.flush_batch().await;
            tokio::time::sleep(Duration::from_secs_f64(-self.rate_tokens / rate)).await;
        }
    }

    /// PUBREL of an incoming QoS 2 PUBLISH: forget its id, answer PUBCOMP.
    pub(super) fn on_pubrel<S>(&mut self, io: &mut Io<S>, a: Ack) {
        let found = self.qos2_in.remove(&a.packet_id);
        let comp = Ack {
            packet_id: a.packet_id,
            reason_code: if found {
                reason::SUCCESS
            } else {
                reason::PACKET_IDENTIFIER_NOT_FOUND
            },
            properties: Properties::default(),
        };
        let _ = encode(&Packet::PubComp(comp), self.protocol, &mut io.wbuf);
    }
}
