//! Observers (RFC 7641) in the run loop: registration, notifications with
//! increasing sequence numbers, Confirmable retransmission with exponential
//! backoff, and removal on Reset, deregistration or exhausted retries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tracing::debug;
use verge_broker::{LocalSubscription, Message};

use crate::codec::{CoapMessage, Code, MsgType};
use crate::config::NotifyType;
use crate::gateway::{Body, Loop, ReqMeta, etag};
use crate::option;
use crate::stats::Stats;

/// Every this many notifications a Non-confirmable observer gets a
/// Confirmable one, so a client that went away is noticed.
const CON_EVERY: u64 = 16;

/// One registered observer.
pub(crate) struct Observer {
    peer: SocketAddr,
    token: Vec<u8>,
    topic: String,
    /// Type of its notifications.
    ty: MsgType,
    /// Last Observe sequence number sent (24 bits).
    seq: u32,
    sent: u64,
    /// Message id of the last notification (a Reset to it deregisters).
    last_mid: u16,
    /// Message id of its Confirmable notification awaiting an ACK.
    pending: Option<u16>,
    forwarder: JoinHandle<()>,
}

/// A Confirmable notification awaiting its ACK.
pub(crate) struct Pending {
    observer: u64,
    bytes: Vec<u8>,
    retransmits: u32,
    timeout: Duration,
    deadline: Instant,
}

impl Observer {
    /// Where its notifications go.
    #[cfg_attr(not(feature = "dtls"), allow(dead_code))]
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl Loop {
    /// Register (or re-register) the observer of `meta`; returns the
    /// Observe number for the answer, or `None` when `max_observers` is
    /// reached (the answer then carries no Observe option).
    pub(crate) fn register(&mut self, meta: &ReqMeta, mut sub: LocalSubscription) -> Option<u32> {
        let key = (meta.peer, meta.token.clone());
        if let Some(&old) = self.by_token.get(&key) {
            self.drop_observer(old, false);
        }
        let stats = self.ctx.stats.clone();
        if self.observers.len() >= self.ctx.cfg.max_observers {
            Stats::inc(&stats.observers_refused);
            return None;
        }
        let id = self.next_observer;
        self.next_observer += 1;
        let tx = self.notify_tx.clone();
        let fwd_stats = stats.clone();
        let forwarder = tokio::spawn(async move {
            let mut seen_dropped = 0;
            while let Some(m) = sub.recv().await {
                let dropped = sub.dropped();
                if dropped > seen_dropped {
                    fwd_stats
                        .notifications_dropped
                        .fetch_add(dropped - seen_dropped, Ordering::Relaxed);
                    seen_dropped = dropped;
                }
                if tx.send((id, m)).await.is_err() {
                    return;
                }
            }
        });
        let ty = match self.ctx.cfg.notifications {
            NotifyType::Con => MsgType::Con,
            NotifyType::Non => MsgType::Non,
            NotifyType::Request => meta.ty,
        };
        let seq = next_seq();
        self.observers.insert(
            id,
            Observer {
                peer: meta.peer,
                token: meta.token.clone(),
                topic: meta.topic.clone(),
                ty,
                seq,
                sent: 0,
                last_mid: 0,
                pending: None,
                forwarder,
            },
        );
        self.by_token.insert(key, id);
        stats.observers.fetch_add(1, Ordering::Relaxed);
        Some(seq)
    }

    /// Remove an observer (its broker subscription ends with its task).
    pub(crate) fn drop_observer(&mut self, id: u64, counted: bool) {
        let Some(obs) = self.observers.remove(&id) else {
            return;
        };
        obs.forwarder.abort();
        self.by_token.remove(&(obs.peer, obs.token));
        if let Some(mid) = obs.pending {
            self.pending.remove(&(obs.peer, mid));
        }
        self.ctx.stats.observers.fetch_sub(1, Ordering::Relaxed);
        if counted {
            Stats::inc(&self.ctx.stats.observers_dropped);
        }
    }

    /// Remove the observers of `peer` (its DTLS session ended).
    #[cfg_attr(not(feature = "dtls"), allow(dead_code))]
    pub(crate) fn drop_observers_of(&mut self, peer: SocketAddr) {
        let ids: Vec<u64> = self
            .observers
            .iter()
            .filter(|(_, o)| o.peer == peer)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.drop_observer(id, true);
        }
    }

    /// Remove every observer (on shutdown).
    pub(crate) fn drop_all_observers(&mut self) {
        let ids: Vec<u64> = self.observers.keys().copied().collect();
        for id in ids {
            self.drop_observer(id, false);
        }
    }

    /// Send a notification of `msg` to observer `id`.
    /// A message larger than `max_payload` is not sent (counted in
    /// `notifications_too_large`); the observer stays registered.
    pub(crate) fn notify(&mut self, id: u64, msg: &Arc<Message>) {
        if msg.payload.len() > self.ctx.cfg.max_payload {
            debug!(
                topic = %msg.topic,
                bytes = msg.payload.len(),
                "coap: a notification larger than max_payload was not sent"
            );
            Stats::inc(&self.ctx.stats.notifications_too_large);
            return;
        }
        let mid = self.mid();
        let Some(obs) = self.observers.get_mut(&id) else {
            return;
        };
        obs.seq = next_seq();
        obs.sent += 1;
        let ty = if obs.ty == MsgType::Non && obs.sent % CON_EVERY != 0 {
            MsgType::Non
        } else {
            MsgType::Con
        };
        let mut m = CoapMessage::new(ty, Code::CONTENT, mid, obs.token.clone());
        m.push_uint(option::OBSERVE, obs.seq);
        obs.last_mid = mid;
        let previous = obs.pending.take();
        if ty == MsgType::Con {
            obs.pending = Some(mid);
        }
        let meta = ReqMeta {
            peer: obs.peer,
            ty: MsgType::Non,
            mid,
            token: obs.token.clone(),
            topic: obs.topic.clone(),
            block2: None,
            block1: None,
            observe: true,
        };
        let body = Body {
            etag: etag(&msg.payload),
            bytes: Arc::new(msg.payload.to_vec()),
            content_format: msg
                .properties
                .content_type
                .as_deref()
                .and_then(option::content_format),
        };
        self.put_body(&mut m, &meta, body);
        let bytes = m.encode();
        self.send(meta.peer, &bytes);
        Stats::inc(&self.ctx.stats.notifications);
        // A newer notification replaces one still awaiting its ACK, keeping
        // its retransmission count and timeout (RFC 7641 §4.5.2).
        let old = previous.and_then(|p| self.pending.remove(&(meta.peer, p)));
        if ty == MsgType::Con {
            let timeout = match &old {
                Some(p) => p.timeout,
                None => self.initial_timeout(),
            };
            let pending = Pending {
                observer: id,
                bytes,
                retransmits: old.as_ref().map_or(0, |p| p.retransmits),
                timeout,
                deadline: old.map_or(Instant::now() + timeout, |p| p.deadline),
            };
            self.pending.insert((meta.peer, mid), pending);
        }
    }

    fn initial_timeout(&mut self) -> Duration {
        let cfg = &self.ctx.cfg;
        let (base, factor) = (cfg.ack_timeout.get(), cfg.ack_random_factor);
        base.mul_f64(1.0 + (factor - 1.0) * self.random())
    }

    /// An ACK or Reset for message `mid` from `peer`.
    pub(crate) fn on_ack(&mut self, peer: SocketAddr, ty: MsgType, mid: u16) {
        let observer = match self.pending.remove(&(peer, mid)) {
            Some(p) => {
                if let Some(o) = self.observers.get_mut(&p.observer) {
                    o.pending = None;
                }
                Some(p.observer)
            }
            None => self
                .observers
                .iter()
                .find(|(_, o)| o.peer == peer && o.last_mid == mid)
                .map(|(&id, _)| id),
        };
        if ty == MsgType::Rst
            && let Some(id) = observer
        {
            debug!(%peer, "observer reset");
            self.drop_observer(id, true);
        }
    }

    /// When the next retransmission is due (far away when none is).
    pub(crate) fn next_retransmit(&self) -> Instant {
        self.pending
            .values()
            .map(|p| p.deadline)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Retransmit what is due; drop observers whose retries ran out.
    pub(crate) fn retransmit(&mut self, now: Instant) {
        let due: Vec<(SocketAddr, u16)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            let Some(p) = self.pending.get_mut(&key) else {
                continue;
            };
            if p.retransmits >= self.ctx.cfg.max_retransmit {
                let id = p.observer;
                self.pending.remove(&key);
                debug!(peer = %key.0, "observer gave no ack: dropped");
                self.drop_observer(id, true);
                continue;
            }
            p.retransmits += 1;
            p.timeout *= 2;
            p.deadline = now + p.timeout;
            let bytes = p.bytes.clone();
            self.send(key.0, &bytes);
            Stats::inc(&self.ctx.stats.retransmissions);
        }
    }
}

/// The next Observe number: one counter for the whole gateway, so a client
/// that registers again keeps seeing numbers that increase (RFC 7641 §3.4:
/// a smaller number would be taken as stale for up to 128 s).
fn next_seq() -> u32 {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .wrapping_add(1)
        & 0x00ff_ffff
}
