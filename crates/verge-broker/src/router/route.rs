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

/// A subscription a SUBSCRIBE made (not one it replaced).
struct Fresh {
    /// As subscribed, `$share/` included.
    filter: String,
    entry: SubEntry,
    /// The retained messages it matches went with the SUBACK.
    retained_sent: bool,
}

impl Router {
    pub(super) fn on_subscribe(
        &mut self,
        key: SubKey,
        filters: Vec<SubReq>,
        arrived: Instant,
    ) -> (Vec<u8>, Vec<Delivery>) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut sent = Vec::new();
        let mut fresh = Vec::new();
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
            // A shared group that had members gave them what it matched.
            let group_was_empty = group.is_some_and(|g| self.tree.group_is_empty(f, g));
            let existed = self.tree.insert(f, group, key, entry);
            if let Some(s) = self.sessions.get_mut(&key) {
                s.subs.insert(req.filter.clone(), entry);
            }
            codes.push(req.options.qos as u8);
            let rh = req.options.retain_handling;
            let retained_sent = group.is_none() && (rh == 0 || (rh == 1 && !existed));
            if retained_sent {
                let now = Instant::now();
                for (t, m) in &self.retained {
                    if topic::matches(f, t) && !m.expired(now) {
                        sent.push(Delivery {
                            msg: m.clone(),
                            qos: m.qos.min(req.options.qos),
                            retain: true,
                            sub_ids: req.id.into_iter().collect(),
                        });
                    }
                }
            }
            if !existed && (group.is_none() || group_was_empty) {
                fresh.push(Fresh {
                    filter: req.filter,
                    entry,
                    retained_sent,
                });
            }
        }
        if !fresh.is_empty() {
            self.replay(key, &fresh, arrived, &mut sent);
        }
        (codes, sent)
    }

    /// Give new subscriptions the messages routed before them that arrived
    /// after their SUBSCRIBE (see `recent`), once per message, in routing
    /// order, after the retained messages.
    fn replay(&self, key: SubKey, fresh: &[Fresh], arrived: Instant, out: &mut Vec<Delivery>) {
        let Some(session) = self.sessions.get(&key) else {
            return;
        };
        // Filters the session held before: what they matched it has.
        let held: Vec<&str> = session
            .subs
            .keys()
            .filter(|f| !f.starts_with("$share/") && !fresh.iter().any(|n| &n.filter == *f))
            .map(String::as_str)
            .collect();
        let now = Instant::now();
        for m in self.recent.after(arrived) {
            if m.expired(now) || held.iter().any(|f| topic::matches(f, &m.topic)) {
                continue;
            }
            let mut got: Option<Delivery> = None;
            for n in fresh {
                let o = n.entry.options;
                let (group, f) = split_shared(&n.filter);
                if !topic::matches(f, &m.topic)
                    || (o.no_local && group.is_none() && *session.client_id == *m.origin)
                    || (n.retained_sent
                        && m.retain
                        && self
                            .retained
                            .get(&m.topic)
                            .is_some_and(|r| Arc::ptr_eq(r, m)))
                {
                    continue;
                }
                let d = got.get_or_insert_with(|| Delivery {
                    msg: m.clone(),
                    qos: QoS::AtMostOnce,
                    retain: false,
                    sub_ids: Vec::new(),
                });
                d.qos = d.qos.max(m.qos.min(o.qos));
                d.retain |= o.retain_as_published && m.retain;
                d.sub_ids.extend(n.entry.id);
            }
            out.extend(got);
        }
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
        self.recent.push(&msg);
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
