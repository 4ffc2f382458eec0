//! Bounded exchange state of the run loop: the message-id de-duplication
//! cache and the block-wise transfer buffers. Each has a capacity and drops
//! its oldest entry (counted by the caller) when full.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the de-duplication cache knows about a request's message id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// First time: now marked in progress.
    New,
    /// Being handled; no answer yet.
    InProgress,
    /// Answered with these bytes.
    Answered(Vec<u8>),
}

/// Message ids of recent requests per peer, with their answers, kept for
/// EXCHANGE_LIFETIME (RFC 7252 §4.5).
pub(crate) struct Dedup {
    map: HashMap<(SocketAddr, u16), Option<Vec<u8>>>,
    /// Insertion order with expiry; the lifetime is constant, so the front
    /// is always the oldest.
    order: VecDeque<(Instant, SocketAddr, u16)>,
    cap: usize,
    lifetime: Duration,
}

impl Dedup {
    /// A cache of at most `cap` ids kept for `lifetime`.
    pub fn new(cap: usize, lifetime: Duration) -> Dedup {
        Dedup {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            lifetime,
        }
    }

    /// Look up `(peer, mid)`; a new id is recorded as in progress. Returns
    /// also how many entries were evicted early to make room.
    pub fn check(&mut self, peer: SocketAddr, mid: u16, now: Instant) -> (Seen, u64) {
        self.expire(now);
        if let Some(entry) = self.map.get(&(peer, mid)) {
            return match entry {
                Some(bytes) => (Seen::Answered(bytes.clone()), 0),
                None => (Seen::InProgress, 0),
            };
        }
        let mut evicted = 0;
        while self.map.len() >= self.cap {
            match self.order.pop_front() {
                Some((_, p, m)) => {
                    if self.map.remove(&(p, m)).is_some() {
                        evicted += 1;
                    }
                }
                None => break,
            }
        }
        self.map.insert((peer, mid), None);
        self.order.push_back((now + self.lifetime, peer, mid));
        (Seen::New, evicted)
    }

    /// Record the answer sent for `(peer, mid)` (if it is still known).
    pub fn answer(&mut self, peer: SocketAddr, mid: u16, bytes: &[u8]) {
        if let Some(entry) = self.map.get_mut(&(peer, mid)) {
            *entry = Some(bytes.to_vec());
        }
    }

    /// Forget ids past their lifetime.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, p, m)) = self.order.front() {
            if deadline > now {
                break;
            }
            self.order.pop_front();
            self.map.remove(&(p, m));
        }
    }

    /// Ids remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// Bounded map of unfinished block-wise transfers, each kept until its
/// deadline.
pub(crate) struct Transfers<K, V> {
    map: HashMap<K, (Instant, V)>,
    cap: usize,
    lifetime: Duration,
}

impl<K: Hash + Eq + Clone, V> Transfers<K, V> {
    /// At most `cap` transfers, each kept for `lifetime` after its last use.
    pub fn new(cap: usize, lifetime: Duration) -> Self {
        Transfers {
            map: HashMap::new(),
            cap: cap.max(1),
            lifetime,
        }
    }

    /// Insert (or replace) a transfer; returns how many others were dropped
    /// to make room.
    pub fn insert(&mut self, key: K, value: V, now: Instant) -> u64 {
        let mut dropped = self.expire(now);
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (deadline, _))| *deadline)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.map.remove(&k);
                dropped += 1;
            }
        }
        self.map.insert(key, (now + self.lifetime, value));
        dropped
    }

    /// The transfer under `key`, its lifetime renewed.
    pub fn get_mut(&mut self, key: &K, now: Instant) -> Option<&mut V> {
        let lifetime = self.lifetime;
        self.map.get_mut(key).and_then(|(deadline, v)| {
            if *deadline <= now {
                return None;
            }
            *deadline = now + lifetime;
            Some(v)
        })
    }

    /// Take the transfer under `key` out.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|(_, v)| v)
    }

    /// Drop transfers past their deadline; returns how many.
    pub fn expire(&mut self, now: Instant) -> u64 {
        let before = self.map.len();
        self.map.retain(|_, (deadline, _)| *deadline > now);
        (before - self.map.len()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn dedup_answers_repeats_and_forgets_after_lifetime() {
        let t0 = Instant::now();
        let mut d = Dedup::new(10, Duration::from_secs(5));
        assert_eq!(d.check(peer(1), 7, t0), (Seen::New, 0));
        assert_eq!(d.check(peer(1), 7, t0), (Seen::InProgress, 0));
        assert_eq!(d.check(peer(2), 7, t0), (Seen::New, 0), "per peer");
        d.answer(peer(1), 7, b"resp");
        assert_eq!(d.check(peer(1), 7, t0).0, Seen::Answered(b"resp".to_vec()));
        assert_eq!(
            d.check(peer(1), 7, t0 + Duration::from_secs(6)).0,
            Seen::New
        );
    }

    #[test]
    fn dedup_is_bounded_and_counts_evictions() {
        let t0 = Instant::now();
        let mut d = Dedup::new(3, Duration::from_secs(60));
        for mid in 0..3 {
            assert_eq!(d.check(peer(1), mid, t0).1, 0);
        }
        assert_eq!(d.check(peer(1), 3, t0), (Seen::New, 1));
        assert_eq!(d.len(), 3);
        assert_eq!(d.check(peer(1), 0, t0).0, Seen::New, "oldest was dropped");
    }

    #[test]
    fn transfers_are_bounded_and_expire() {
        let t0 = Instant::now();
        let mut t = Transfers::new(2, Duration::from_secs(10));
        assert_eq!(t.insert("a", 1, t0), 0);
        assert_eq!(t.insert("b", 2, t0 + Duration::from_secs(1)), 0);
        assert_eq!(t.insert("c", 3, t0 + Duration::from_secs(2)), 1);
        assert!(t.get_mut(&"a", t0 + Duration::from_secs(2)).is_none());
        assert_eq!(t.get_mut(&"b", t0 + Duration::from_secs(2)), Some(&mut 2));
        assert_eq!(t.expire(t0 + Duration::from_secs(30)), 2);
    }
}
