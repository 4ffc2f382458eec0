//! The byte encoding of the Verge WebAssembly ABI, version 1
//! (`docs/functions.md`), seen from the module: [`decode_input`] reads what
//! the node wrote at `verge_alloc`, [`encode_output`] writes what
//! `verge_handle` points the node at.
//!
//! The other two directions ([`encode_input`], [`decode_output`]) are what
//! the node does; they are here so that [`mock::invoke`](crate::mock) can
//! run a handler through the same bytes as the node would, and so the codec
//! is tested as round trips. The decoders never panic, whatever the bytes.

use core::fmt;

use crate::error::{Error, Result};
use crate::message::Message;

/// The ABI version this SDK speaks (the value of `verge_abi_version`).
pub const VERSION: i32 = 1;

/// Output status byte: messages follow.
const STATUS_OK: u8 = 0;
/// Output status byte: an error message follows.
const STATUS_ERROR: u8 = 1;

/// Fewest bytes one output message takes: three empty `str`/`bytes`, the
/// property count, `qos` and `retain`.
const MIN_OUTPUT_MESSAGE: usize = 4 + 4 + 4 + 4 + 1 + 1;
/// Fewest bytes one user property takes: two empty `str`.
const MIN_PROPERTY: usize = 4 + 4;

/// Why a buffer is not a valid input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ends inside `field`.
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Offset at which it starts.
        offset: usize,
    },
    /// `field` is text but not UTF-8.
    NotUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// A count announces more entries than the remaining bytes can hold.
    TooMany {
        /// What is counted.
        field: &'static str,
        /// The count announced.
        count: u32,
        /// Bytes left after the count.
        left: usize,
    },
    /// A byte field holds a value outside its range (qos, retain, status).
    Invalid {
        /// The field being read.
        field: &'static str,
        /// The value found.
        value: u8,
    },
    /// Bytes remain after the last field.
    Trailing {
        /// How many.
        bytes: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { field, offset } => {
                write!(f, "truncated: {field} at offset {offset}")
            }
            Self::NotUtf8 { field } => write!(f, "{field} is not UTF-8"),
            Self::TooMany { field, count, left } => {
                write!(f, "{count} {field} announced in {left} bytes")
            }
            Self::Invalid { field, value } => write!(f, "{field} {value} is out of range"),
            Self::Trailing { bytes } => write!(f, "{bytes} bytes after the last field"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Read an input message. `retain` is `false`: the input carries none.
pub fn decode_input(raw: &[u8]) -> core::result::Result<Message, DecodeError> {
    let mut msg = Message::default();
    decode_input_into(raw, &mut msg)?;
    Ok(msg)
}

/// [`decode_input`] into an existing message, reusing the capacity of its
/// strings and vectors (the runtime keeps one message around for this, as
/// an allocation costs more than decoding a small message). On error `msg`
/// holds a partly decoded message.
pub fn decode_input_into(raw: &[u8], msg: &mut Message) -> core::result::Result<(), DecodeError> {
    let mut r = Reader { raw, pos: 0 };
    set_string(&mut msg.topic, r.str("topic")?);
    let payload = r.bytes("payload")?;
    msg.payload.clear();
    msg.payload.extend_from_slice(payload);
    let content_type = r.str("content type")?;
    if content_type.is_empty() {
        msg.content_type = None;
    } else {
        set_string(msg.content_type.get_or_insert_default(), content_type);
    }
    // `time_ms` and `qos` follow the properties.
    r.properties_into(&mut msg.user_properties, 8 + 1)?;
    msg.time_ms = r.i64("time_ms")?;
    msg.qos = r.qos()?;
    msg.retain = false;
    r.finish()
}

fn set_string(s: &mut String, value: &str) {
    s.clear();
    s.push_str(value);
}

/// Write a handler's result as the output, replacing what `out` held.
///
/// A message that cannot be encoded (QoS above 2, a field of 4 GiB or more)
/// turns the whole output into an error naming it, as the node would refuse
/// it anyway.
pub fn encode_output(result: &Result<Vec<Message>>, out: &mut Vec<u8>) {
    out.clear();
    let err = match result {
        Ok(messages) => match put_messages(messages, out) {
            Ok(()) => return,
            Err(e) => e,
        },
        Err(e) => e.clone(),
    };
    out.clear();
    out.push(STATUS_ERROR);
    let msg = err.message().as_bytes();
    let msg = &msg[..msg.len().min(u32::MAX as usize)];
    put_len(out, msg.len());
    out.extend_from_slice(msg);
}

fn put_messages(messages: &[Message], out: &mut Vec<u8>) -> Result<()> {
    out.push(STATUS_OK);
    put_count(out, messages.len(), "messages")?;
    for (i, m) in messages.iter().enumerate() {
        let at = |e: Error| e.context(format_args!("returned message {i}"));
        if m.qos > 2 {
            return Err(at(Error::msg(format_args!(
                "qos {} is not 0, 1 or 2",
                m.qos
            ))));
        }
        put(out, m.topic.as_bytes(), "topic").map_err(at)?;
        put(out, &m.payload, "payload").map_err(at)?;
        put(out, content_type(m), "content type").map_err(at)?;
        put_properties(out, &m.user_properties).map_err(at)?;
        out.push(m.qos);
        out.push(u8::from(m.retain));
    }
    Ok(())
}

/// Write `msg` in the input encoding, replacing what `out` held (what the
/// node does before `verge_handle`). `retain` is not part of the input.
pub fn encode_input(msg: &Message, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    put(out, msg.topic.as_bytes(), "topic")?;
    put(out, &msg.payload, "payload")?;
    put(out, content_type(msg), "content type")?;
    put_properties(out, &msg.user_properties)?;
    out.extend_from_slice(&msg.time_ms.to_le_bytes());
    out.push(msg.qos);
    Ok(())
}

/// Read an output (what the node does after `verge_handle`): `Ok(Ok(_))`
/// for status 0, `Ok(Err(message))` for status 1. The output carries no
/// time, so every message gets `time_ms`.
pub fn decode_output(
    raw: &[u8],
    time_ms: i64,
) -> core::result::Result<core::result::Result<Vec<Message>, String>, DecodeError> {
    let mut r = Reader { raw, pos: 0 };
    match r.u8("status")? {
        STATUS_OK => {}
        STATUS_ERROR => {
            let msg = r.string("error message")?;
            r.finish()?;
            return Ok(Err(msg));
        }
        value => {
            return Err(DecodeError::Invalid {
                field: "status",
                value,
            });
        }
    }
    let n = r.count("messages", MIN_OUTPUT_MESSAGE)?;
    let mut messages = Vec::with_capacity(n);
    for _ in 0..n {
        let topic = r.string("topic")?;
        let payload = r.bytes("payload")?.to_vec();
        let content_type = r.string("content type")?;
        // `qos` and `retain` follow the properties.
        let mut user_properties = Vec::new();
        r.properties_into(&mut user_properties, 1 + 1)?;
        let qos = r.qos()?;
        let retain = match r.u8("retain")? {
            0 => false,
            1 => true,
            value => {
                return Err(DecodeError::Invalid {
                    field: "retain",
                    value,
                });
            }
        };
        messages.push(Message {
            topic,
            payload,
            content_type: (!content_type.is_empty()).then_some(content_type),
            user_properties,
            time_ms,
            qos,
            retain,
        });
    }
    r.finish()?;
    Ok(Ok(messages))
}

fn content_type(m: &Message) -> &[u8] {
    m.content_type.as_deref().unwrap_or("").as_bytes()
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    // Callers checked that `n` fits.
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_count(out: &mut Vec<u8>, n: usize, what: &str) -> Result<()> {
    if u32::try_from(n).is_err() {
        return Err(Error::msg(format_args!("too many {what}: {n}")));
    }
    put_len(out, n);
    Ok(())
}

fn put(out: &mut Vec<u8>, b: &[u8], what: &str) -> Result<()> {
    if u32::try_from(b.len()).is_err() {
        return Err(Error::msg(format_args!("{what} is 4 GiB or longer")));
    }
    put_len(out, b.len());
    out.extend_from_slice(b);
    Ok(())
}

fn put_properties(out: &mut Vec<u8>, props: &[(String, String)]) -> Result<()> {
    put_count(out, props.len(), "user properties")?;
    for (k, v) in props {
        put(out, k.as_bytes(), "user property key")?;
        put(out, v.as_bytes(), "user property value")?;
    }
    Ok(())
}

/// A cursor over a buffer whose every read is bounds-checked.
struct Reader<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.raw.len() - self.pos
    }

    fn take(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> core::result::Result<&'a [u8], DecodeError> {
        let offset = self.pos;
        let end = offset
            .checked_add(n)
            .filter(|&end| end <= self.raw.len())
            .ok_or(DecodeError::Truncated { field, offset })?;
        self.pos = end;
        Ok(&self.raw[offset..end])
    }

    fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> core::result::Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> core::result::Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> core::result::Result<u32, DecodeError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn i64(&mut self, field: &'static str) -> core::result::Result<i64, DecodeError> {
        self.array(field).map(i64::from_le_bytes)
    }

    fn bytes(&mut self, field: &'static str) -> core::result::Result<&'a [u8], DecodeError> {
        let n = self.u32(field)?;
        // A length that does not fit in usize cannot fit in the buffer.
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        self.take(n, field)
    }

    fn str(&mut self, field: &'static str) -> core::result::Result<&'a str, DecodeError> {
        let b = self.bytes(field)?;
        core::str::from_utf8(b).map_err(|_| DecodeError::NotUtf8 { field })
    }

    fn string(&mut self, field: &'static str) -> core::result::Result<String, DecodeError> {
        self.str(field).map(str::to_owned)
    }

    /// A count of entries of at least `min_size` bytes each, checked
    /// against the bytes left so a forged count cannot make us allocate.
    fn count(
        &mut self,
        field: &'static str,
        min_size: usize,
    ) -> core::result::Result<usize, DecodeError> {
        let count = self.u32(field)?;
        let left = self.left();
        match usize::try_from(count) {
            Ok(n) if n <= left / min_size => Ok(n),
            _ => Err(DecodeError::TooMany { field, count, left }),
        }
    }

    /// User properties into `props`, reusing its entries; `after` is how
    /// many bytes at least follow them.
    fn properties_into(
        &mut self,
        props: &mut Vec<(String, String)>,
        after: usize,
    ) -> core::result::Result<(), DecodeError> {
        let count = self.u32("user properties")?;
        let left = self.left();
        let n = usize::try_from(count)
            .ok()
            .filter(|&n| n <= left.saturating_sub(after) / MIN_PROPERTY)
            .ok_or(DecodeError::TooMany {
                field: "user properties",
                count,
                left,
            })?;
        props.truncate(n);
        for i in 0..n {
            let key = self.str("user property key")?;
            let value = self.str("user property value")?;
            match props.get_mut(i) {
                Some((k, v)) => {
                    set_string(k, key);
                    set_string(v, value);
                }
                None => props.push((key.to_owned(), value.to_owned())),
            }
        }
        Ok(())
    }

    fn qos(&mut self) -> core::result::Result<u8, DecodeError> {
        match self.u8("qos")? {
            q @ 0..=2 => Ok(q),
            value => Err(DecodeError::Invalid {
                field: "qos",
                value,
            }),
        }
    }

    fn finish(&self) -> core::result::Result<(), DecodeError> {
        match self.left() {
            0 => Ok(()),
            bytes => Err(DecodeError::Trailing { bytes }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message::json("devices/d1/telemetry", "{\"temperature\":21.5}")
            .with_user_property("rule", "r1")
            .with_user_property("ü", "")
            .with_time_ms(1_764_390_000_000)
            .with_qos(2)
    }

    fn input(m: &Message) -> Vec<u8> {
        let mut buf = Vec::new();
        assert!(encode_input(m, &mut buf).is_ok());
        buf
    }

    #[test]
    fn input_layout_is_the_documented_one() {
        let m = Message::new("a/b", "xy")
            .with_content_type("t")
            .with_user_property("k", "v")
            .with_time_ms(-2)
            .with_qos(1);
        let mut want = Vec::new();
        want.extend_from_slice(&[3, 0, 0, 0]);
        want.extend_from_slice(b"a/b");
        want.extend_from_slice(&[2, 0, 0, 0]);
        want.extend_from_slice(b"xy");
        want.extend_from_slice(&[1, 0, 0, 0, b't']);
        want.extend_from_slice(&[1, 0, 0, 0]);
        want.extend_from_slice(&[1, 0, 0, 0, b'k', 1, 0, 0, 0, b'v']);
        want.extend_from_slice(&(-2i64).to_le_bytes());
        want.push(1);
        assert_eq!(input(&m), want);
        assert_eq!(decode_input(&want), Ok(m));
    }

    #[test]
    fn output_layout_is_the_documented_one() {
        let mut out = Vec::new();
        let msgs = vec![Message::new("a", "p").with_qos(0).with_retain(true)];
        encode_output(&Ok(msgs), &mut out);
        let mut want = vec![0, 1, 0, 0, 0];
        want.extend_from_slice(&[1, 0, 0, 0, b'a', 1, 0, 0, 0, b'p']);
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(out, want);

        encode_output(&Err("no temperature".into()), &mut out);
        let mut want = vec![1, 14, 0, 0, 0];
        want.extend_from_slice(b"no temperature");
        assert_eq!(out, want);

        encode_output(&Ok(Vec::new()), &mut out);
        assert_eq!(out, [0, 0, 0, 0, 0]);
    }

    #[test]
    fn input_round_trip() {
        let m = sample();
        assert_eq!(decode_input(&input(&m)), Ok(m));
        let empty = Message::new("", "").with_qos(0);
        assert_eq!(decode_input(&input(&empty)), Ok(empty));
    }

    #[test]
    fn decoding_into_a_used_message_overwrites_every_field() {
        let mut msg = sample().with_retain(true).with_user_property("extra", "x");
        let small = Message::new("t", "p").with_qos(0);
        assert_eq!(decode_input_into(&input(&small), &mut msg), Ok(()));
        assert_eq!(msg, small);
        let big = sample();
        assert_eq!(decode_input_into(&input(&big), &mut msg), Ok(()));
        assert_eq!(msg, big);
    }

    #[test]
    fn retain_is_not_an_input_field() {
        let m = sample().with_retain(true);
        assert_eq!(decode_input(&input(&m)).map(|m| m.retain), Ok(false));
    }

    #[test]
    fn output_round_trip() {
        let msgs = vec![
            sample().with_time_ms(5),
            Message::new("x", vec![0u8, 0xff])
                .with_retain(true)
                .with_time_ms(5),
        ];
        let mut out = Vec::new();
        encode_output(&Ok(msgs.clone()), &mut out);
        assert_eq!(decode_output(&out, 5), Ok(Ok(msgs)));
        encode_output(&Err("boom".into()), &mut out);
        assert_eq!(decode_output(&out, 5), Ok(Err("boom".to_owned())));
    }

    #[test]
    fn unencodable_message_becomes_an_error_output() {
        let mut out = Vec::new();
        encode_output(&Ok(vec![sample(), sample().with_qos(3)]), &mut out);
        assert_eq!(
            decode_output(&out, 0),
            Ok(Err("returned message 1: qos 3 is not 0, 1 or 2".to_owned()))
        );
    }

    #[test]
    fn every_truncated_input_is_an_error() {
        let raw = input(&sample());
        for n in 0..raw.len() {
            // Truncated, or a count the remaining bytes cannot hold.
            assert!(decode_input(&raw[..n]).is_err(), "prefix {n}");
        }
        let mut long = raw.clone();
        long.push(0);
        assert_eq!(decode_input(&long), Err(DecodeError::Trailing { bytes: 1 }));
    }

    #[test]
    fn every_truncated_output_is_an_error() {
        let mut out = Vec::new();
        encode_output(&Ok(vec![sample(), Message::new("b", "")]), &mut out);
        for n in 0..out.len() {
            assert!(decode_output(&out[..n], 0).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let raw = input(&sample());
        let mut out = Vec::new();
        encode_output(&Ok(vec![sample()]), &mut out);
        for buf in [&raw, &out] {
            for i in 0..buf.len() {
                for v in [0u8, 1, 2, 3, 0x7f, 0x80, 0xfe, 0xff] {
                    let mut bad = buf.clone();
                    bad[i] = v;
                    let _ = decode_input(&bad);
                    let _ = decode_output(&bad, 0);
                }
            }
        }
    }

    #[test]
    fn forged_counts_and_lengths_are_refused_before_allocating() {
        // topic length u32::MAX
        assert!(matches!(
            decode_input(&[0xff, 0xff, 0xff, 0xff, b'a']),
            Err(DecodeError::Truncated { field: "topic", .. })
        ));
        // empty topic, payload, content type, then u32::MAX properties
        let mut raw = vec![0; 12];
        raw.extend_from_slice(&u32::MAX.to_le_bytes());
        raw.extend_from_slice(&[0; 9]);
        assert!(matches!(
            decode_input(&raw),
            Err(DecodeError::TooMany {
                count: u32::MAX,
                ..
            })
        ));
        let mut out = vec![0];
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_output(&out, 0),
            Err(DecodeError::TooMany {
                field: "messages",
                ..
            })
        ));
    }

    #[test]
    fn out_of_range_bytes_are_refused() {
        let mut raw = input(&sample());
        let last = raw.len() - 1;
        raw[last] = 3;
        assert_eq!(
            decode_input(&raw),
            Err(DecodeError::Invalid {
                field: "qos",
                value: 3
            })
        );
        let mut raw = input(&sample());
        raw[4] = 0xff; // first topic byte: 'd' -> invalid UTF-8
        assert_eq!(
            decode_input(&raw),
            Err(DecodeError::NotUtf8 { field: "topic" })
        );
        assert!(matches!(
            decode_output(&[2], 0),
            Err(DecodeError::Invalid {
                field: "status",
                ..
            })
        ));
    }

    #[test]
    fn errors_display_in_lower_case() {
        let e = DecodeError::TooMany {
            field: "messages",
            count: 9,
            left: 3,
        };
        assert_eq!(e.to_string(), "9 messages announced in 3 bytes");
    }
}
