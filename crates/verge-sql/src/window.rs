//! Window state: TUMBLING/HOPPING time windows, SLIDING, SESSION and COUNT, in processing or event time.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::agg::Acc;
use crate::ast::WindowKind;
use crate::error::{EvalError, EvalResult};
use crate::expr::{Ctx, truth};
use crate::limits::{ExecStats, Limits};
use crate::plan::{Item, Plan};
use crate::row::Row;
use crate::value::Value;

type Key = Box<[Value]>;

/// Where closing windows put their rows and counts.
pub(crate) struct Sink<'a> {
    pub plan: &'a Plan,
    pub out: &'a mut Vec<Row>,
    pub stats: &'a mut ExecStats,
    pub limits: Limits,
}

/// A buffered message of SLIDING/COUNT windows: its time and aggregate arguments.
#[derive(Debug)]
struct Entry {
    t: i64,
    args: Box<[Value]>,
}

/// Groups of one time window, in order of first appearance.
#[derive(Debug, Default)]
struct Groups {
    index: HashMap<Key, usize>,
    list: Vec<(Key, Vec<Acc>)>,
}

#[derive(Debug)]
struct Session {
    start: i64,
    last: i64,
    accs: Vec<Acc>,
    seq: u64,
}

#[derive(Debug, Default)]
struct CountGroup {
    buf: VecDeque<Entry>,
    since: usize,
    emitted: bool,
}

#[derive(Debug)]
enum Kind {
    Time {
        size: i64,
        step: i64,
        windows: BTreeMap<i64, Groups>,
    },
    Sliding {
        size: i64,
        groups: HashMap<Key, VecDeque<Entry>>,
    },
    Session {
        gap: i64,
        groups: HashMap<Key, Session>,
        next_close: Option<i64>,
        seq: u64,
    },
    Count {
        n: usize,
        step: usize,
        groups: HashMap<Key, CountGroup>,
    },
}

/// The window state of one executor.
#[derive(Debug)]
pub(crate) struct WinState {
    kind: Kind,
    /// `Some(lateness)` in event time.
    lateness: Option<i64>,
    /// Processing-time clock: the highest message time or `advance` seen.
    clock: i64,
    max_event: Option<i64>,
}

impl WinState {
    pub fn new(w: WindowKind, lateness: Option<i64>) -> WinState {
        let kind = match w {
            WindowKind::Tumbling(d) => Kind::Time {
                size: d,
                step: d,
                windows: BTreeMap::new(),
            },
            WindowKind::Hopping(d, s) => Kind::Time {
                size: d,
                step: s,
                windows: BTreeMap::new(),
            },
            WindowKind::Sliding(d) => Kind::Sliding {
                size: d,
                groups: HashMap::new(),
            },
            WindowKind::Session(g) => Kind::Session {
                gap: g,
                groups: HashMap::new(),
                next_close: None,
                seq: 0,
            },
            WindowKind::Count(n, step) => Kind::Count {
                n,
                step,
                groups: HashMap::new(),
            },
        };
        WinState {
            kind,
            lateness,
            clock: i64::MIN,
            max_event: None,
        }
    }

    fn watermark(&self) -> Option<i64> {
        let l = self.lateness?;
        self.max_event.map(|m| m.saturating_sub(l))
    }

    /// Adds one message at window time `t` (processing time `proc_t`).
    pub fn push(
        &mut self,
        t: i64,
        proc_t: i64,
        keys: &[Value],
        args: &[Value],
        sink: &mut Sink<'_>,
    ) -> EvalResult<()> {
        match self.lateness {
            None => {
                self.clock = self.clock.max(proc_t);
                let now = self.clock;
                self.close_until(now, now, sink);
                self.add(now, now, keys, args, sink)
            }
            Some(_) => {
                self.clock = self.clock.max(proc_t);
                if self.watermark().is_some_and(|wm| t < wm) {
                    sink.stats.dropped_late += 1;
                    return Ok(());
                }
                self.add(t, proc_t, keys, args, sink)?;
                self.max_event = Some(self.max_event.map_or(t, |m| m.max(t)));
                if let Some(wm) = self.watermark() {
                    self.close_until(wm, proc_t, sink);
                }
                Ok(())
            }
        }
    }

    /// Window starts of the TUMBLING/HOPPING windows covering `t`, oldest first.
    fn starts(size: i64, step: i64, t: i64) -> impl Iterator<Item = i64> {
        let last = t.div_euclid(step).saturating_mul(step);
        // size / step ≤ 1000 (checked by the parser), so this is bounded.
        let n = (size.saturating_add(step - 1) / step).max(1);
        (0..n)
            .rev()
            .filter_map(move |k| last.checked_sub(k.saturating_mul(step)))
            .filter(move |s| *s > t.saturating_sub(size))
    }

    /// Adds one message. Every accumulator the message touches is checked
    /// first, so a message that fails (a type error, an overflow) changes nothing.
    fn add(
        &mut self,
        t: i64,
        now: i64,
        keys: &[Value],
        args: &[Value],
        sink: &mut Sink<'_>,
    ) -> EvalResult<()> {
        let limits = sink.limits;
        match &mut self.kind {
            Kind::Time {
                size,
                step,
                windows,
            } => {
                let (size, step) = (*size, *step);
                // Check first: the groups that exist, and a fresh group once.
                let mut fresh_checked = false;
                for s in Self::starts(size, step, t) {
                    match windows
                        .get(&s)
                        .and_then(|g| g.index.get(keys).map(|i| &g.list[*i]))
                    {
                        Some((_, accs)) => sink.check(accs, args)?,
                        None if !fresh_checked => {
                            sink.check(&sink.new_accs(), args)?;
                            fresh_checked = true;
                        }
                        None => {}
                    }
                }
                for s in Self::starts(size, step, t) {
                    if !windows.contains_key(&s) && windows.len() >= limits.max_open_windows {
                        sink.stats.dropped_groups += 1;
                        continue;
                    }
                    let g = windows.entry(s).or_default();
                    let idx = match g.index.get(keys) {
                        Some(i) => *i,
                        None => {
                            if g.list.len() >= limits.max_groups {
                                sink.stats.dropped_groups += 1;
                                if g.list.is_empty() {
                                    windows.remove(&s);
                                }
                                continue;
                            }
                            g.index.insert(keys.into(), g.list.len());
                            g.list.push((keys.into(), sink.new_accs()));
                            g.list.len() - 1
                        }
                    };
                    sink.update(&mut g.list[idx].1, args)?;
                }
                Ok(())
            }
            Kind::Sliding { size, groups } => {
                let size = *size;
                let from = t.saturating_sub(size);
                if !groups.contains_key(keys) && groups.len() >= limits.max_groups {
                    sink.stats.dropped_groups += 1;
                    return Ok(());
                }
                // The buffer after this message: entries within (t − size, ...], the
                // oldest dropped when it is full, then the message itself.
                let empty = VecDeque::new();
                let buf = groups.get(keys).unwrap_or(&empty);
                let kept = buf.iter().filter(|e| e.t > from).count();
                let overflow = usize::from(kept >= limits.max_rows_per_window);
                let aggs = sink.fold(
                    buf.iter()
                        .filter(|e| e.t > from)
                        .skip(overflow)
                        .filter(|e| e.t <= t)
                        .map(|e| &*e.args)
                        .chain(std::iter::once(args)),
                )?;
                let buf = groups.entry(keys.into()).or_default();
                buf.retain(|e| e.t > from);
                if overflow == 1 {
                    buf.pop_front();
                    sink.stats.dropped_rows += 1;
                }
                buf.push_back(Entry {
                    t,
                    args: args.into(),
                });
                sink.emit(keys, &aggs, (from, t), now);
                Ok(())
            }
            Kind::Session {
                gap,
                groups,
                next_close,
                seq,
            } => {
                let gap = *gap;
                // A message exactly `gap` after the last one continues the session.
                let closes = |s: &Session| t > s.last.saturating_add(gap);
                match groups.get(keys) {
                    Some(s) if !closes(s) => sink.check(&s.accs, args)?,
                    _ => sink.check(&sink.new_accs(), args)?,
                }
                if let Some(s) = groups.get(keys)
                    && closes(s)
                    && let Some(s) = groups.remove(keys)
                {
                    let aggs = sink.finish(&s.accs);
                    sink.emit(keys, &aggs, (s.start, s.last.saturating_add(gap)), now);
                }
                match groups.get_mut(keys) {
                    Some(s) => {
                        sink.update(&mut s.accs, args)?;
                        s.start = s.start.min(t);
                        s.last = s.last.max(t);
                    }
                    None => {
                        if groups.len() >= limits.max_groups {
                            sink.stats.dropped_groups += 1;
                            return Ok(());
                        }
                        let mut accs = sink.new_accs();
                        sink.update(&mut accs, args)?;
                        *seq += 1;
                        groups.insert(
                            keys.into(),
                            Session {
                                start: t,
                                last: t,
                                accs,
                                seq: *seq,
                            },
                        );
                        let d = close_time(t, gap);
                        *next_close = Some(next_close.map_or(d, |c| c.min(d)));
                    }
                }
                Ok(())
            }
            Kind::Count { n, step, groups } => {
                let (n, step) = (*n, *step);
                // Reject values that no aggregate accepts before buffering them.
                sink.check(&sink.new_accs(), args)?;
                if !groups.contains_key(keys) && groups.len() >= limits.max_groups {
                    sink.stats.dropped_groups += 1;
                    return Ok(());
                }
                let cap = n.min(limits.max_rows_per_window);
                // Whether this message emits, and the row it emits, before changing anything.
                let (len, since, emitted) = groups
                    .get(keys)
                    .map_or((0, 0, false), |g| (g.buf.len(), g.since, g.emitted));
                let pop = len + 1 > cap;
                let full = (len + 1).min(cap) == cap;
                let due = since + 1 >= if emitted { step } else { n };
                let mut row = None;
                if full && due {
                    let empty = VecDeque::new();
                    let buf = groups.get(keys).map_or(&empty, |g| &g.buf);
                    let entries = buf.iter().skip(usize::from(pop));
                    let first = entries.clone().next().map_or(t, |e| e.t);
                    let aggs = sink.fold(entries.map(|e| &*e.args).chain(std::iter::once(args)))?;
                    row = Some((aggs, (first, t)));
                }
                let g = groups.entry(keys.into()).or_default();
                g.buf.push_back(Entry {
                    t,
                    args: args.into(),
                });
                if pop {
                    g.buf.pop_front();
                    if cap < n {
                        sink.stats.dropped_rows += 1;
                    }
                }
                g.since += 1;
                if let Some((aggs, window)) = row {
                    g.since = 0;
                    g.emitted = true;
                    sink.emit(keys, &aggs, window, now);
                }
                Ok(())
            }
        }
    }

    /// Closes every window ending at or before `limit`; `now` is what now() returns in their rows.
    fn close_until(&mut self, limit: i64, now: i64, sink: &mut Sink<'_>) {
        match &mut self.kind {
            Kind::Time { size, windows, .. } => {
                while let Some((&s, _)) = windows.first_key_value() {
                    if s.saturating_add(*size) > limit {
                        break;
                    }
                    let Some((_, g)) = windows.pop_first() else {
                        break;
                    };
                    for (key, accs) in &g.list {
                        let aggs = sink.finish(accs);
                        sink.emit(key, &aggs, (s, s.saturating_add(*size)), now);
                    }
                }
            }
            Kind::Session {
                gap,
                groups,
                next_close,
                ..
            } => {
                if next_close.is_none_or(|d| d > limit) {
                    return;
                }
                let gap = *gap;
                let mut due: Vec<(i64, u64, Key)> = groups
                    .iter()
                    .filter(|(_, s)| close_time(s.last, gap) <= limit)
                    .map(|(k, s)| (s.last.saturating_add(gap), s.seq, k.clone()))
                    .collect();
                due.sort_by_key(|d| (d.0, d.1));
                for (end, _, key) in due {
                    if let Some(s) = groups.remove(&key) {
                        let aggs = sink.finish(&s.accs);
                        sink.emit(&key, &aggs, (s.start, end), now);
                    }
                }
                *next_close = groups.values().map(|s| close_time(s.last, gap)).min();
            }
            Kind::Sliding { .. } | Kind::Count { .. } => {}
        }
    }

    /// Processing time reached `now`.
    pub fn advance(&mut self, now: i64, sink: &mut Sink<'_>) {
        if self.lateness.is_some() {
            return;
        }
        self.clock = self.clock.max(now);
        let now = self.clock;
        self.close_until(now, now, sink);
        if let Kind::Sliding { size, groups } = &mut self.kind {
            let size = *size;
            groups.retain(|_, buf| {
                buf.retain(|e| e.t > now.saturating_sub(size));
                !buf.is_empty()
            });
        }
    }

    /// Closes everything now (see `Executor::flush`).
    pub fn flush(&mut self, sink: &mut Sink<'_>) {
        let now = if self.clock == i64::MIN {
            0
        } else {
            self.clock
        };
        self.close_until(i64::MAX, now, sink);
        match &mut self.kind {
            Kind::Time { windows, .. } => windows.clear(),
            Kind::Session {
                groups, next_close, ..
            } => {
                groups.clear();
                *next_close = None;
            }
            Kind::Sliding { groups, .. } => groups.clear(),
            // A COUNT window closes only when it fills, not as time passes:
            // its messages that are in no row yet never make one.
            Kind::Count { groups, .. } => groups.clear(),
        }
    }

    pub fn next_deadline(&self) -> Option<i64> {
        if self.lateness.is_some() {
            return None;
        }
        match &self.kind {
            Kind::Time { size, windows, .. } => {
                windows.keys().next().map(|s| s.saturating_add(*size))
            }
            Kind::Session { next_close, .. } => *next_close,
            _ => None,
        }
    }

    /// Fills the gauges of `s`.
    pub fn measure(&self, s: &mut ExecStats) {
        let value = std::mem::size_of::<Value>();
        let (windows, groups, entries, key_values): (usize, usize, usize, usize) = match &self.kind
        {
            Kind::Time { windows, .. } => {
                let groups: usize = windows.values().map(|g| g.list.len()).sum();
                let entries = windows
                    .values()
                    .flat_map(|g| &g.list)
                    .map(|(_, a)| a.iter().map(Acc::entries).sum::<usize>())
                    .sum();
                let keys: usize = windows
                    .values()
                    .flat_map(|g| &g.list)
                    .map(|(k, _)| k.len())
                    .sum();
                (windows.len(), groups, entries, keys)
            }
            Kind::Sliding { groups, .. } => {
                let entries = groups
                    .values()
                    .map(|b| b.iter().map(|e| e.args.len()).sum::<usize>())
                    .sum();
                (
                    usize::from(!groups.is_empty()),
                    groups.len(),
                    entries,
                    groups.keys().map(|k| k.len()).sum(),
                )
            }
            Kind::Session { groups, .. } => {
                let entries = groups
                    .values()
                    .map(|g| g.accs.iter().map(Acc::entries).sum::<usize>())
                    .sum();
                (
                    usize::from(!groups.is_empty()),
                    groups.len(),
                    entries,
                    groups.keys().map(|k| k.len()).sum(),
                )
            }
            Kind::Count { groups, .. } => {
                let entries = groups
                    .values()
                    .map(|g| g.buf.iter().map(|e| e.args.len()).sum::<usize>())
                    .sum();
                (
                    usize::from(!groups.is_empty()),
                    groups.len(),
                    entries,
                    groups.keys().map(|k| k.len()).sum(),
                )
            }
        };
        s.open_windows = windows;
        s.open_groups = groups;
        s.entries_held = entries;
        s.bytes_held = (entries + key_values) * value + groups * 64;
        s.watermark = self.watermark();
    }
}

/// When a session whose last message came at `last` closes: once time has
/// passed `last + gap` (a message at exactly `last + gap` still joins it).
fn close_time(last: i64, gap: i64) -> i64 {
    last.saturating_add(gap).saturating_add(1)
}

impl Sink<'_> {
    fn new_accs(&self) -> Vec<Acc> {
        self.plan.agg.as_ref().map_or_else(Vec::new, |a| {
            a.aggs.iter().map(|s| Acc::new(s.kind)).collect()
        })
    }

    fn update(&mut self, accs: &mut [Acc], args: &[Value]) -> EvalResult<()> {
        let Some(agg) = &self.plan.agg else {
            return Ok(());
        };
        for ((acc, spec), v) in accs.iter_mut().zip(&agg.aggs).zip(args) {
            match acc.update(spec.kind, v, self.limits.max_rows_per_window) {
                Ok(true) => {}
                Ok(false) => self.stats.dropped_rows += 1,
                Err(m) => return Err(EvalError::new(format!("{m} in '{}'", spec.text))),
            }
        }
        Ok(())
    }

    /// The error updating `accs` with `args` would give, without changing them.
    fn check(&self, accs: &[Acc], args: &[Value]) -> EvalResult<()> {
        let Some(agg) = &self.plan.agg else {
            return Ok(());
        };
        for ((acc, spec), v) in accs.iter().zip(&agg.aggs).zip(args) {
            acc.check(spec.kind, v)
                .map_err(|m| EvalError::new(format!("{m} in '{}'", spec.text)))?;
        }
        Ok(())
    }

    fn finish(&self, accs: &[Acc]) -> Vec<Value> {
        self.plan.agg.as_ref().map_or_else(Vec::new, |a| {
            accs.iter()
                .zip(&a.aggs)
                .map(|(acc, s)| acc.finish(s))
                .collect()
        })
    }

    fn fold<'e>(&mut self, entries: impl Iterator<Item = &'e [Value]>) -> EvalResult<Vec<Value>> {
        let mut accs = self.new_accs();
        for args in entries {
            self.update(&mut accs, args)?;
        }
        Ok(self.finish(&accs))
    }

    /// Evaluates the SELECT list and HAVING for one group and appends the row.
    fn emit(&mut self, key: &[Value], aggs: &[Value], window: (i64, i64), now: i64) {
        match self.row(key, aggs, window, now) {
            Ok(Some(row)) => {
                self.stats.rows_out += 1;
                self.out.push(row);
            }
            Ok(None) => {}
            Err(e) => {
                self.stats.eval_errors += 1;
                self.stats.last_error = Some(e.message);
            }
        }
    }

    fn row(
        &self,
        key: &[Value],
        aggs: &[Value],
        window: (i64, i64),
        now: i64,
    ) -> EvalResult<Option<Row>> {
        let plan = self.plan;
        let mut ctx = Ctx {
            sql: &plan.sql,
            fields: &[],
            ev: None,
            now,
            keys: key,
            aggs,
            outs: &[],
            window,
        };
        let mut outs = Vec::with_capacity(plan.items.len());
        for item in &plan.items {
            if let Item::Col(_, e) = item {
                outs.push(e.eval(&ctx)?);
            }
        }
        if let Some(h) = plan.agg.as_ref().and_then(|a| a.having.as_ref()) {
            ctx.outs = &outs;
            if truth(&ctx, h, "HAVING")? != Some(true) {
                return Ok(None);
            }
        }
        let names = plan.items.iter().filter_map(|i| match i {
            Item::Col(n, _) => Some(n.clone()),
            Item::Star => None,
        });
        Ok(Some(Row::from_pairs(names.zip(outs).collect())))
    }
}
