//! The byte encoding of the WebAssembly ABI, version 1 (docs/functions.md):
//! the input message the host writes into the module and the output the
//! module hands back.

use bytes::Bytes;

use crate::message::{CallError, Message};

/// The ABI version this host speaks.
pub const VERSION: i32 = 1;

/// Append `msg` to `out` in the input encoding.
pub fn encode_input(msg: &Message, out: &mut Vec<u8>) {
    out.clear();
    put(out, msg.topic.as_bytes());
    put(out, &msg.payload);
    put(out, msg.content_type.as_deref().unwrap_or("").as_bytes());
    out.extend_from_slice(&(msg.user_properties.len() as u32).to_le_bytes());
    for (k, v) in &msg.user_properties {
        put(out, k.as_bytes());
        put(out, v.as_bytes());
    }
    out.extend_from_slice(&msg.time_ms.to_le_bytes());
    out.push(msg.qos);
}

/// Bytes [`encode_input`] will write.
pub fn input_len(msg: &Message) -> usize {
    let props: usize = msg
        .user_properties
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum();
    4 + msg.topic.len()
        + 4
        + msg.payload.len()
        + 4
        + msg.content_type.as_ref().map_or(0, String::len)
        + 4
        + props
        + 8
        + 1
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Parse a module's output. `time_ms` stamps the messages it returns.
pub fn decode_output(raw: &[u8], time_ms: i64) -> Result<Vec<Message>, CallError> {
    let mut r = Reader { raw, pos: 0 };
    match r.u8()? {
        0 => {
            let n = r.u32()? as usize;
            // Each message takes at least 18 bytes: never trust a count
            // the bytes cannot hold.
            if n > r.left() / 18 {
                return Err(bad(format!("{n} messages announced in {} bytes", r.left())));
            }
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let topic = r.string("topic")?;
                let payload = Bytes::copy_from_slice(r.bytes()?);
                let ct = r.string("content type")?;
                let np = r.u32()? as usize;
                if np > r.left() / 8 {
                    return Err(bad(format!("{np} user properties announced")));
                }
                let mut props = Vec::with_capacity(np);
                for _ in 0..np {
                    props.push((r.string("property key")?, r.string("property value")?));
                }
                let qos = r.u8()?;
                if qos > 2 {
                    return Err(bad(format!("qos {qos}")));
                }
                let retain = match r.u8()? {
                    0 => false,
                    1 => true,
                    v => return Err(bad(format!("retain {v}"))),
                };
                out.push(Message {
                    topic,
                    payload,
                    content_type: (!ct.is_empty()).then_some(ct),
                    user_properties: props,
                    time_ms,
                    qos,
                    retain,
                });
            }
            if r.left() != 0 {
                return Err(bad(format!("{} bytes after the last message", r.left())));
            }
            Ok(out)
        }
        1 => {
            let msg = String::from_utf8_lossy(r.bytes()?).into_owned();
            Err(CallError::Returned(msg))
        }
        s => Err(bad(format!("status byte {s} (0 = ok, 1 = error)"))),
    }
}

fn bad(why: String) -> CallError {
    CallError::BadOutput(why)
}

struct Reader<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.raw.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CallError> {
        if n > self.left() {
            return Err(bad(format!(
                "truncated: needs {n} bytes at offset {}, {} left",
                self.pos,
                self.left()
            )));
        }
        let s = &self.raw[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, CallError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, CallError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self) -> Result<&'a [u8], CallError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self, what: &str) -> Result<String, CallError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| bad(format!("{what} is not UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(msgs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut o = vec![0];
        o.extend_from_slice(&(msgs.len() as u32).to_le_bytes());
        for (t, p) in msgs {
            put(&mut o, t.as_bytes());
            put(&mut o, p);
            put(&mut o, b"");
            o.extend_from_slice(&0u32.to_le_bytes());
            o.push(1);
            o.push(0);
        }
        o
    }

    #[test]
    fn input_length_matches_encoding() {
        let mut m = Message::new("devices/d1/telemetry", &b"{\"t\":1}"[..]);
        m.content_type = Some("application/json".into());
        m.user_properties = vec![("rule".into(), "r1".into())];
        let mut buf = Vec::new();
        encode_input(&m, &mut buf);
        assert_eq!(buf.len(), input_len(&m));
        assert_eq!(&buf[4..24], b"devices/d1/telemetry");
        assert_eq!(*buf.last().unwrap_or(&9), 1);
    }

    #[test]
    fn decodes_messages_and_errors() {
        let out = decode_output(&output(&[("a/b", b"x"), ("c", b"")]), 5).unwrap_or_default();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].topic, "a/b");
        assert_eq!(&out[0].payload[..], b"x");
        assert_eq!(out[1].time_ms, 5);
        let mut e = vec![1];
        put(&mut e, b"no temperature");
        assert_eq!(
            decode_output(&e, 0),
            Err(CallError::Returned("no temperature".into()))
        );
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error() {
        let good = output(&[("a/b", b"payload"), ("c/d", b"q")]);
        for n in 0..good.len() {
            assert!(decode_output(&good[..n], 0).is_err(), "prefix {n}");
        }
        for i in 0..good.len() {
            for v in [0u8, 2, 0x7f, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                let _ = decode_output(&bad, 0);
            }
        }
        let mut huge = vec![0];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_output(&huge, 0),
            Err(CallError::BadOutput(_))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_output(&trailing, 0).is_err());
    }
}
