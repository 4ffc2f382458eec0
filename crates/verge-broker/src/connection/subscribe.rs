//! SUBSCRIBE and UNSUBSCRIBE: checks, the ACL, the router's answer and the
//! retained messages a new subscription receives.

use tokio::sync::oneshot;
use verge_mqtt::{
    Packet, Properties, SubAck, Subscribe, UnsubAck, Unsubscribe, encode, reason, topic,
};

use super::{Conn, End, Io};
use crate::router::{Event, SubReq, split_shared};
use crate::stats::inc;

impl Conn {
    pub(super) async fn on_subscribe<S>(&mut self, io: &mut Io<S>, s: Subscribe) -> Option<End> {
        let id = s.properties.subscription_identifiers.first().copied();
        let v5 = self.v5();
        // 5.0 §3.8.3.1: No Local on a shared subscription is a protocol error
        if v5
            && s.filters
                .iter()
                .any(|f| f.options.no_local && topic::parse_shared(&f.filter).is_some())
        {
            return Some(End::Error(
                reason::PROTOCOL_ERROR,
                "no local on a shared subscription",
            ));
        }
        let filters = s
            .filters
            .into_iter()
            .map(|f| {
                let valid = if f.filter.starts_with("$share/") {
                    topic::valid_shared(&f.filter)
                } else {
                    topic::valid_topic_filter(&f.filter)
                };
                let refused = if !valid {
                    Some(reason::TOPIC_FILTER_INVALID)
                } else if !self
                    .ctx
                    .auth
                    .may_subscribe(&self.identity, split_shared(&f.filter).1)
                {
                    inc(&self.ctx.stats.denied_subscribe);
                    Some(reason::NOT_AUTHORIZED)
                } else {
                    None
                };
                let mut options = f.options;
                if !v5 {
                    options.no_local = false;
                    options.retain_as_published = false;
                    options.retain_handling = 0;
                }
                SubReq {
                    filter: f.filter,
                    options,
                    id,
                    refused,
                }
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        let ev = Event::Subscribe {
            key: self.key,
            filters,
            arrived: self.arrived.earliest,
            reply: tx,
        };
        if self.ctx.router.send(ev).await.is_err() {
            return Some(End::Error(reason::SERVER_SHUTTING_DOWN, "router gone"));
        }
        let Ok((codes, retained)) = rx.await else {
            return Some(End::Error(reason::SERVER_SHUTTING_DOWN, "router gone"));
        };
        let ack = SubAck {
            packet_id: s.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        };
        let _ = encode(&Packet::SubAck(ack), self.protocol, &mut io.wbuf);
        for d in retained {
            self.send_delivery(io, d);
        }
        None
    }

    pub(super) async fn on_unsubscribe<S>(
        &mut self,
        io: &mut Io<S>,
        u: Unsubscribe,
    ) -> Option<End> {
        let (tx, rx) = oneshot::channel();
        let ev = Event::Unsubscribe {
            key: self.key,
            filters: u.filters,
            reply: tx,
        };
        if self.ctx.router.send(ev).await.is_err() {
            return Some(End::Error(reason::SERVER_SHUTTING_DOWN, "router gone"));
        }
        let Ok(codes) = rx.await else {
            return Some(End::Error(reason::SERVER_SHUTTING_DOWN, "router gone"));
        };
        let ack = UnsubAck {
            packet_id: u.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        };
        let _ = encode(&Packet::UnsubAck(ack), self.protocol, &mut io.wbuf);
        None
    }
}
