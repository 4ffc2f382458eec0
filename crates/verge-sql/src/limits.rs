//! What one running rule may hold ([`Limits`]) and what it counts
//! ([`ExecStats`]), shared by the executor and the window state.

/// Bounds on the state one running rule may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most groups per window instance (SLIDING/SESSION/COUNT: groups in all); a message for a new group beyond it is dropped and counted.
    pub max_groups: usize,
    /// Most values held per group buffer (SLIDING/COUNT entries, collect/percentile/median values); extra values are dropped and counted.
    pub max_rows_per_window: usize,
    /// Most time windows open at once (TUMBLING/HOPPING); a message that would open one more is dropped and counted.
    pub max_open_windows: usize,
    /// Event time (`TIMESTAMP BY`) may be at most this many ms ahead of the
    /// message's processing time (`Event::timestamp_ms`); a message stamped
    /// further in the future is dropped and counted in `dropped_future`, so one
    /// bad clock cannot push the watermark past everything else.
    pub max_future_ms: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_groups: 10_000,
            max_rows_per_window: 100_000,
            max_open_windows: 1_000,
            max_future_ms: 3_600_000,
        }
    }
}

/// Counters and gauges of one executor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecStats {
    /// Messages pushed.
    pub messages_in: u64,
    /// Messages rejected by WHERE (false or NULL).
    pub filtered: u64,
    /// Rows emitted.
    pub rows_out: u64,
    /// Messages or groups whose evaluation failed.
    pub eval_errors: u64,
    /// The last evaluation error.
    pub last_error: Option<String>,
    /// Open window instances (time windows; 1 for SLIDING/SESSION/COUNT when any group is held).
    pub open_windows: usize,
    /// Groups held over all windows.
    pub open_groups: usize,
    /// Accumulators and buffered entries held.
    pub entries_held: usize,
    /// Rough estimate of the bytes held by that state.
    pub bytes_held: usize,
    /// Messages dropped because their group was new and the window was at `max_groups` (or `max_open_windows` was reached).
    pub dropped_groups: u64,
    /// Messages dropped because their event time was behind the watermark.
    pub dropped_late: u64,
    /// Values dropped because a group buffer was at `max_rows_per_window`.
    pub dropped_rows: u64,
    /// Messages dropped because their event time was more than `max_future_ms` ahead of their processing time.
    pub dropped_future: u64,
    /// Current event-time watermark (max event time − lateness), with TIMESTAMP BY.
    pub watermark: Option<i64>,
}
