//! The subscription that keeps every point's latest value current.

use std::time::Duration;

use opcua::client::{MonitoredItem, SubscriptionCallbacks};
use opcua::types::{
    AttributeId, DataValue, MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters,
    ReadValueId, TimestampsToReturn,
};

use crate::protocol::DriverError;

use super::bounded;
use super::{CHUNK, OpcuaClient, lock};

impl OpcuaClient {
    /// Subscribe to every point and seed the values with one read.
    pub(super) async fn subscribe(&mut self) -> Result<(), DriverError> {
        let timeout = self.cfg.timeout;
        let Some(conn) = &self.conn else {
            return Err(DriverError::Connection("not connected".into()));
        };
        let session = conn.session.clone();
        let state = conn.state.clone();
        let fastest = self
            .cfg
            .devices
            .iter()
            .map(|d| d.poll)
            .min()
            .unwrap_or(Duration::from_secs(1));
        let data = state.clone();
        let status = state.clone();
        let callbacks = SubscriptionCallbacks::new(
            move |n| {
                if n.status.is_bad() {
                    *lock(&status.lost) = Some(format!("subscription ended: {}", n.status));
                }
            },
            move |value: DataValue, item: &MonitoredItem| {
                let Some(k) = (item.client_handle() as usize).checked_sub(1) else {
                    return;
                };
                if let Some(s) = lock(&data.slots).get_mut(k) {
                    s.value = Some(value);
                    s.error = None;
                }
            },
            |_, _| {},
        );
        // A keep-alive about every 10 s (at least every publishing
        // interval); the subscription lives three keep-alives.
        let keep_alive =
            u32::try_from((10_000 / fastest.as_millis().max(1)).clamp(1, 1000)).unwrap_or(10);
        let subscription = bounded(
            timeout,
            session.create_subscription(fastest, keep_alive * 3, keep_alive, 0, 0, true, callbacks),
        )
        .await?;
        let mut items = Vec::new();
        let mut reads = Vec::new();
        for (i, d) in self.cfg.devices.iter().enumerate() {
            for (j, id) in self.nodes[i].iter().enumerate() {
                let handle = u32::try_from(self.offsets[i] + j + 1).unwrap_or(u32::MAX);
                let read = ReadValueId {
                    node_id: id.clone(),
                    attribute_id: AttributeId::Value as u32,
                    ..Default::default()
                };
                reads.push(read.clone());
                items.push(MonitoredItemCreateRequest {
                    item_to_monitor: read,
                    monitoring_mode: MonitoringMode::Reporting,
                    requested_parameters: MonitoringParameters {
                        client_handle: handle,
                        sampling_interval: d.poll.as_secs_f64() * 1000.0,
                        queue_size: 1,
                        discard_oldest: true,
                        ..Default::default()
                    },
                });
            }
        }
        // Seed first, so the first cycle has values; notifications that
        // arrive meanwhile are newer and win.
        let mut k = 0;
        for chunk in reads.chunks(CHUNK) {
            let values = bounded(
                timeout,
                session.read(chunk, TimestampsToReturn::Neither, 0.0),
            )
            .await?;
            let mut slots = lock(&state.slots);
            for v in values.into_iter().take(chunk.len()) {
                if let Some(s) = slots.get_mut(k)
                    && s.value.is_none()
                {
                    s.value = Some(v);
                }
                k += 1;
            }
        }
        let mut k = 0;
        for chunk in items.chunks(CHUNK) {
            let created = bounded(
                timeout,
                session.create_monitored_items(
                    subscription,
                    TimestampsToReturn::Neither,
                    chunk.to_vec(),
                ),
            )
            .await?;
            let mut slots = lock(&state.slots);
            for (n, c) in created.iter().enumerate().take(chunk.len()) {
                if c.result.status_code.is_bad()
                    && let Some(s) = slots.get_mut(k + n)
                {
                    s.error = Some(format!("cannot monitor: {}", c.result.status_code));
                }
            }
            k += chunk.len();
        }
        if let Some(conn) = &mut self.conn {
            conn.ready = true;
        }
        Ok(())
    }
}
