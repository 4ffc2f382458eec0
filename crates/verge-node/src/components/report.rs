//! What the supervisor tells others: the `verge_component_*` metrics and
//! the component host the cloud agent drives (apply, the status report
//! with a tail of each component's output, state changes, the versions
//! whose files must stay).

use std::fmt::Write;
use std::sync::Arc;

use tokio::sync::watch;
use verge_protocol::ComponentSpec;

use super::{Components, Entry, State};

impl Components {
    /// Append the `verge_component_*` metrics.
    pub fn render_metrics(&self, out: &mut String) {
        let infos = self.list();
        let _ = writeln!(
            out,
            "# HELP verge_component_restarts_total restarts of a component since the node started"
        );
        let _ = writeln!(out, "# TYPE verge_component_restarts_total counter");
        for i in &infos {
            let _ = writeln!(
                out,
                "verge_component_restarts_total{{component=\"{}\"}} {}",
                i.name, i.restarts
            );
        }
        let _ = writeln!(
            out,
            "# HELP verge_component_state 1 for the state a component is in"
        );
        let _ = writeln!(out, "# TYPE verge_component_state gauge");
        for i in &infos {
            for s in State::ALL {
                let _ = writeln!(
                    out,
                    "verge_component_state{{component=\"{}\",state=\"{}\"}} {}",
                    i.name,
                    s.as_str(),
                    u8::from(i.state == s)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP verge_component_up 1 while a component's process or container runs"
        );
        let _ = writeln!(out, "# TYPE verge_component_up gauge");
        for i in &infos {
            let _ = writeln!(
                out,
                "verge_component_up{{component=\"{}\"}} {}",
                i.name,
                u8::from(i.pid.is_some() || i.container_id.is_some())
            );
        }
        let _ = writeln!(
            out,
            "# HELP verge_component_log_lines_dropped_total output lines dropped from a component's log ring"
        );
        let _ = writeln!(
            out,
            "# TYPE verge_component_log_lines_dropped_total counter"
        );
        for i in &infos {
            let _ = writeln!(
                out,
                "verge_component_log_lines_dropped_total{{component=\"{}\"}} {}",
                i.name, i.log_lines_dropped
            );
        }
        let _ = writeln!(
            out,
            "# HELP verge_component_memory_bytes resident memory of a running component's process"
        );
        let _ = writeln!(out, "# TYPE verge_component_memory_bytes gauge");
        for i in &infos {
            if let Some(m) = i.memory_bytes {
                let _ = writeln!(
                    out,
                    "verge_component_memory_bytes{{component=\"{}\"}} {m}",
                    i.name
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP verge_component_cpu_seconds_total CPU time of a running component's process (user + system)"
        );
        let _ = writeln!(out, "# TYPE verge_component_cpu_seconds_total counter");
        for i in &infos {
            if let Some(c) = i.cpu_seconds {
                let _ = writeln!(
                    out,
                    "verge_component_cpu_seconds_total{{component=\"{}\"}} {c}",
                    i.name
                );
            }
        }
        if let Some(bus) = &self.set.bus {
            bus.render_metrics(out);
        }
    }
}

/// Lines of a component's output in the cloud's status report.
pub const REPORT_LOG_LINES: usize = 10;
/// Characters kept of each of them.
const REPORT_LINE_CHARS: usize = 240;

impl verge_agent::ComponentHost for Components {
    fn apply<'a>(&'a self, specs: &'a [ComponentSpec]) -> verge_agent::ApplyFuture<'a> {
        Box::pin(Components::apply(self, specs))
    }

    fn report(&self) -> Vec<serde_json::Value> {
        let slots: Vec<Arc<Entry>> = self.set.slots().iter().map(|s| s.entry.clone()).collect();
        slots
            .iter()
            .filter_map(|e| {
                let mut v = serde_json::to_value(e.info()).ok()?;
                let tail: Vec<serde_json::Value> = e
                    .logs
                    .lock()
                    .map(|l| l.tail(REPORT_LOG_LINES))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| {
                        let mut line = l.line;
                        if line.len() > REPORT_LINE_CHARS {
                            let mut cut = REPORT_LINE_CHARS;
                            while !line.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            line.truncate(cut);
                        }
                        serde_json::json!({"stream": l.stream, "line": line})
                    })
                    .collect();
                if let Some(m) = v.as_object_mut() {
                    m.insert("log_tail".into(), tail.into());
                }
                Some(v)
            })
            .collect()
    }

    fn transitions(&self) -> Option<watch::Receiver<u64>> {
        Some(self.set.transitions.subscribe())
    }

    fn versions_in_use(&self) -> Vec<(String, String)> {
        Components::versions_in_use(self)
    }
}
