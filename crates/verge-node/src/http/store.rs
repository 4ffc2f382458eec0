//! `/api/store/*`: the local time-series store over HTTP (series, raw and
//! downsampled range queries, latest values, counters) and its Prometheus
//! metrics.
//!
//! Times in `from` and `to` are ms since the Unix epoch, RFC 3339
//! (`2026-11-28T15:00:00Z`, `…+01:00`, with optional fractions), `now`, or
//! `-<duration>` before now (`-1h`). `to` defaults to now and `from` to an
//! hour before `to`.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use verge_tsdb::{Bucket, LatestValue, MAX_LIMIT, RangeQuery, Sample, Tsdb, TsdbError, TsdbStats};

use super::ApiState;
use super::AppError;

/// The store's routes, to nest under `/api`.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/store/series", get(series))
        .route("/store/query", get(query))
        .route("/store/latest", get(latest))
        .route("/store/stats", get(stats))
}

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn store(s: &ApiState) -> Result<Arc<Tsdb>, AppError> {
    s.store.clone().ok_or_else(|| {
        AppError::new(
            StatusCode::NOT_FOUND,
            "store_disabled",
            "this node has no local store (`[store] enabled = false`)",
        )
    })
}

fn bad(param: &str, message: impl std::fmt::Display) -> AppError {
    AppError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        format!("{param}: {message}"),
    )
}

impl From<TsdbError> for AppError {
    fn from(e: TsdbError) -> AppError {
        match &e {
            TsdbError::InvalidQuery { .. } => {
                AppError::new(StatusCode::BAD_REQUEST, "invalid_query", e.to_string())
            }
            TsdbError::Backlog(_) | TsdbError::Closed => AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            _ => AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }
}

/// The query string, refusing parameters outside `allowed`.
fn params(p: Params, allowed: &[&str]) -> Result<HashMap<String, String>, AppError> {
    let Query(map) = p.map_err(|e| bad("query", e.body_text()))?;
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(
            k,
            format!("unknown parameter (use {})", allowed.join(", ")),
        ));
    }
    Ok(map)
}

/// Run a query on the blocking pool: it reads files.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TsdbError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            AppError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("store query failed: {e}"),
            )
        })?
        .map_err(AppError::from)
}

#[derive(Serialize)]
struct Series {
    device: String,
    metric: String,
}

async fn series(State(s): State<ApiState>) -> Result<Json<Vec<Series>>, AppError> {
    let db = store(&s)?;
    let list = db
        .series()
        .into_iter()
        .map(|(device, metric)| Series { device, metric })
        .collect();
    Ok(Json(list))
}

#[derive(Serialize)]
struct RawAnswer {
    device: String,
    metric: String,
    from: i64,
    to: i64,
    samples: Vec<Sample>,
    /// More samples are in the range than `limit`.
    truncated: bool,
}

#[derive(Serialize)]
struct BucketAnswer {
    device: String,
    metric: String,
    from: i64,
    to: i64,
    bucket_ms: i64,
    buckets: Vec<Bucket>,
}

/// `GET /api/store/query?device=&metric=&from=&to=&limit=[&bucket=]`.
async fn query(State(s): State<ApiState>, p: Params) -> Result<axum::response::Response, AppError> {
    use axum::response::IntoResponse;
    let db = store(&s)?;
    let p = params(p, &["device", "metric", "from", "to", "limit", "bucket"])?;
    let required = |k: &str| -> Result<String, AppError> {
        match p.get(k) {
            Some(v) if !v.is_empty() => Ok(v.clone()),
            _ => Err(bad(k, "missing")),
        }
    };
    let device = required("device")?;
    let metric = required("metric")?;
    let now = verge_net::now_ms();
    let to = p
        .get("to")
        .map(|v| parse_time(v, now).map_err(|e| bad("to", e)))
        .transpose()?
        .unwrap_or(now);
    let from = p
        .get("from")
        .map(|v| parse_time(v, now).map_err(|e| bad("from", e)))
        .transpose()?
        .unwrap_or(to.saturating_sub(3_600_000));
    let mut q = RangeQuery {
        device,
        metric,
        from_ms: from,
        to_ms: to,
        limit: 0,
    };
    if let Some(b) = p.get("bucket") {
        if p.contains_key("limit") {
            return Err(bad("limit", "not used with `bucket`"));
        }
        let bucket = verge_tsdb::duration::parse(b)
            .ok()
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                bad(
                    "bucket",
                    format!("`{b}` is not a duration such as 10s or 5m"),
                )
            })?;
        let q2 = q.clone();
        let buckets = blocking(move || db.downsample(&q2, bucket)).await?;
        return Ok(Json(BucketAnswer {
            device: q.device,
            metric: q.metric,
            from,
            to,
            bucket_ms: bucket,
            buckets,
        })
        .into_response());
    }
    let limit = match p.get("limit") {
        None => verge_tsdb::DEFAULT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad(
                    "limit",
                    format!("`{v}` is not between 1 and {MAX_LIMIT}"),
                ));
            }
        },
    };
    // One more than asked tells whether the answer is cut short.
    q.limit = (limit + 1).min(MAX_LIMIT);
    let q2 = q.clone();
    let mut samples = blocking(move || db.range(&q2)).await?;
    let truncated = samples.len() > limit || samples.len() == MAX_LIMIT;
    samples.truncate(limit);
    Ok(Json(RawAnswer {
        device: q.device,
        metric: q.metric,
        from,
        to,
        samples,
        truncated,
    })
    .into_response())
}

/// `GET /api/store/latest[?device=]`.
async fn latest(State(s): State<ApiState>, p: Params) -> Result<Json<Vec<LatestValue>>, AppError> {
    let db = store(&s)?;
    let p = params(p, &["device"])?;
    Ok(Json(db.latest(p.get("device").map(String::as_str))))
}

/// `GET /api/store/stats`.
async fn stats(State(s): State<ApiState>) -> Result<Json<TsdbStats>, AppError> {
    Ok(Json(store(&s)?.stats()))
}

/// Append the store's counters as `verge_store_*` metrics.
pub fn render_metrics(s: &TsdbStats, out: &mut String) {
    let rows: [(&str, &str, u64, &str); 9] = [
        ("series", "gauge", s.series, "series in the dictionary"),
        (
            "disk_bytes",
            "gauge",
            s.disk_bytes,
            "bytes on disk and buffered",
        ),
        ("chunks", "gauge", s.chunks, "chunk files"),
        (
            "points_written_total",
            "counter",
            s.points_written,
            "points stored",
        ),
        (
            "points_dropped_total",
            "counter",
            s.points_dropped,
            "points refused at write",
        ),
        (
            "points_deleted_total",
            "counter",
            s.points_deleted,
            "points deleted with old chunks",
        ),
        (
            "chunks_expired_total",
            "counter",
            s.chunks_expired,
            "chunks deleted by retention",
        ),
        (
            "chunks_evicted_total",
            "counter",
            s.chunks_evicted,
            "chunks deleted to stay under max_bytes",
        ),
        (
            "torn_bytes_cut_total",
            "counter",
            s.torn_bytes_cut,
            "bytes of torn tails cut at open",
        ),
    ];
    for (name, kind, value, help) in rows {
        let _ = writeln!(out, "# HELP verge_store_{name} store {help}");
        let _ = writeln!(out, "# TYPE verge_store_{name} {kind}");
        let _ = writeln!(out, "verge_store_{name} {value}");
    }
}

/// A time parameter: ms since the epoch, RFC 3339, `now` or `-<duration>`.
fn parse_time(v: &str, now: i64) -> Result<i64, String> {
    let v = v.trim();
    if v == "now" {
        return Ok(now);
    }
    if let Some(ago) = v
        .strip_prefix('-')
        .filter(|r| r.ends_with(|c: char| c.is_ascii_alphabetic()))
    {
        let d = verge_tsdb::duration::parse(ago)?;
        return Ok(now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    }
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    rfc3339(v).ok_or_else(|| {
        format!("`{v}` is not ms since the epoch, an RFC 3339 time, `now` or `-<duration>`")
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]` in ms since the epoch.
fn rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| std::str::from_utf8(part).ok()?.parse().ok())?
    };
    let sep = |at: usize, c: &[u8]| b.get(at).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, sec) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut at = 19;
    let mut ms = 0;
    if sep(at, b".") {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let digits = s.get(start..at)?;
        if digits.is_empty() {
            return None;
        }
        let first3 = format!("{:0<3}", &digits[..digits.len().min(3)]);
        ms = first3.parse::<i64>().ok()?;
    }
    let offset_min = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        c @ (b'+' | b'-') if at + 6 == b.len() && sep(at + 3, b":") => {
            let m = num(at + 1, 2)? * 60 + num(at + 4, 2)?;
            if *c == b'-' { -m } else { m }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some((((days * 24 + h) * 60 + mi - offset_min) * 60 + sec) * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_form() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("1700000000123", now), Ok(1_700_000_000_123));
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("-1h", now), Ok(now - 3_600_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z", now), Ok(0));
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", now),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00", now),
            Ok(1_700_000_000_500)
        );
        assert_eq!(
            parse_time("2000-02-29T12:00:00-00:30", now),
            Ok(951_827_400_000)
        );
        for bad in [
            "",
            "yesterday",
            "2023-13-01T00:00:00Z",
            "2023-11-14T22:13:20",
            "-1y",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }
}
