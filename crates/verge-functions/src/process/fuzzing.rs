//! Entry points for the fuzz target `fuzz/fuzz_targets/fuzz_function_wire.rs`:
//! a worker's stdout bytes through the same line reader and answer parser
//! the runtime uses, driven synchronously. Not part of the crate's API.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, ReadBuf};

use super::MAX_ERROR;
use super::wire::{self, Answer, Line, LineReader};
use crate::message::{CallError, Message};

/// The longest error text an answer yields: [`MAX_ERROR`] bytes and `…`.
pub const MAX_ERROR_TEXT: usize = MAX_ERROR + '…'.len_utf8();

/// One stdout line as the reader hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdoutLine {
    /// A whole line without its `\n`.
    Full(Vec<u8>),
    /// The first `max` bytes of a longer line (the rest is skipped).
    Cut(Vec<u8>),
}

/// In-memory bytes handed out at most `chunk` bytes per read, as a pipe
/// may split them.
struct Pieces<'a> {
    /// What is left to read.
    data: &'a [u8],
    /// Most bytes one read returns.
    chunk: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.data.len().min(self.chunk).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Every line of `stdout` read by the runtime's line reader with lines of
/// at most `max` bytes, the pipe giving at most `chunk` (≥ 1) bytes a read.
pub fn stdout_lines(stdout: &[u8], max: usize, chunk: usize) -> Vec<StdoutLine> {
    let pipe = Pieces {
        data: stdout,
        chunk: chunk.max(1),
    };
    let mut reader = LineReader::new(pipe, max);
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        // An in-memory pipe never makes the reader wait.
        let Poll::Ready(line) = pin!(reader.next()).as_mut().poll(&mut cx) else {
            return out;
        };
        match line {
            Ok(Line::Full(l)) => out.push(StdoutLine::Full(l)),
            Ok(Line::Cut(l)) => out.push(StdoutLine::Cut(l)),
            Ok(Line::Eof) | Err(_) => return out,
        }
    }
}

/// What a stdout line is, read as the answer to request `id`.
#[derive(Debug)]
pub enum Parsed {
    /// Not a JSON object with an `id`: skipped.
    Skip,
    /// An answer to another request: skipped.
    Stale,
    /// The call's outcome: output messages, or why it failed.
    Done(Result<Vec<Message>, CallError>),
}

/// Parse `line` as the answer to request `id`, as the runtime does.
pub fn parse_answer(line: &[u8], id: u64) -> Parsed {
    match wire::parse_answer(line, id) {
        Answer::Skip(_) => Parsed::Skip,
        Answer::Stale(_) => Parsed::Stale,
        Answer::Done(r) => Parsed::Done(r),
    }
}

/// The request line (with its `\n`) the runtime would send for `msg`.
pub fn request_line(id: u64, msg: &Message) -> Result<Vec<u8>, CallError> {
    wire::encode_request(id, msg)
}
