//! `GET /api/devices/{id}/history`: a range of the device's numeric
//! readings from its node's local time-series store, asked for through
//! the device channel (`$verge/store-query/{d}` down, the
//! `$verge/store-reply/{d}` back through the ingest; see
//! `crate::devices::history`). Longer ranges than the cloud's stored
//! messages, when the node keeps them.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use verge_protocol::device::{DeviceChannel, MAX_STORE_POINTS, StoreQuery};
use verge_protocol::topics;

use super::rows::one_or_404;
use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::{self, now_ms};
use crate::error::{ApiPath, ApiQuery, AppError};

/// How long the API waits for the node's reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The range when `from_ms` is not given: this long before `to_ms`.
pub const DEFAULT_RANGE_MS: i64 = 24 * 3_600_000;
/// Most buckets a query may span (the node's store refuses more).
pub const MAX_BUCKETS: i64 = 10_000;

/// `?from_ms=&to_ms=&metric=&bucket=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    #[serde(default)]
    from_ms: Option<i64>,
    #[serde(default)]
    to_ms: Option<i64>,
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    bucket: Option<String>,
}

/// The query to send, or 400 naming the parameter.
fn plan(q: HistoryQuery, id: &str, device: &str, now: i64) -> Result<StoreQuery, AppError> {
    let to = q.to_ms.unwrap_or(now);
    let from = q
        .from_ms
        .unwrap_or(to.saturating_sub(DEFAULT_RANGE_MS))
        .max(0);
    if to < 0 || from > to {
        return Err(AppError::invalid(
            "`from_ms` must not be after `to_ms`, and `to_ms` not negative",
        ));
    }
    if let Some(m) = &q.metric
        && (m.is_empty() || m.len() > 1024 || m.contains('\0'))
    {
        return Err(AppError::invalid("`metric` must be 1 to 1024 bytes"));
    }
    let bucket_ms = match q.bucket.as_deref() {
        None => None,
        Some(text) => {
            let d = verge_duration::parse(text)
                .map_err(|e| AppError::invalid(format!("`bucket`: {e}")))?;
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            if ms < 1 {
                return Err(AppError::invalid("`bucket` must be at least 1ms"));
            }
            let n = to / ms - from / ms + 1;
            if n > MAX_BUCKETS {
                return Err(AppError::invalid(format!(
                    "`bucket`: the range holds {n} buckets, more than {MAX_BUCKETS}; use a wider bucket or a shorter range"
                )));
            }
            Some(ms.unsigned_abs())
        }
    };
    Ok(StoreQuery {
        id: id.to_owned(),
        device: device.to_owned(),
        metric: q.metric,
        from_ms: from.unsigned_abs(),
        to_ms: to.unsigned_abs(),
        bucket_ms,
        limit: MAX_STORE_POINTS as u32,
    })
}

pub async fn get(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(device): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Value>, AppError> {
    let (node, joined_ms, last_seen_ms): (String, Option<i64>, Option<i64>) = {
        let mut conn = cloud.inner().pool.acquire().await?;
        one_or_404(
            &mut *conn,
            "SELECT d.node_id, n.joined_ms, n.last_seen_ms FROM devices d \
             JOIN nodes n ON n.id = d.node_id WHERE d.id = $1",
            &device,
            "device",
        )
        .await?
    };
    let query = plan(q, &db::random_id(), &device, now_ms())?;
    if super::nodes::status(&cloud, joined_ms, last_seen_ms) != "online" {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_offline",
            format!("node `{node}` is offline; its store cannot be asked"),
        ));
    }
    let pending = &cloud.inner().history;
    let mut ticket = pending.register(&query.id, &node, &device).map_err(|_| {
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many store queries are waiting for their nodes; try again",
        )
    })?;
    let payload = serde_json::to_vec(&query)
        .map_err(|e| AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let topic = topics::down(&node, &DeviceChannel::StoreQuery.topic(&device));
    if let Some(here) = cloud.inner().downlink.reachable().await
        && !here.contains(&node)
    {
        return Err(AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_offline",
            format!("node `{node}` is not connected to this cloud replica's MQTT endpoint"),
        ));
    }
    cloud
        .inner()
        .downlink
        .publish(&topic, payload)
        .await
        .map_err(|e| {
            AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_offline",
                format!("the query could not be sent: {e}"),
            )
        })?;
    let reply = match tokio::time::timeout(REPLY_TIMEOUT, &mut ticket.reply).await {
        Ok(Ok(reply)) => reply,
        _ => {
            return Err(AppError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "node_timeout",
                format!(
                    "node `{node}` did not answer within {}s",
                    REPLY_TIMEOUT.as_secs()
                ),
            ));
        }
    };
    if let Some(error) = reply.error {
        return Err(AppError::new(
            StatusCode::BAD_GATEWAY,
            "node_error",
            format!("node `{node}`: {error}"),
        ));
    }
    Ok(Json(json!({
        "device_id": device,
        "node_id": node,
        "from_ms": query.from_ms,
        "to_ms": query.to_ms,
        "bucket_ms": query.bucket_ms,
        "series": reply.series,
        "truncated": reply.truncated,
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn q(from_ms: Option<i64>, to_ms: Option<i64>, bucket: Option<&str>) -> HistoryQuery {
        HistoryQuery {
            from_ms,
            to_ms,
            metric: None,
            bucket: bucket.map(str::to_owned),
        }
    }

    #[test]
    fn ranges_default_to_the_last_day_and_bad_ones_are_refused() {
        let p = plan(q(None, None, None), "i", "d", 100_000_000).unwrap();
        assert_eq!(
            (p.from_ms, p.to_ms),
            (100_000_000 - 86_400_000, 100_000_000)
        );
        assert_eq!(p.bucket_ms, None);
        let p = plan(q(Some(0), Some(3_600_000), Some("1m")), "i", "d", 0).unwrap();
        assert_eq!(p.bucket_ms, Some(60_000));
        assert!(plan(q(Some(5), Some(4), None), "i", "d", 0).is_err());
        assert!(plan(q(None, Some(-1), None), "i", "d", 0).is_err());
        assert!(plan(q(Some(0), Some(86_400_000), Some("1s")), "i", "d", 0).is_err());
        assert!(plan(q(None, None, Some("soon")), "i", "d", 0).is_err());
        let mut empty = q(None, None, None);
        empty.metric = Some(String::new());
        assert!(plan(empty, "i", "d", 0).is_err());
    }
}
