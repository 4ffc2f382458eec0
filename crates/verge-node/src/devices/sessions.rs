//! Which devices are connected, from the broker's session list and its
//! connect/disconnect events: per device (its username) the connections it
//! has, and the last state seen, for the heartbeat's `devices`.

use std::collections::HashMap;
use std::sync::Arc;

use verge_broker::{SessionEvent, SessionInfo};
use verge_protocol::device::DeviceSession;

use super::shadow::MAX_SHADOWS;

/// One connection of a device.
#[derive(Debug, Clone)]
struct Conn {
    device: String,
    since_ms: u64,
    transport: &'static str,
}

/// The devices' connections.
#[derive(Debug, Default)]
pub struct Presence {
    /// Connected clients by client id (only authenticated ones).
    conns: HashMap<Arc<str>, Conn>,
    /// The last state of each device seen (at most [`MAX_SHADOWS`]).
    seen: HashMap<String, DeviceSession>,
}

impl Presence {
    /// Start again from the broker's list of connected sessions at
    /// `now_ms` (after a lag, or at start).
    pub fn resync(&mut self, list: Vec<SessionInfo>, now_ms: u64) {
        self.conns.clear();
        for s in list {
            if let Some(user) = s.username {
                self.conns.insert(
                    s.client_id.clone(),
                    Conn {
                        device: user.to_string(),
                        since_ms: s.since_ms,
                        transport: s.transport,
                    },
                );
            }
        }
        let devices: Vec<String> = self
            .seen
            .keys()
            .cloned()
            .chain(self.conns.values().map(|c| c.device.clone()))
            .collect();
        for d in devices {
            self.refresh(&d, now_ms);
        }
    }

    /// Take a connect or disconnect; returns the device (username) whose
    /// first connection it was, if so.
    pub fn on_event(&mut self, e: &SessionEvent) -> Option<String> {
        let user = e.username.as_deref()?.to_owned();
        let was = self.connected(&user);
        if e.connected {
            self.conns.insert(
                e.client_id.clone(),
                Conn {
                    device: user.clone(),
                    since_ms: e.at_ms,
                    transport: e.transport,
                },
            );
        } else {
            self.conns.remove(&e.client_id);
        }
        self.refresh(&user, e.at_ms);
        (e.connected && !was).then_some(user)
    }

    /// Forget the last state of `device` (the cloud removed it); a device
    /// still connected keeps its connection.
    pub fn forget(&mut self, device: &str) {
        if !self.connected(device) {
            self.seen.remove(device);
        }
    }

    /// Whether `device` has a connection.
    pub fn connected(&self, device: &str) -> bool {
        self.conns.values().any(|c| c.device == device)
    }

    fn refresh(&mut self, device: &str, now_ms: u64) {
        let conn = self
            .conns
            .iter()
            .filter(|(_, c)| c.device == device)
            .min_by_key(|(_, c)| c.since_ms);
        let state = match conn {
            Some((id, c)) => DeviceSession {
                device: device.to_owned(),
                connected: true,
                since_ms: c.since_ms,
                client_id: id.to_string(),
                transport: c.transport.to_owned(),
            },
            None => {
                if let Some(s) = self.seen.get(device)
                    && !s.connected
                {
                    return;
                }
                DeviceSession {
                    device: device.to_owned(),
                    connected: false,
                    since_ms: now_ms,
                    client_id: String::new(),
                    transport: String::new(),
                }
            }
        };
        if !self.seen.contains_key(device) && self.seen.len() >= MAX_SHADOWS {
            // Forget a disconnected one to make room.
            let old = self
                .seen
                .iter()
                .filter(|(_, s)| !s.connected)
                .min_by_key(|(_, s)| s.since_ms)
                .map(|(k, _)| k.clone());
            match old {
                Some(k) => {
                    self.seen.remove(&k);
                }
                None => return,
            }
        }
        self.seen.insert(device.to_owned(), state);
    }

    /// The sessions of the devices `keep` chooses.
    pub fn sessions(&self, keep: impl Fn(&str) -> bool) -> Vec<DeviceSession> {
        let mut v: Vec<DeviceSession> = self
            .seen
            .values()
            .filter(|s| keep(&s.device))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.device.cmp(&b.device));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(client: &str, user: &str, connected: bool, at_ms: u64) -> SessionEvent {
        SessionEvent {
            client_id: Arc::from(client),
            username: Some(Arc::from(user)),
            connected,
            at_ms,
            transport: "mqtt",
        }
    }

    #[test]
    fn a_device_is_connected_while_any_of_its_clients_is() {
        let mut p = Presence::default();
        assert_eq!(p.on_event(&ev("d1", "d1", true, 10)), Some("d1".into()));
        assert_eq!(p.on_event(&ev("d1:b", "d1", true, 20)), None);
        p.on_event(&ev("d1", "d1", false, 30));
        assert!(p.connected("d1"));
        let s = p.sessions(|_| true);
        assert_eq!(
            (s[0].connected, s[0].client_id.as_str(), s[0].since_ms),
            (true, "d1:b", 20)
        );
        p.on_event(&ev("d1:b", "d1", false, 40));
        assert!(!p.connected("d1"));
        let s = p.sessions(|_| true);
        assert_eq!((s[0].connected, s[0].since_ms), (false, 40));
        assert!(p.sessions(|d| d != "d1").is_empty());
    }
}
