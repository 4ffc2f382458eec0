//! Outgoing deliveries: resuming a session's inflight messages, packet
//! ids, the inflight window (the client's Receive Maximum), the client's
//! maximum packet size, topic aliases, and the acknowledgements that end a
//! delivery.

use std::sync::Arc;
use std::time::Instant;

use verge_mqtt::{Ack, Packet, Properties, Publish, QoS, encode, encoded_len, reason};

use super::{Conn, Io};
use crate::delivery::Delivery;
use crate::router::{Carry, InflightOut};
use crate::stats::inc;

impl Conn {
    /// Resend what a resumed session had in flight, then its queue.
    pub(super) fn resume<S>(&mut self, io: &mut Io<S>, carry: Carry) {
        self.qos2_in.extend(carry.qos2_in);
        for inf in carry.inflight {
            self.inflight_ids.insert(inf.packet_id);
            if inf.released {
                let rel = Ack {
                    packet_id: inf.packet_id,
                    ..Ack::default()
                };
                let _ = encode(&Packet::PubRel(rel), self.protocol, &mut io.wbuf);
            } else {
                let p = self.publish_packet(&inf.delivery, inf.packet_id, true);
                let _ = encode(&Packet::Publish(p), self.protocol, &mut io.wbuf);
            }
            self.inflight.push_back(inf);
        }
        self.pending.extend(carry.queued);
        self.drain_pending(io);
    }

    /// PUBACK: a QoS 1 delivery is done, which makes room in the window.
    pub(super) fn on_puback<S>(&mut self, io: &mut Io<S>, a: Ack) {
        self.complete(a.packet_id, false);
        self.drain_pending(io);
    }

    /// PUBREC: a QoS 2 delivery was received; answer PUBREL (a failure
    /// code ends it, an unknown id is answered as such).
    pub(super) fn on_pubrec<S>(&mut self, io: &mut Io<S>, a: Ack) {
        if a.reason_code >= 0x80 {
            self.complete(a.packet_id, false);
            self.drain_pending(io);
        } else if let Some(inf) = self
            .inflight
            .iter_mut()
            .find(|i| i.packet_id == a.packet_id)
        {
            inf.released = true;
            let rel = Ack {
                packet_id: a.packet_id,
                ..Ack::default()
            };
            let _ = encode(&Packet::PubRel(rel), self.protocol, &mut io.wbuf);
        } else {
            let rel = Ack {
                packet_id: a.packet_id,
                reason_code: reason::PACKET_IDENTIFIER_NOT_FOUND,
                properties: Properties::default(),
            };
            let _ = encode(&Packet::PubRel(rel), self.protocol, &mut io.wbuf);
        }
    }

    /// PUBCOMP: a released QoS 2 delivery is done.
    pub(super) fn on_pubcomp<S>(&mut self, io: &mut Io<S>, a: Ack) {
        self.complete(a.packet_id, true);
        self.drain_pending(io);
    }

    pub(super) fn complete(&mut self, packet_id: u16, qos2_done: bool) {
        if let Some(pos) = self.inflight.iter().position(|i| i.packet_id == packet_id) {
            let inf = &self.inflight[pos];
            // PUBACK ends QoS 1; PUBCOMP ends a released QoS 2.
            if qos2_done == inf.released || inf.delivery.qos == QoS::AtLeastOnce {
                self.inflight.remove(pos);
                self.inflight_ids.remove(&packet_id);
            }
        }
    }

    pub(super) fn drain_pending<S>(&mut self, io: &mut Io<S>) {
        while self.inflight.len() < self.window {
            let Some(d) = self.pending.pop_front() else {
                break;
            };
            self.send_delivery(io, d);
        }
    }

    pub(super) fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = if self.next_id == u16::MAX {
                1
            } else {
                self.next_id + 1
            };
            if !self.inflight_ids.contains(&id) {
                return id;
            }
        }
    }

    /// Encode one delivery into the write buffer, or queue it if the
    /// window is full.
    pub(super) fn send_delivery<S>(&mut self, io: &mut Io<S>, d: Delivery) {
        if d.msg.expired(Instant::now()) {
            inc(&self.ctx.stats.dropped_expired);
            return;
        }
        if d.qos != QoS::AtMostOnce && self.inflight.len() >= self.window {
            if self.pending.len() >= self.ctx.cfg.max_queued_messages {
                inc(&self.ctx.stats.dropped_queue_full);
            } else {
                self.pending.push_back(d);
            }
            return;
        }
        let packet_id = if d.qos == QoS::AtMostOnce {
            0
        } else {
            self.next_packet_id()
        };
        let mut p = self.publish_packet(&d, packet_id, false);
        if self.client_max_packet != usize::MAX {
            let packet = Packet::Publish(p);
            if encoded_len(&packet, self.protocol) > self.client_max_packet {
                inc(&self.ctx.stats.dropped_too_large);
                return;
            }
            let Packet::Publish(back) = packet else {
                return;
            };
            p = back;
        }
        if self.client_alias_max > 0 {
            self.apply_alias(&mut p);
        }
        if encode(&Packet::Publish(p), self.protocol, &mut io.wbuf).is_err() {
            inc(&self.ctx.stats.dropped_too_large);
            return;
        }
        inc(&self.ctx.stats.messages_sent);
        if d.qos != QoS::AtMostOnce {
            self.inflight_ids.insert(packet_id);
            self.inflight.push_back(InflightOut {
                packet_id,
                delivery: d,
                released: false,
            });
        }
    }

    pub(super) fn apply_alias(&mut self, p: &mut Publish) {
        if let Some(&a) = self.aliases_out.get(p.topic.as_str()) {
            p.properties.topic_alias = Some(a);
            p.topic.clear();
        } else if (self.aliases_out.len() as u16) < self.client_alias_max {
            let a = self.aliases_out.len() as u16 + 1;
            self.aliases_out.insert(Arc::from(p.topic.as_str()), a);
            p.properties.topic_alias = Some(a);
        }
    }

    pub(super) fn publish_packet(&self, d: &Delivery, packet_id: u16, dup: bool) -> Publish {
        let msg = &d.msg;
        let properties = if self.v5() {
            let mut props = msg.properties.clone();
            if let Some(e) = msg.expires {
                let left = e.saturating_duration_since(Instant::now()).as_secs().max(1);
                props.message_expiry_interval = Some(left.min(u32::MAX as u64) as u32);
            }
            props.subscription_identifiers = d.sub_ids.clone();
            props
        } else {
            Properties::default()
        };
        Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: msg.topic.to_string(),
            packet_id,
            properties,
            payload: msg.payload.clone(),
        }
    }
}
