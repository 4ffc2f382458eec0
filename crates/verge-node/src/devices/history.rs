//! Answers to the cloud's `$verge/store-query/{d}`: a bounded range of a
//! device's numeric readings from the node's local store, raw or averaged
//! over buckets by the store's downsampling.

use verge_protocol::device::{
    MAX_STORE_POINTS, MAX_STORE_REPLY_BYTES, MAX_STORE_SERIES, StoreQuery, StoreReply, StoreSeries,
};
use verge_tsdb::{RangeQuery, Tsdb};

/// Answer `q` from `store` (None: the node has no store). Reads files:
/// run it on the blocking pool.
pub fn answer(store: Option<&Tsdb>, q: &StoreQuery) -> StoreReply {
    let mut reply = StoreReply {
        id: q.id.clone(),
        device: q.device.clone(),
        ..StoreReply::default()
    };
    let Some(db) = store else {
        reply.error = Some("this node has no local store (`[store] enabled = false`)".into());
        return reply;
    };
    let (Ok(from_ms), Ok(to_ms)) = (i64::try_from(q.from_ms), i64::try_from(q.to_ms)) else {
        reply.error = Some("the range is out of bounds".into());
        return reply;
    };
    if from_ms > to_ms {
        reply.error = Some("`from_ms` is after `to_ms`".into());
        return reply;
    }
    let bucket_ms = match q.bucket_ms.map(i64::try_from) {
        None => None,
        Some(Ok(b)) if b > 0 => Some(b),
        Some(_) => {
            reply.error = Some("`bucket_ms` must be between 1 and 2^63".into());
            return reply;
        }
    };
    let mut metrics: Vec<String> = db
        .series()
        .into_iter()
        .filter(|(d, m)| *d == q.device && q.metric.as_ref().is_none_or(|want| want == m))
        .map(|(_, m)| m)
        .collect();
    metrics.sort();
    if metrics.len() > MAX_STORE_SERIES {
        metrics.truncate(MAX_STORE_SERIES);
        reply.truncated = true;
    }
    let limit = (q.limit as usize).clamp(1, MAX_STORE_POINTS);
    // Bytes left for points and series (the rest of the reply is small).
    let mut budget = MAX_STORE_REPLY_BYTES.saturating_sub(1024 + q.id.len() + q.device.len());
    for metric in metrics {
        let range = RangeQuery {
            device: q.device.clone(),
            metric: metric.clone(),
            from_ms,
            to_ms,
            // One more than asked tells whether the answer is cut short.
            limit: limit + 1,
        };
        let points: Result<Vec<(u64, f64)>, _> = match bucket_ms {
            Some(b) => db.downsample(&range, b).map(|buckets| {
                buckets
                    .into_iter()
                    .map(|b| (u64::try_from(b.start_ms).unwrap_or(0), b.avg))
                    .collect()
            }),
            None => db.range(&range).map(|samples| {
                samples
                    .into_iter()
                    .filter_map(|s| Some((u64::try_from(s.time_ms).ok()?, s.value.as_f64()?)))
                    .collect()
            }),
        };
        let mut points = match points {
            Ok(p) => p,
            Err(e) => {
                reply.series.clear();
                reply.error = Some(e.to_string());
                return reply;
            }
        };
        if points.is_empty() {
            continue;
        }
        if points.len() > limit {
            points.truncate(limit);
            reply.truncated = true;
        }
        let mut used = metric.len() + 32;
        let fit = points
            .iter()
            .take_while(|p| {
                used += point_bytes(p);
                used <= budget
            })
            .count();
        let full = fit < points.len();
        if full {
            points.truncate(fit);
            reply.truncated = true;
        }
        if !points.is_empty() {
            budget = budget.saturating_sub(used);
            reply.series.push(StoreSeries { metric, points });
        }
        if full {
            break;
        }
    }
    reply
}

/// A point's bytes in the reply's JSON, its comma included.
fn point_bytes(p: &(u64, f64)) -> usize {
    serde_json::to_vec(p).map_or(48, |v| v.len() + 1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use verge_tsdb::{Point, TsdbConfig, Value};

    fn point(device: &str, metric: &str, time_ms: i64, value: Value) -> Point {
        Point {
            device: device.into(),
            metric: metric.into(),
            time_ms,
            value,
        }
    }

    fn query(metric: Option<&str>, from_ms: u64, to_ms: u64, bucket_ms: Option<u64>) -> StoreQuery {
        StoreQuery {
            id: "q1".into(),
            device: "d1".into(),
            metric: metric.map(str::to_owned),
            from_ms,
            to_ms,
            bucket_ms,
            limit: 3,
        }
    }

    #[test]
    fn numeric_points_of_the_device_in_range_raw_and_bucketed() {
        let dir = tempfile::tempdir().unwrap();
        let db = Tsdb::open(TsdbConfig {
            dir: dir.path().to_path_buf(),
            ..TsdbConfig::default()
        })
        .unwrap();
        let t0 = verge_net::now_ms() - 60_000;
        let mut points = Vec::new();
        for i in 0..5 {
            points.push(point(
                "d1",
                "temp",
                t0 + i * 1000,
                Value::Number(20.0 + i as f64),
            ));
        }
        points.push(point("d1", "label", t0, Value::Text("warm".into())));
        points.push(point("d1", "hum", t0 + 500, Value::Number(40.0)));
        points.push(point("d2", "temp", t0, Value::Number(99.0)));
        db.write(&points).unwrap();
        let t = |d: i64| u64::try_from(t0 + d).unwrap();

        // all metrics: text skipped, another device's series absent, the
        // limit of 3 cuts `temp`
        let r = answer(Some(&db), &query(None, t(0), t(10_000), None));
        assert_eq!(r.id, "q1");
        assert_eq!(r.error, None);
        assert!(r.truncated);
        let names: Vec<&str> = r.series.iter().map(|s| s.metric.as_str()).collect();
        assert_eq!(names, ["hum", "temp"]);
        assert_eq!(
            r.series[1].points,
            [(t(0), 20.0), (t(1000), 21.0), (t(2000), 22.0)]
        );

        // one metric, a narrower range: not cut
        let r = answer(Some(&db), &query(Some("temp"), t(3000), t(4000), None));
        assert!(!r.truncated);
        assert_eq!(r.series.len(), 1);
        assert_eq!(r.series[0].points, [(t(3000), 23.0), (t(4000), 24.0)]);

        // bucketed: averages per bucket
        let mut q = query(Some("temp"), t(0), t(4000), Some(3_600_000));
        q.limit = 100;
        let r = answer(Some(&db), &q);
        let sum: f64 = r.series[0].points.iter().map(|p| p.1).sum();
        assert!(!r.series[0].points.is_empty() && r.series[0].points.len() <= 2);
        assert!(sum > 20.0, "{r:?}");
        let one = answer(
            Some(&db),
            &query(Some("temp"), t(0), t(4000), Some(600_000_000)),
        );
        assert_eq!(one.series[0].points.len(), 1);
        assert!((one.series[0].points[0].1 - 22.0).abs() < 1e-9);

        // bad ranges are errors, not panics
        let r = answer(Some(&db), &query(None, t(5000), t(0), None));
        assert!(r.error.is_some() && r.series.is_empty());
        let r = answer(Some(&db), &query(None, 0, t(0), Some(1)));
        assert!(r.error.unwrap().contains("bucket"), "too many buckets");
        db.close();
    }

    #[test]
    fn a_reply_stays_under_its_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let db = Tsdb::open(TsdbConfig {
            dir: dir.path().to_path_buf(),
            ..TsdbConfig::default()
        })
        .unwrap();
        let t0 = verge_net::now_ms() - 3_600_000;
        let points: Vec<Point> = (0..MAX_STORE_SERIES)
            .flat_map(|s| {
                (0..MAX_STORE_POINTS as i64).map(move |i| {
                    point(
                        "d1",
                        &format!("m{s:02}"),
                        t0 + i,
                        Value::Number(1.0 / 3.0 + i as f64),
                    )
                })
            })
            .collect();
        db.write(&points).unwrap();
        let mut q = query(None, 0, u64::try_from(t0 + 10_000).unwrap(), None);
        q.limit = u32::MAX;
        let r = answer(Some(&db), &q);
        assert!(r.truncated && r.error.is_none());
        let size = serde_json::to_vec(&r).unwrap().len();
        assert!(size <= MAX_STORE_REPLY_BYTES, "{size}");
        assert!(
            size > MAX_STORE_REPLY_BYTES / 2,
            "{size}: the budget is used"
        );
        assert_eq!(r.series[0].points.len(), MAX_STORE_POINTS);
        assert!(r.series.len() < MAX_STORE_SERIES);
        db.close();
    }

    #[test]
    fn no_store_is_an_error() {
        let r = answer(None, &query(None, 0, 1, None));
        assert!(r.error.unwrap().contains("no local store"));
        assert!(r.series.is_empty());
    }
}
