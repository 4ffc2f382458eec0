//! The session table: attaching a connection (new session, takeover,
//! resume, the `max_persistent_sessions` quota), clearing and removing
//! sessions, a connection's end, and wills.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use verge_mqtt::reason;

use super::{Carry, ConnectReply, ConnectReq, Link, Router, Session, split_shared};
use crate::message::Message;
use crate::presence::{SessionEvent, now_ms};
use crate::stats::inc;
use crate::subs::SubKey;

impl Router {
    pub(super) fn on_connect(&mut self, req: ConnectReq) {
        // Closed to clients: the node is stopping.
        if self.closed {
            refuse(req, reason::SERVER_UNAVAILABLE);
            return;
        }
        // A session belongs to the identity that made it: another one
        // neither takes over its connection nor resumes it (whatever the
        // client id binding), nor starts it afresh.
        if self
            .by_client
            .get(&req.client_id)
            .and_then(|k| self.sessions.get(k))
            .is_some_and(|s| s.owner != req.username)
        {
            inc(&self.stats.refused_client_ids);
            refuse(req, reason::CLIENT_IDENTIFIER_NOT_VALID);
            return;
        }
        if req.at_limit {
            let takeover = self
                .by_client
                .get(&req.client_id)
                .and_then(|k| self.sessions.get(k))
                .is_some_and(|s| s.link.is_some());
            if !takeover {
                refuse(req, reason::SERVER_BUSY);
                return;
            }
        }
        // A client resuming (or taking over) its own persistent session adds
        // none; any other CONNECT asking to be kept does.
        if !req.expiry.is_zero()
            && self.persistent >= self.cfg.max_persistent_sessions
            && !self
                .by_client
                .get(&req.client_id)
                .and_then(|k| self.sessions.get(k))
                .is_some_and(|s| s.persistent)
        {
            inc(&self.stats.refused_sessions);
            refuse(req, reason::QUOTA_EXCEEDED);
            return;
        }
        let key = match self.by_client.get(&req.client_id) {
            Some(&key) => key,
            None => {
                let key = self.new_key();
                self.by_client.insert(req.client_id.clone(), key);
                self.sessions.insert(
                    key,
                    Session {
                        client_id: req.client_id.clone(),
                        owner: req.username.clone(),
                        link: None,
                        subs: HashMap::new(),
                        offline: VecDeque::new(),
                        carry: Carry::default(),
                        expires: None,
                        takeover: None,
                        persistent: false,
                    },
                );
                self.complete_connect(key, req, false);
                return;
            }
        };
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        if let Some(link) = &s.link {
            // Session takeover: the old connection hands its state back first.
            link.kill.kill(reason::SESSION_TAKEN_OVER);
            if let Some(old) = s.takeover.replace(req) {
                // A third connection raced in: the one waiting loses.
                drop(old);
            }
            return;
        }
        self.complete_connect(key, req, true);
    }

    pub(super) fn complete_connect(&mut self, key: SubKey, req: ConnectReq, existed: bool) {
        // A new connection for this client cancels a pending (delayed) will,
        // unless it starts clean: then the old session ends, and a session's
        // end is when its delayed will is due.
        let pending = self.take_wills(|_, k| *k == key);
        for m in pending.into_iter().filter(|_| req.clean_start) {
            self.route_will(m);
        }
        if req.clean_start && existed {
            self.clear_session(key);
        }
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let session_present = existed && !req.clean_start;
        let persistent = !req.expiry.is_zero();
        if s.persistent != persistent {
            s.persistent = persistent;
            if persistent {
                self.persistent += 1;
            } else {
                self.persistent = self.persistent.saturating_sub(1);
            }
        }
        let mut carry = std::mem::take(&mut s.carry);
        carry.queued.extend(s.offline.drain(..));
        s.expires = None;
        s.link = Some(Link {
            conn_id: req.conn_id,
            username: req.username,
            transport: req.transport,
            since_ms: now_ms(),
            mailbox: req.mailbox,
            kill: req.kill,
            stalled: false,
            slow: false,
        });
        let reply = ConnectReply {
            refused: None,
            key,
            session_present,
            carry,
        };
        if let Err(reply) = req.reply.send(reply) {
            // The connection went away while waiting: keep its state.
            s.link = None;
            s.carry = reply.carry;
            s.expires = Some(Instant::now() + req.expiry);
            if req.expiry.is_zero() {
                self.remove_session(key);
            }
            return;
        }
        if self.presence.receiver_count() > 0
            && let Some(link) = &s.link
        {
            let event = SessionEvent {
                client_id: s.client_id.clone(),
                username: link.username.clone(),
                connected: true,
                at_ms: link.since_ms,
                transport: link.transport,
            };
            let _ = self.presence.send(event);
        }
    }

    pub(super) fn clear_session(&mut self, key: SubKey) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let subs = std::mem::take(&mut s.subs);
        s.offline.clear();
        s.carry = Carry::default();
        for filter in subs.keys() {
            let (group, f) = split_shared(filter);
            self.tree.remove(f, group, key);
        }
    }

    pub(super) fn remove_session(&mut self, key: SubKey) {
        self.clear_session(key);
        if let Some(s) = self.sessions.remove(&key) {
            self.by_client.remove(&s.client_id);
            if s.persistent {
                self.persistent = self.persistent.saturating_sub(1);
            }
        }
        // A delayed will is published when the session ends.
        for m in self.take_wills(|_, k| *k == key) {
            self.route_will(m);
        }
    }

    pub(super) fn on_disconnected(
        &mut self,
        key: SubKey,
        conn_id: u64,
        mut carry: Carry,
        will: Option<(Arc<Message>, Duration)>,
        expiry: Duration,
    ) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        if s.link.as_ref().map(|l| l.conn_id) != Some(conn_id) {
            return;
        }
        if let Some(link) = s.link.take()
            && self.presence.receiver_count() > 0
        {
            let _ = self.presence.send(SessionEvent {
                client_id: s.client_id.clone(),
                username: link.username,
                connected: false,
                at_ms: now_ms(),
                transport: link.transport,
            });
        }
        if let Some(mailbox) = carry.mailbox.take() {
            carry.queued.extend(mailbox.close());
        }
        // Deliveries that met the closed mailbox before this event wait in
        // `offline`, behind what the mailbox held.
        s.carry = carry;
        let takeover = s.takeover.take();
        if let Some((msg, delay)) = will {
            if delay.is_zero() || expiry.is_zero() {
                self.route_will(msg);
            } else {
                self.wills
                    .push((Instant::now() + delay.min(expiry), key, msg));
            }
        }
        if let Some(req) = takeover {
            // A session that expires on disconnect ended with the old
            // connection: the new one starts afresh.
            let existed = !expiry.is_zero();
            if !existed {
                self.clear_session(key);
            }
            self.complete_connect(key, req, existed);
            return;
        }
        if expiry.is_zero() {
            self.remove_session(key);
        } else if let Some(s) = self.sessions.get_mut(&key) {
            s.expires = Some(Instant::now() + expiry);
        }
    }

    /// Take the pending (delayed) wills that `pick` chooses by due time and
    /// session out of the list.
    pub(super) fn take_wills(
        &mut self,
        mut pick: impl FnMut(Instant, &SubKey) -> bool,
    ) -> Vec<Arc<Message>> {
        let mut taken = Vec::new();
        self.wills.retain(|(at, k, m)| {
            let take = pick(*at, k);
            if take {
                taken.push(m.clone());
            }
            !take
        });
        taken
    }

    /// Publish a will: it is received now, so its Message Expiry Interval
    /// starts now, not at CONNECT.
    pub(super) fn route_will(&mut self, msg: Arc<Message>) {
        let mut msg = Arc::unwrap_or_clone(msg);
        let now = Instant::now();
        msg.received = now;
        msg.expires = msg
            .properties
            .message_expiry_interval
            .take()
            .map(|s| now + Duration::from_secs(u64::from(s)));
        self.route(Arc::new(msg));
    }
}

/// Answer a CONNECT with a refusal.
fn refuse(req: ConnectReq, code: u8) {
    let _ = req.reply.send(ConnectReply {
        refused: Some(code),
        key: 0,
        session_present: false,
        carry: Carry::default(),
    });
}
