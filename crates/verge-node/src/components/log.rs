//! A component's captured output: a ring of the latest lines bounded in
//! lines and bytes, with a counter of the lines it dropped.

use std::collections::VecDeque;

use serde::Serialize;

/// Longest line kept; the rest of a longer line is cut off.
pub const MAX_LINE: usize = 4096;

/// One captured line.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The line, without its newline (lossy UTF-8, at most [`MAX_LINE`]
    /// bytes).
    pub line: String,
}

/// The ring.
#[derive(Debug)]
pub struct LogRing {
    lines: VecDeque<LogLine>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
    dropped: u64,
}

impl LogRing {
    /// An empty ring holding at most `max_lines` lines and `max_bytes`
    /// bytes of text.
    pub fn new(max_lines: usize, max_bytes: usize) -> LogRing {
        LogRing {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines: max_lines.max(1),
            max_bytes: max_bytes.max(MAX_LINE),
            dropped: 0,
        }
    }

    /// Add a line, dropping the oldest ones past either bound.
    pub fn push(&mut self, stream: &'static str, line: String) {
        self.bytes += line.len();
        self.lines.push_back(LogLine { stream, line });
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes -= old.line.len();
                    self.dropped += 1;
                }
                None => break,
            }
        }
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines.iter().skip(skip).cloned().collect()
    }

    /// Lines dropped since the component was created.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Lines held.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether no line is held.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// Split `buf` into whole lines, each cut to [`MAX_LINE`] bytes; what
/// follows the last newline stays in `buf` (cut to [`MAX_LINE`] bytes, the
/// rest of that line skipped: `skipping` says so).
pub fn take_lines(buf: &mut Vec<u8>, skipping: &mut bool) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
        let rest = buf.split_off(pos + 1);
        let mut line = std::mem::replace(buf, rest);
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if *skipping {
            *skipping = false;
            continue;
        }
        line.truncate(MAX_LINE);
        out.push(String::from_utf8_lossy(&line).into_owned());
    }
    if buf.len() > MAX_LINE {
        if !*skipping {
            out.push(String::from_utf8_lossy(&buf[..MAX_LINE]).into_owned());
        }
        buf.clear();
        *skipping = true;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_in_lines_and_bytes_and_counts_drops() {
        let mut r = LogRing::new(3, 1 << 20);
        for i in 0..5 {
            r.push("stdout", format!("l{i}"));
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.dropped(), 2);
        let t: Vec<_> = r.tail(2).into_iter().map(|l| l.line).collect();
        assert_eq!(t, ["l3", "l4"]);
        let mut r = LogRing::new(1000, MAX_LINE);
        for _ in 0..3 {
            r.push("stderr", "x".repeat(MAX_LINE / 2));
        }
        assert_eq!((r.len(), r.dropped()), (2, 1));
    }

    #[test]
    fn long_lines_are_cut_and_partial_lines_wait() {
        let mut skipping = false;
        let mut buf = b"a\r\nb\npart".to_vec();
        assert_eq!(take_lines(&mut buf, &mut skipping), ["a", "b"]);
        assert_eq!(buf, b"part");
        let mut buf = vec![b'x'; MAX_LINE + 10];
        let lines = take_lines(&mut buf, &mut skipping);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert!(skipping);
        buf.extend_from_slice(b"tail\nnext\n");
        assert_eq!(take_lines(&mut buf, &mut skipping), ["next"]);
    }
}
