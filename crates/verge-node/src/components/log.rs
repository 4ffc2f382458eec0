//! A component's captured output: a ring of the latest lines bounded in
//! lines and bytes, with a counter of the lines it dropped. Lines are
//! numbered; a [`Follow`] reads new lines as they come, at its own pace:
//! it holds no more than one batch, and a follower that falls behind the
//! ring learns how many lines it missed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::watch;

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
    /// Lines pushed ever: the number of the next line.
    pushed: u64,
    /// `pushed`, for followers.
    notify: watch::Sender<u64>,
    /// Its component is gone (removed or replaced): followers end once
    /// they have read what is left.
    closed: bool,
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
            pushed: 0,
            notify: watch::channel(0).0,
            closed: false,
        }
    }

    /// Mark the ring's component gone: its followers read what is left,
    /// then end.
    pub fn close(&mut self) {
        self.closed = true;
        self.notify.send_modify(|_| {});
    }

    /// Add a line, dropping the oldest ones past either bound.
    pub fn push(&mut self, stream: &'static str, line: String) {
        self.bytes += line.len();
        self.lines.push_back(LogLine { stream, line });
        self.pushed += 1;
        self.notify.send_replace(self.pushed);
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

    /// Up to `max` lines numbered `from` on, the number after the last one
    /// returned, and how many lines from `from` on the ring no longer
    /// holds.
    pub fn since(&self, from: u64, max: usize) -> (Vec<LogLine>, u64, u64) {
        let first = self.pushed - self.lines.len() as u64;
        let start = from.max(first);
        let missed = start - from.min(start);
        let skip = (start - first) as usize;
        let out: Vec<LogLine> = self.lines.iter().skip(skip).take(max).cloned().collect();
        let next = start + out.len() as u64;
        (out, next, missed)
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

/// Most lines a follower takes at once.
pub const FOLLOW_BATCH: usize = 256;

/// What a follower gets next.
#[derive(Debug)]
pub enum Followed {
    /// New lines, oldest first.
    Lines(Vec<LogLine>),
    /// Lines the ring dropped before this follower read them.
    Missed(u64),
}

/// A reader of new lines of one ring.
pub struct Follow {
    ring: Arc<Mutex<LogRing>>,
    rx: watch::Receiver<u64>,
    end: watch::Receiver<bool>,
    cursor: u64,
}

impl Follow {
    /// Follow `ring` from its last `tail` lines on, until `end` turns
    /// true or is dropped.
    pub fn new(ring: Arc<Mutex<LogRing>>, tail: usize, end: watch::Receiver<bool>) -> Follow {
        let (rx, cursor) = match ring.lock() {
            Ok(r) => (
                r.notify.subscribe(),
                r.pushed - (tail.min(r.lines.len()) as u64),
            ),
            Err(_) => (watch::channel(0).1, 0),
        };
        Follow {
            ring,
            rx,
            end,
            cursor,
        }
    }

    /// The next lines (waiting for them), or how many were missed; `None`
    /// once the end is signalled, or once the ring is closed and read.
    pub async fn next(&mut self) -> Option<Followed> {
        loop {
            if *self.end.borrow() {
                return None;
            }
            let (lines, next, missed, closed) = match self.ring.lock() {
                Ok(r) => {
                    let (lines, next, missed) = r.since(self.cursor, FOLLOW_BATCH);
                    (lines, next, missed, r.closed)
                }
                Err(_) => return None,
            };
            if missed > 0 {
                self.cursor += missed;
                return Some(Followed::Missed(missed));
            }
            if !lines.is_empty() {
                self.cursor = next;
                return Some(Followed::Lines(lines));
            }
            if closed {
                return None;
            }
            self.rx.borrow_and_update();
            // A line pushed between the read above and this wait has
            // changed the value already: `changed` returns at once.
            if *self.rx.borrow() != self.cursor {
                continue;
            }
            tokio::select! {
                r = self.rx.changed() => if r.is_err() { return None },
                r = self.end.changed() => if r.is_err() { return None },
            }
        }
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
    fn since_numbers_lines_and_counts_what_was_missed() {
        let mut r = LogRing::new(3, 1 << 20);
        for i in 0..5 {
            r.push("stdout", format!("l{i}"));
        }
        let (lines, next, missed) = r.since(0, 10);
        assert_eq!((missed, next), (2, 5));
        assert_eq!(
            lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
            ["l2", "l3", "l4"]
        );
        let (lines, next, missed) = r.since(3, 1);
        assert_eq!((lines[0].line.as_str(), next, missed), ("l3", 4, 0));
        assert!(r.since(5, 10).0.is_empty());
    }

    #[tokio::test]
    async fn a_slow_follower_gets_a_missed_count_not_more_memory() {
        let ring = Arc::new(Mutex::new(LogRing::new(4, 1 << 20)));
        let (end_tx, end) = watch::channel(false);
        let mut f = Follow::new(ring.clone(), 0, end);
        ring.lock().unwrap().push("stdout", "a".into());
        match f.next().await {
            Some(Followed::Lines(l)) => assert_eq!(l[0].line, "a"),
            other => panic!("{other:?}"),
        }
        for i in 0..10 {
            ring.lock().unwrap().push("stdout", format!("n{i}"));
        }
        match f.next().await {
            Some(Followed::Missed(n)) => assert_eq!(n, 6),
            other => panic!("{other:?}"),
        }
        match f.next().await {
            Some(Followed::Lines(l)) => assert_eq!(l.len(), 4),
            other => panic!("{other:?}"),
        }
        let waiting = tokio::spawn(async move { f.next().await.is_none() });
        end_tx.send_replace(true);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn a_closed_ring_ends_its_followers_after_the_last_lines() {
        let ring = Arc::new(Mutex::new(LogRing::new(8, 1 << 20)));
        let (_end_tx, end) = watch::channel(false);
        let mut f = Follow::new(ring.clone(), 0, end);
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(next) = f.next().await {
                if let Followed::Lines(l) = next {
                    got.extend(l.into_iter().map(|l| l.line));
                }
            }
            got
        });
        tokio::task::yield_now().await;
        {
            let mut r = ring.lock().unwrap();
            r.push("stdout", "last".into());
            r.close();
        }
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
            .await
            .expect("the follower ends")
            .unwrap();
        assert_eq!(got, ["last"]);
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
