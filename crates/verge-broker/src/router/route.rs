//! Routing: a session's SUBSCRIBE (with the `max_subscriptions` quota) and
//! UNSUBSCRIBE, a message to every matching subscriber (socket or
//! in-process), and the retained store.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use verge_mqtt::{QoS, reason, topic};

use super::{Router, SubReq, split_shared};
use crate::delivery::Delivery;
use crate::durable::{Confirm, Gate};
use crate::mailbox::PushError;
use crate::message::Message;
use crate::stats::inc;
use crate::subs::{SubEntry, SubKey};

impl Router {
    pub(super) fn on_subscribe(
        &mut self,
        key: SubKey,
        filters: Vec<SubReq>,
    ) -> (Vec<u8>, Vec<Delivery>) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for req in filters {
            if let Some(code) = req.refused {
                codes.push(code);
                continue;
            }
            // Subscribing again to a filter the session holds replaces it.
            if self.sessions.get(&key).is_some_and(|s| {
                s.subs.len() >= self.cfg.max_subscriptions && !s.subs.contains_key(&req.filter)
            }) {
                inc(&self.stats.refused_subscriptions);
                codes.push(reason::QUOTA_EXCEEDED);
                continue;
            }
            let (group, f) = split_shared(&req.filter);
            let entry = SubEntry {
                options: req.options,
                id: req.id,
            };
            let existed = self.tree.insert(f, group, key, entry);
            if let Some(s) = self.sessions.get_mut(&key) {
                s.subs.insert(req.filter.clone(), entry);
            }
            codes.push(req.options.qos as u8);
            let rh = req.options.retain_handling;
            if group.is_none() && (rh == 0 || (rh == 1 && !existed)) {
                let now = Instant::now();
                for (t, m) in &self.retained {
                    if topic::matches(f, t) && !m.expired(now) {
                        retained.push(Delivery {
                            msg: m.clone(),
                            qos: m.qos.min(req.options.qos),
                            retain: true,
                            sub_ids: req.id.into_iter().collect(),
                        });
                    }
                }
            }
        }
        (codes, retained)
    }

    pub(super) fn unsubscribe(&mut self, key: SubKey, filter: &str) -> u8 {
        let (group, f) = split_shared(filter);
        if !verge_mqtt::topic::valid_topic_filter(f) {
            return reason::TOPIC_FILTER_INVALID;
        }
        let removed = self.tree.remove(f, group, key);
        if let Some(s) = self.sessions.get_mut(&key) {
            s.subs.remove(filter);
        }
        if removed {
            reason::SUCCESS
        } else {
            reason::NO_SUBSCRIPTION_EXISTED
        }
    }

    /// Route one message nobody waits for to every matching subscriber.
    pub fn route(&mut self, msg: Arc<Message>) {
        self.route_held(msg, &Confirm::none());
    }

    /// Route one message to every matching subscriber; each durable local
    /// subscriber that takes it adds a hold on `hold`'s gate.
    pub(super) fn route_held(&mut self, msg: Arc<Message>, hold: &Confirm) {
        if msg.retain {
            self.retain(&msg);
        }
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();
        {
            let sessions = &self.sessions;
            let locals = &self.locals;
            let online = |k: SubKey| {
                sessions.get(&k).is_some_and(|s| s.link.is_some()) || locals.contains_key(&k)
            };
            self.tree.matches(&msg.topic, &online, &mut hits);
        }
        if hits.len() > 1 {
            hits.sort_unstable_by_key(|h| h.key);
        }
        let mut i = 0;
        while i < hits.len() {
            let key = hits[i].key;
            let mut qos: Option<QoS> = None;
            let mut retain = false;
            let mut ids = Vec::new();
            while i < hits.len() && hits[i].key == key {
                let h = hits[i];
                i += 1;
                let o = h.entry.options;
                if o.no_local && !h.shared && self.is_origin(key, &msg.origin) {
                    continue;
                }
                qos = Some(qos.map_or(o.qos, |q| q.max(o.qos)));
                retain |= o.retain_as_published && msg.retain;
                if let Some(id) = h.entry.id {
                    ids.push(id);
                }
            }
            if let Some(q) = qos {
                self.deliver(
                    key,
                    Delivery {
                        qos: msg.qos.min(q),
                        msg: msg.clone(),
                        retain,
                        sub_ids: ids,
                    },
                    hold.gate(),
                );
            }
        }
        self.hits = hits;
    }

    pub(super) fn is_origin(&self, key: SubKey, origin: &str) -> bool {
        self.sessions
            .get(&key)
            .is_some_and(|s| &*s.client_id == origin)
    }

    pub(super) fn retain(&mut self, msg: &Arc<Message>) {
        if msg.payload.is_empty() {
            self.retained.remove(&msg.topic);
            return;
        }
        if self.retained.len() >= self.cfg.max_retained && !self.retained.contains_key(&msg.topic) {
            inc(&self.stats.dropped_retained_full);
            return;
        }
        self.retained.insert(msg.topic.clone(), msg.clone());
    }

    pub(super) fn deliver(&mut self, key: SubKey, d: Delivery, gate: Option<&Arc<Gate>>) {
        if let Some(s) = self.sessions.get_mut(&key) {
            match &mut s.link {
                Some(link) => {
                    if link.slow && link.mailbox.room() * 2 >= link.mailbox.capacity() {
                        link.slow = false;
                    }
                    if link.stalled {
                        // keep order behind what already waits for room
                        self.stalled.push((key, link.mailbox.clone(), d));
                        return;
                    }
                    match link.mailbox.try_push(d) {
                        Ok(()) => {}
                        Err(PushError::Full(d)) if !link.slow => {
                            link.stalled = true;
                            self.stalled.push((key, link.mailbox.clone(), d));
                        }
                        Err(PushError::Full(_)) => inc(&self.stats.dropped_queue_full),
                        // The connection is ending: keep it for the session.
                        Err(PushError::Closed(d)) => self.keep_offline(key, d),
                    }
                }
                None if d.qos == QoS::AtMostOnce => inc(&self.stats.dropped_offline_qos0),
                None if s.offline.len() + s.carry.queued.len() >= self.cfg.max_queued => {
                    inc(&self.stats.dropped_queue_full)
                }
                None => s.offline.push_back(d),
            }
        } else if let Some(l) = self.locals.get(&key) {
            if l.sink.try_send(d.msg, gate) {
                inc(&self.stats.messages_sent);
            } else {
                l.dropped.fetch_add(1, Ordering::Relaxed);
                inc(&self.stats.dropped_queue_full);
            }
        }
    }
}
