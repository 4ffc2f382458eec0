//! The process-function wire protocol: what a worker process writes on its
//! stdout, through the runtime's line reader and answer parser.
//! The first input byte picks the line limit and how the pipe splits the
//! bytes; the rest is the stdout.
//! - reading and parsing never panic;
//! - no line is longer than the limit, a cut line is exactly the limit,
//!   and no line holds a `\n`;
//! - the pipe splitting the bytes differently changes nothing;
//! - without cut lines, the lines joined by `\n` are the stdout;
//! - an answer's error text is bounded; its messages have QoS 0–2 and
//!   each one, sent on as a request line, is one line that carries the
//!   same topic and payload.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use verge_functions::CallError;
use verge_functions::process::fuzzing::{
    MAX_ERROR_TEXT, Parsed, StdoutLine, parse_answer, request_line, stdout_lines,
};

fuzz_target!(|data: &[u8]| {
    let Some((&how, stdout)) = data.split_first() else {
        return;
    };
    let max = [1, 2, 7, 64, 4096][usize::from(how % 5)];
    let chunk = usize::from(how / 5) % 9 + 1;
    let lines = stdout_lines(stdout, max, chunk);
    assert_eq!(
        lines,
        stdout_lines(stdout, max, usize::MAX),
        "pieces of {chunk}"
    );
    let mut whole = Vec::new();
    let mut any_cut = false;
    for line in &lines {
        let l = match line {
            StdoutLine::Full(l) => l,
            StdoutLine::Cut(l) => {
                assert_eq!(l.len(), max);
                any_cut = true;
                l
            }
        };
        assert!(l.len() <= max && !l.contains(&b'\n'));
        whole.extend_from_slice(l);
        whole.push(b'\n');
    }
    if !any_cut {
        let stdout = stdout.strip_suffix(b"\n").unwrap_or(stdout);
        assert_eq!(whole.strip_suffix(b"\n").unwrap_or(&whole), stdout);
    }

    for line in lines.iter().filter_map(|l| match l {
        StdoutLine::Full(l) => Some(l),
        StdoutLine::Cut(_) => None,
    }) {
        let messages = match parse_answer(line, 1) {
            Parsed::Skip | Parsed::Stale => continue,
            Parsed::Done(Err(CallError::Returned(e))) => {
                assert!(e.len() <= MAX_ERROR_TEXT, "error of {} bytes", e.len());
                continue;
            }
            Parsed::Done(Err(_)) => continue,
            Parsed::Done(Ok(m)) => m,
        };
        for m in messages {
            assert!(m.qos <= 2);
            let req = request_line(2, &m).expect("an output message encodes as a request");
            assert_eq!(req.iter().position(|&b| b == b'\n'), Some(req.len() - 1));
            let v: Value = serde_json::from_slice(&req).expect("a request is JSON");
            assert_eq!(v["topic"].as_str(), Some(m.topic.as_str()));
            let payload = match (&v["payload"], &v["payload_base64"]) {
                (Value::String(s), Value::Null) => s.clone().into_bytes(),
                (Value::Null, Value::String(b)) => B64.decode(b).expect("base64"),
                other => panic!("request payload {other:?}"),
            };
            assert_eq!(payload, m.payload);
        }
    }
});
