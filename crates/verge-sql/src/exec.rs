//! The executor: per-rule state that turns messages into rows ([`Executor::push`], [`Executor::advance`]).

use std::sync::Arc;

use crate::Event;
use crate::error::EvalError;
use crate::expr::{Ctx, truth};
use crate::limits::{ExecStats, Limits};
use crate::payload::Fields;
use crate::plan::{Item, Plan};
use crate::row::Row;
use crate::value::Value;
use crate::window::WinState;

/// The running state of one rule. Not shared: one executor per running rule.
#[derive(Debug)]
pub struct Executor {
    pub(crate) plan: Arc<Plan>,
    pub(crate) limits: Limits,
    fields: Fields,
    keys: Vec<Value>,
    args: Vec<Value>,
    pub(crate) state: Option<WinState>,
    pub(crate) stats: ExecStats,
}

impl Executor {
    pub(crate) fn new(plan: Arc<Plan>, limits: Limits) -> Executor {
        let fields = Fields::new(plan.field_names.len());
        let state = plan
            .agg
            .as_ref()
            .map(|a| WinState::new(a.window, a.event_time.as_ref().map(|e| e.1)));
        Executor {
            plan,
            limits,
            fields,
            keys: Vec::new(),
            args: Vec::new(),
            state,
            stats: ExecStats::default(),
        }
    }

    /// Feeds one message. A non-aggregate query appends 0 or 1 row to `out`;
    /// an aggregate query updates its windows and may append rows of windows
    /// that this message closes (processing time moved past their end, the
    /// watermark passed it, a COUNT window filled) or a SLIDING row.
    pub fn push(&mut self, ev: &Event<'_>, out: &mut Vec<Row>) -> Result<(), EvalError> {
        self.stats.messages_in += 1;
        let r = self.push_inner(ev, out);
        if let Err(e) = &r {
            self.stats.eval_errors += 1;
            self.stats.last_error = Some(e.message.clone());
        }
        r
    }

    fn push_inner(&mut self, ev: &Event<'_>, out: &mut Vec<Row>) -> Result<(), EvalError> {
        let plan = Arc::clone(&self.plan);
        self.fields
            .load(ev.payload, &plan.field_names, plan.star)
            .map_err(EvalError::new)?;
        let ctx = Ctx {
            sql: &plan.sql,
            fields: &self.fields.slots,
            ev: Some(ev),
            now: ev.timestamp_ms,
            keys: &[],
            aggs: &[],
            outs: &[],
            window: (0, 0),
        };
        if let Some(w) = &plan.where_
            && truth(&ctx, w, "WHERE")? != Some(true)
        {
            self.stats.filtered += 1;
            return Ok(());
        }
        let Some(agg) = &plan.agg else {
            let mut row = Row::with_capacity(plan.items.len() + self.fields.all.len());
            for item in &plan.items {
                match item {
                    Item::Col(name, e) => row.push(Arc::clone(name), e.eval(&ctx)?),
                    Item::Star => {
                        for (k, v) in &self.fields.all {
                            if !plan.explicit_names.contains(k) {
                                row.push(Arc::clone(k), v.clone());
                            }
                        }
                    }
                }
            }
            self.stats.rows_out += 1;
            out.push(row);
            return Ok(());
        };
        let time = match &agg.event_time {
            Some((e, _)) => {
                let v = e.eval(&ctx)?;
                event_time(&v).ok_or_else(|| {
                    let text = plan.sql.get(e.start as usize..e.end as usize).unwrap_or("?");
                    EvalError::new(format!("TIMESTAMP BY expects milliseconds or an RFC 3339 time, found {} in '{text}'", v.type_name()))
                })?
            }
            None => ev.timestamp_ms.clamp(-MAX_TIME, MAX_TIME),
        };
        if !(-MAX_TIME..=MAX_TIME).contains(&time) {
            return Err(EvalError::new(format!(
                "event time {time} is out of range (more than 100,000 years from 1970)"
            )));
        }
        let proc_time = ev.timestamp_ms.clamp(-MAX_TIME, MAX_TIME);
        if agg.event_time.is_some()
            && time > proc_time.saturating_add(self.limits.max_future_ms.max(0))
        {
            self.stats.dropped_future += 1;
            return Ok(());
        }
        self.keys.clear();
        for k in &agg.keys {
            self.keys.push(k.eval(&ctx)?);
        }
        self.args.clear();
        for a in &agg.aggs {
            self.args.push(match &a.arg {
                Some(e) => e.eval(&ctx)?,
                None => Value::Null,
            });
        }
        let Some(state) = self.state.as_mut() else {
            return Ok(());
        };
        let mut sink = crate::window::Sink {
            plan: &plan,
            out,
            stats: &mut self.stats,
            limits: self.limits,
        };
        state.push(time, proc_time, &self.keys, &self.args, &mut sink)
    }

    /// Processing time has reached `now_ms`: closes every window that ends at
    /// or before it (TUMBLING, HOPPING, SESSION in processing time) and appends
    /// their rows. Event-time windows close only as the watermark moves.
    pub fn advance(&mut self, now_ms: i64, out: &mut Vec<Row>) {
        let plan = Arc::clone(&self.plan);
        let now_ms = now_ms.clamp(-MAX_TIME, MAX_TIME);
        if let Some(state) = self.state.as_mut() {
            let mut sink = crate::window::Sink {
                plan: &plan,
                out,
                stats: &mut self.stats,
                limits: self.limits,
            };
            state.advance(now_ms, &mut sink);
        }
    }

    /// Closes every open window now and appends its rows, as if time ran on
    /// with no more messages: TUMBLING and HOPPING windows (oldest first) and
    /// SESSION windows (by end). COUNT windows close only when they fill, so
    /// the messages of a COUNT group that are in no row yet are dropped, as
    /// they would be live; SLIDING rows were emitted per message, so its
    /// buffers are just released. Works the same in processing and event
    /// time; `now()` in the rows is the latest processing time seen. The
    /// executor is left empty (the clock and the watermark stay where they
    /// are). The runtime calls it at the end of a dry run, where event-time
    /// windows would otherwise never close.
    pub fn flush(&mut self, out: &mut Vec<Row>) {
        let plan = Arc::clone(&self.plan);
        if let Some(state) = self.state.as_mut() {
            let mut sink = crate::window::Sink {
                plan: &plan,
                out,
                stats: &mut self.stats,
                limits: self.limits,
            };
            state.flush(&mut sink);
        }
    }

    /// The earliest processing time at which [`advance`](Self::advance) would emit
    /// something, or `None` when nothing is pending (non-aggregate, SLIDING,
    /// COUNT and event-time queries never need a timer).
    pub fn next_deadline(&self) -> Option<i64> {
        self.state.as_ref().and_then(WinState::next_deadline)
    }

    /// Counters and the size of the state held.
    pub fn stats(&self) -> ExecStats {
        let mut s = self.stats.clone();
        if let Some(state) = &self.state {
            state.measure(&mut s);
        }
        s
    }
}

/// Times are kept within ±100,000 years so window arithmetic cannot overflow.
const MAX_TIME: i64 = 3_155_760_000_000_000;

/// Event time in ms from a TIMESTAMP BY value: a number of ms or an RFC 3339 string.
fn event_time(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Float(f) => crate::time::float_ms(*f),
        Value::Str(s) => crate::time::parse(s),
        _ => None,
    }
}
