//! Shadow answers matched to the requests waiting for them, and deltas
//! handed to the delta callback.

use serde_json::Value;
use tracing::{debug, warn};
use verge_protocol::device::{Shadow, ShadowDelta, ShadowRejection};

use super::{Engine, ShadowKind};
use crate::Error;
use std::sync::atomic::Ordering::Relaxed;

impl Engine {
    pub(super) fn on_shadow_answer(&mut self, kind: ShadowKind, accepted: bool, payload: &[u8]) {
        let value: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => {
                warn!(device = %self.cfg.device, "ignoring a shadow answer that is not JSON: {e}");
                return;
            }
        };
        let token = value.get("client_token").and_then(Value::as_str);
        let pos = match token {
            Some(t) => self
                .pending_shadow
                .iter()
                .position(|p| p.kind == kind && p.token == t),
            // a node that does not echo tokens: the oldest request of the kind
            None => self.pending_shadow.iter().position(|p| p.kind == kind),
        };
        let Some(pending) = pos.and_then(|i| self.pending_shadow.remove(i)) else {
            debug!(device = %self.cfg.device, "a shadow answer no request waits for");
            return;
        };
        let answer = if accepted {
            serde_json::from_value::<Shadow>(value)
                .map_err(|e| Error::Protocol(format!("a shadow document: {e}")))
        } else {
            match serde_json::from_value::<ShadowRejection>(value) {
                Ok(r) => Err(Error::ShadowRejected {
                    code: r.code,
                    message: r.message,
                }),
                Err(e) => Err(Error::Protocol(format!("a shadow rejection: {e}"))),
            }
        };
        let _ = pending.done.send(answer);
    }

    pub(super) fn on_delta(&mut self, payload: &[u8]) {
        let delta: ShadowDelta = match serde_json::from_slice(payload) {
            Ok(d) => d,
            Err(e) => {
                warn!(device = %self.cfg.device, "ignoring a bad shadow delta: {e}");
                return;
            }
        };
        if let Some(tx) = &self.delta_tx
            && tx.try_send(delta).is_err()
        {
            self.counters.deltas_dropped.fetch_add(1, Relaxed);
        }
    }
}
