//! The process protocol's wire format (docs/functions.md, "The process
//! protocol, version 1"): requests encoded as JSON lines, answers parsed
//! and checked, and a reader of size-capped lines from a worker's stdout.

use std::borrow::Cow;
use std::io;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use super::{CallResult, MAX_ERROR};
use crate::message::{CallError, Message, now_ms};

/// A line for the log: lossy UTF-8 without a trailing `\r`.
pub(super) fn text(line: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line))
}

/// The start of a skipped stdout line, for the log.
pub(super) fn preview(line: &[u8]) -> String {
    const MAX: usize = 200;
    if line.len() > MAX {
        format!("{}… ({} bytes)", text(&line[..MAX]), line.len())
    } else {
        text(line).into_owned()
    }
}

/// What [`LineReader::next`] read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// A whole line without its `\n` (a last line without one counts).
    Full(Vec<u8>),
    /// The first `max` bytes of a longer line; the rest of it is skipped.
    Cut(Vec<u8>),
    /// The pipe is closed.
    Eof,
}

/// Reads lines of at most `max` bytes without ever buffering more.
pub(super) struct LineReader<R> {
    /// The pipe.
    inner: BufReader<R>,
    /// The line read so far.
    buf: Vec<u8>,
    /// Longest line returned whole.
    max: usize,
    /// Skipping the rest of a line that was too long.
    skipping: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(super) fn new(inner: R, max: usize) -> LineReader<R> {
        LineReader {
            inner: BufReader::new(inner),
            buf: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// The next line. Cancel safe: what was read of a line before the
    /// future was dropped is kept for the next call.
    pub(super) async fn next(&mut self) -> io::Result<Line> {
        loop {
            let chunk = self.inner.fill_buf().await?;
            if chunk.is_empty() {
                self.skipping = false;
                if self.buf.is_empty() {
                    return Ok(Line::Eof);
                }
                return Ok(Line::Full(std::mem::take(&mut self.buf)));
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let used = newline.map_or(chunk.len(), |i| i + 1);
            if self.skipping {
                self.skipping = newline.is_none();
                self.inner.consume(used);
                continue;
            }
            let data = &chunk[..newline.unwrap_or(chunk.len())];
            let room = self.max.saturating_sub(self.buf.len());
            if data.len() > room {
                self.buf.extend_from_slice(&data[..room]);
                self.skipping = newline.is_none();
                self.inner.consume(used);
                return Ok(Line::Cut(std::mem::take(&mut self.buf)));
            }
            self.buf.extend_from_slice(data);
            self.inner.consume(used);
            if newline.is_some() {
                return Ok(Line::Full(std::mem::take(&mut self.buf)));
            }
        }
    }
}

/// A request line (docs/functions.md).
#[derive(Serialize)]
pub(super) struct Request<'a> {
    id: u64,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    user_properties: &'a [(String, String)],
    time_ms: i64,
    qos: u8,
}

/// The request line for a message, with its `\n`.
pub(super) fn encode_request(id: u64, msg: &Message) -> Result<Vec<u8>, CallError> {
    let (payload, payload_base64) = match std::str::from_utf8(&msg.payload) {
        Ok(text) => (Some(text), None),
        Err(_) => (None, Some(B64.encode(&msg.payload))),
    };
    let request = Request {
        id,
        topic: &msg.topic,
        payload,
        payload_base64,
        content_type: msg.content_type.as_deref(),
        user_properties: &msg.user_properties,
        time_ms: msg.time_ms,
        qos: msg.qos,
    };
    let mut line = serde_json::to_vec(&request)
        .map_err(|e| CallError::Unavailable(format!("cannot encode the request: {e}")))?;
    line.push(b'\n');
    Ok(line)
}

/// What a stdout line read during a call is.
#[derive(Debug)]
pub(super) enum Answer {
    /// Not a JSON object with an `id` (why): skipped.
    Skip(&'static str),
    /// An answer to another request (its id): skipped.
    Stale(Value),
    /// The answer to the call.
    Done(CallResult),
}

/// Read a stdout line as the answer to request `id`.
pub(super) fn parse_answer(line: &[u8], id: u64) -> Answer {
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(line) else {
        return Answer::Skip("not a JSON object");
    };
    let Some(got) = answer.get("id") else {
        return Answer::Skip("no `id`");
    };
    if got.as_u64() != Some(id) {
        return Answer::Stale(got.clone());
    }
    match answer.remove("error") {
        None | Some(Value::Null) => {}
        Some(Value::String(e)) => return Answer::Done(Err(CallError::Returned(cut(e)))),
        Some(other) => return Answer::Done(Err(CallError::Returned(cut(other.to_string())))),
    }
    let messages = match answer.remove("messages") {
        Some(Value::Array(messages)) => messages,
        None | Some(Value::Null) => {
            return Answer::Done(Err(CallError::BadOutput(
                "the answer has neither `messages` nor `error`".into(),
            )));
        }
        Some(_) => {
            return Answer::Done(Err(CallError::BadOutput(
                "`messages` must be an array".into(),
            )));
        }
    };
    let time_ms = now_ms();
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            parse_message(m, time_ms)
                .map_err(|why| CallError::BadOutput(format!("messages[{i}]: {why}")))
        })
        .collect();
    Answer::Done(messages)
}

/// A function's error message, cut at [`MAX_ERROR`] bytes.
pub(super) fn cut(mut s: String) -> String {
    if s.len() > MAX_ERROR {
        let mut end = MAX_ERROR;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// `None` for a missing key or a JSON `null`.
pub(super) fn present(v: Option<Value>) -> Option<Value> {
    v.filter(|v| !v.is_null())
}

/// One output message of an answer.
pub(super) fn parse_message(m: Value, time_ms: i64) -> Result<Message, String> {
    let Value::Object(mut m) = m else {
        return Err("not a JSON object".into());
    };
    let topic = match present(m.remove("topic")) {
        Some(Value::String(topic)) => topic,
        Some(_) => return Err("`topic` must be a string".into()),
        None => return Err("`topic` is missing".into()),
    };
    let payload = match (
        present(m.remove("payload")),
        present(m.remove("payload_base64")),
    ) {
        (Some(Value::String(text)), None) => Bytes::from(text.into_bytes()),
        (None, Some(Value::String(b64))) => B64
            .decode(b64)
            .map(Bytes::from)
            .map_err(|e| format!("`payload_base64` is not valid base64: {e}"))?,
        (Some(_), Some(_)) => {
            return Err("has both `payload` and `payload_base64`; give one".into());
        }
        (Some(_), None) => {
            return Err(
                "`payload` must be a string (binary payloads go in `payload_base64`)".into(),
            );
        }
        (None, Some(_)) => return Err("`payload_base64` must be a string".into()),
        (None, None) => return Err("`payload` or `payload_base64` is missing".into()),
    };
    let content_type = match present(m.remove("content_type")) {
        None => None,
        Some(Value::String(ct)) if ct.is_empty() => None,
        Some(Value::String(ct)) => Some(ct),
        Some(_) => return Err("`content_type` must be a string".into()),
    };
    let user_properties = match present(m.remove("user_properties")) {
        None => Vec::new(),
        Some(Value::Array(pairs)) => pairs
            .into_iter()
            .map(|pair| match pair {
                Value::Array(kv) => match <[Value; 2]>::try_from(kv) {
                    Ok([Value::String(k), Value::String(v)]) => Ok((k, v)),
                    _ => Err(()),
                },
                _ => Err(()),
            })
            .collect::<Result<_, ()>>()
            .map_err(|()| "`user_properties` must be a list of [key, value] string pairs")?,
        Some(_) => {
            return Err("`user_properties` must be a list of [key, value] string pairs".into());
        }
    };
    let qos = match present(m.remove("qos")) {
        None => 1,
        Some(q) => match q.as_u64() {
            Some(q @ 0..=2) => q as u8,
            _ => return Err(format!("`qos` must be 0, 1 or 2, not {q}")),
        },
    };
    let retain = match present(m.remove("retain")) {
        None => false,
        Some(Value::Bool(retain)) => retain,
        Some(_) => return Err("`retain` must be true or false".into()),
    };
    Ok(Message {
        topic,
        payload,
        content_type,
        user_properties,
        time_ms,
        qos,
        retain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn answer(line: &str, id: u64) -> Answer {
        parse_answer(line.as_bytes(), id)
    }

    fn bad_output(line: &str) -> String {
        match answer(line, 1) {
            Answer::Done(Err(CallError::BadOutput(why))) => why,
            other => panic!("expected bad output, got {other:?}"),
        }
    }

    #[test]
    fn lines_that_are_not_answers_are_skipped() {
        for line in ["", "hello", "[1,2]", "42", "{\"no_id\": 1}", "{\"id\": 1"] {
            assert!(matches!(answer(line, 1), Answer::Skip(_)), "{line}");
        }
        assert!(matches!(
            answer("{\"id\": 2, \"messages\": []}", 1),
            Answer::Stale(_)
        ));
        assert!(matches!(
            answer("{\"id\": \"1\", \"messages\": []}", 1),
            Answer::Stale(_)
        ));
    }

    #[test]
    fn an_answer_decodes_with_defaults() {
        let line = r#"{"id": 7, "messages": [
            {"topic": "a", "payload": "x"},
            {"topic": "b", "payload_base64": "/wAB", "content_type": "application/octet-stream",
             "user_properties": [["k", "v"]], "qos": 0, "retain": true, "extra": 1},
            {"topic": "c", "payload": "", "payload_base64": null, "content_type": ""}
        ]}"#;
        let Answer::Done(Ok(out)) = answer(line, 7) else {
            panic!("not decoded");
        };
        assert_eq!(out.len(), 3);
        assert_eq!(
            (out[0].topic.as_str(), &out[0].payload[..]),
            ("a", &b"x"[..])
        );
        assert_eq!(
            (out[0].qos, out[0].retain, &out[0].content_type),
            (1, false, &None)
        );
        assert_eq!(&out[1].payload[..], &[0xff, 0, 1]);
        assert_eq!(
            out[1].content_type.as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(out[1].user_properties, vec![("k".into(), "v".into())]);
        assert_eq!((out[1].qos, out[1].retain), (0, true));
        assert_eq!(
            (&out[2].payload[..], &out[2].content_type),
            (&b""[..], &None)
        );
    }

    #[test]
    fn an_error_answer_is_returned() {
        let Answer::Done(Err(e)) = answer(r#"{"id": 1, "error": "too hot"}"#, 1) else {
            panic!("not an error");
        };
        assert_eq!(e, CallError::Returned("too hot".into()));
        let long = format!(r#"{{"id": 1, "error": "{}"}}"#, "é".repeat(5000));
        let Answer::Done(Err(CallError::Returned(e))) = answer(&long, 1) else {
            panic!("not an error");
        };
        assert!(e.len() <= MAX_ERROR + '…'.len_utf8());
    }

    #[test]
    fn malformed_answers_name_the_problem() {
        let cases = [
            (r#"{"id": 1}"#, "neither `messages` nor `error`"),
            (
                r#"{"id": 1, "messages": {}}"#,
                "`messages` must be an array",
            ),
            (
                r#"{"id": 1, "messages": [1]}"#,
                "messages[0]: not a JSON object",
            ),
            (
                r#"{"id": 1, "messages": [{"payload": "x"}]}"#,
                "`topic` is missing",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": 1, "payload": "x"}]}"#,
                "`topic` must be a string",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t"}]}"#,
                "`payload` or `payload_base64` is missing",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload_base64": "!!"}]}"#,
                "not valid base64",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": "a", "payload_base64": "YQ=="}]}"#,
                "has both",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": {"a": 1}}]}"#,
                "`payload` must be a string",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": "x", "qos": 3}]}"#,
                "`qos` must be 0, 1 or 2, not 3",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": "x", "qos": -1}]}"#,
                "`qos` must be 0, 1 or 2",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": "x", "retain": 1}]}"#,
                "`retain`",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": "x", "user_properties": [["k"]]}]}"#,
                "`user_properties`",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": "x", "content_type": 5}]}"#,
                "`content_type`",
            ),
        ];
        for (line, expected) in cases {
            let why = bad_output(line);
            assert!(why.contains(expected), "{line}: {why}");
        }
    }

    #[test]
    fn requests_carry_text_or_base64() {
        let mut msg = Message::new("t/1", "héllo");
        msg.content_type = Some("text/plain".into());
        msg.user_properties = vec![("a".into(), "b".into())];
        let line = encode_request(3, &msg).expect("encodes");
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(v["id"], 3);
        assert_eq!(v["payload"], "héllo");
        assert!(v.get("payload_base64").is_none());
        assert_eq!(v["user_properties"], serde_json::json!([["a", "b"]]));
        assert_eq!(v["content_type"], "text/plain");

        let line = encode_request(4, &Message::new("t", vec![0xffu8, b'\n'])).expect("encodes");
        let v: Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(v["payload_base64"], "/wo=");
        assert!(v.get("payload").is_none());
        assert!(v.get("content_type").is_none());
    }

    #[tokio::test]
    async fn lines_are_bounded_and_split_reads_are_joined() {
        let input: &[u8] = b"short\n0123456789abc\nnext\r\nlast";
        let mut r = LineReader::new(input, 10);
        assert_eq!(r.next().await.expect("read"), Line::Full(b"short".to_vec()));
        assert_eq!(
            r.next().await.expect("read"),
            Line::Cut(b"0123456789".to_vec())
        );
        assert_eq!(
            r.next().await.expect("read"),
            Line::Full(b"next\r".to_vec())
        );
        assert_eq!(r.next().await.expect("read"), Line::Full(b"last".to_vec()));
        assert_eq!(r.next().await.expect("read"), Line::Eof);

        // A long line arriving in small pieces is cut and its rest skipped.
        let (mut tx, rx) = tokio::io::duplex(4);
        let writer = tokio::spawn(async move {
            tx.write_all(b"abcdefghijklmnopqrstuvwxyz\nok\n0123456789\n")
                .await
                .expect("write");
        });
        let mut r = LineReader::new(rx, 10);
        assert_eq!(
            r.next().await.expect("read"),
            Line::Cut(b"abcdefghij".to_vec())
        );
        assert_eq!(r.next().await.expect("read"), Line::Full(b"ok".to_vec()));
        assert_eq!(
            r.next().await.expect("read"),
            Line::Full(b"0123456789".to_vec())
        );
        writer.await.expect("writer");
        assert_eq!(r.next().await.expect("read"), Line::Eof);
    }
}
