//! Dry runs of rule SQL over sample messages: what the node's and the
//! cloud's `POST …/rules/test` return, with no broker and no services.

use serde::{Deserialize, Serialize};
use verge_sql::{Event, Limits, Query, Row};

use crate::error::RuleError;
use verge_net::now_ms;

/// One sample message for [`dry_run`] and [`crate::Engine::test`], or a step of the clock.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Topic it was published to (required unless `advance` is given).
    #[serde(default)]
    pub topic: Option<String>,
    /// JSON payload, kept as the text it was sent as: the rule reads it like
    /// a live message's payload (key order, duplicate keys and every digit of
    /// its numbers as written), not as re-serialised JSON.
    #[serde(default)]
    pub payload: Option<Box<serde_json::value::RawValue>>,
    /// A payload given as text instead (need not be JSON).
    #[serde(default)]
    pub payload_raw: Option<String>,
    /// Publishing client id (default `test`).
    #[serde(default)]
    pub clientid: Option<String>,
    /// QoS (default 0).
    #[serde(default)]
    pub qos: u8,
    /// Receive time in ms since the epoch (default: 1 ms after the previous
    /// sample, starting now).
    #[serde(default)]
    pub time: Option<i64>,
    /// Instead of a message: move processing time to this value (ms).
    #[serde(default)]
    pub advance: Option<i64>,
}

/// What a dry run produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TestOutput {
    /// Rows in emission order; windows still open after the last sample are
    /// closed at the end.
    pub rows: Vec<Row>,
    /// Samples whose evaluation failed: `(index, error)`.
    pub errors: Vec<SampleError>,
    /// Whether rows were cut at [`MAX_TEST_ROWS`] (the run stopped there).
    pub truncated: bool,
}

/// A sample that failed to evaluate.
#[derive(Debug, Clone, Serialize)]
pub struct SampleError {
    /// Index of the sample.
    pub sample: usize,
    /// The evaluation error.
    pub error: String,
}

/// At most this many samples per dry run.
pub const MAX_TEST_SAMPLES: usize = 10_000;
/// At most this many rows come back from a dry run; the rest is cut and
/// `truncated` is set.
pub const MAX_TEST_ROWS: usize = 10_000;

/// Refuse more than [`MAX_TEST_SAMPLES`] samples.
pub(crate) fn check_samples(samples: &[Sample]) -> Result<(), RuleError> {
    if samples.len() > MAX_TEST_SAMPLES {
        return Err(RuleError::Sample {
            index: MAX_TEST_SAMPLES,
            message: format!("too many samples (at most {MAX_TEST_SAMPLES})"),
        });
    }
    Ok(())
}

/// Window bounds of dry runs: small, since a request may ask for anything.
fn test_limits() -> Limits {
    Limits {
        max_groups: 1_000,
        max_rows_per_window: 10_000,
        max_open_windows: 100,
        ..Limits::default()
    }
}

/// Run `sql` over `samples` without side effects and return its rows: the
/// rule engine's dry run, pure (no broker, no services, no async runtime)
/// and bounded ([`MAX_TEST_SAMPLES`], [`MAX_TEST_ROWS`], small window
/// limits). It runs on the calling thread; callers on an async runtime run
/// it on the blocking pool, as [`crate::Engine::test`] does.
pub fn dry_run(sql: &str, samples: &[Sample]) -> Result<TestOutput, RuleError> {
    check_samples(samples)?;
    let query = Query::parse(sql)?;
    let mut exec = query.start(test_limits());
    let mut out = TestOutput::default();
    let mut rows = Vec::new();
    let mut clock = now_ms();
    for (i, s) in samples.iter().enumerate() {
        let bad = |message: &str| RuleError::Sample {
            index: i,
            message: message.to_owned(),
        };
        if let Some(t) = s.advance {
            if s.topic.is_some() || s.payload.is_some() || s.payload_raw.is_some() {
                return Err(bad("`advance` cannot be combined with a message"));
            }
            clock = t;
            exec.advance(t, &mut rows);
        } else {
            let topic = s
                .topic
                .as_deref()
                .ok_or_else(|| bad("`topic` is missing"))?;
            if !verge_mqtt::topic::valid_topic_name(topic) {
                return Err(bad(&format!("`{topic}` is not a valid topic name")));
            }
            let payload = match (&s.payload, &s.payload_raw) {
                (Some(_), Some(_)) => {
                    return Err(bad("give `payload` or `payload_raw`, not both"));
                }
                (Some(v), None) => v.get().as_bytes().to_vec(),
                (None, Some(t)) => t.clone().into_bytes(),
                (None, None) => Vec::new(),
            };
            if s.qos > 2 {
                return Err(bad("`qos` must be 0, 1 or 2"));
            }
            clock = s.time.unwrap_or(clock.saturating_add(1));
            let ev = Event {
                topic,
                payload: &payload,
                client_id: s.clientid.as_deref().unwrap_or("test"),
                qos: s.qos,
                timestamp_ms: clock,
                user_properties: &[],
            };
            if query
                .sources()
                .iter()
                .any(|f| verge_mqtt::topic::matches(f, topic))
                && let Err(e) = exec.push(&ev, &mut rows)
            {
                out.errors.push(SampleError {
                    sample: i,
                    error: e.to_string(),
                });
            }
        }
        if take(&mut out, &mut rows) {
            return Ok(out);
        }
    }
    // Windows still open are closed at the end.
    exec.flush(&mut rows);
    take(&mut out, &mut rows);
    Ok(out)
}

/// Move `rows` into `out` up to [`MAX_TEST_ROWS`]; true once cut.
fn take(out: &mut TestOutput, rows: &mut Vec<Row>) -> bool {
    let room = MAX_TEST_ROWS - out.rows.len();
    if rows.len() > room {
        rows.truncate(room);
        out.truncated = true;
    }
    out.rows.append(rows);
    out.truncated
}
