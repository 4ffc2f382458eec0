//! The record frame on disk: encode, decode and checksum (pure, no I/O).
//!
//! ```text
//! [len u32][crc32 u32][seq u64][time_ms i64][topic_len u16][topic][payload]
//! ```
//! All integers little-endian. `len` counts the bytes after the crc (the
//! *body*: seq through payload); `crc` is CRC-32 (IEEE) of the body.

use bytes::Bytes;

/// Bytes before the body: len and crc.
pub const PREFIX: usize = 8;
/// Smallest body: seq, time and topic length.
pub const MIN_BODY: usize = 8 + 8 + 2;
/// Largest record (frame included) the queue accepts.
pub const MAX_RECORD: usize = 16 * 1024 * 1024;

/// One queued message.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// MQTT topic it is forwarded to.
    pub topic: String,
    /// Message body.
    pub payload: Bytes,
    /// When it was queued, milliseconds since the Unix epoch.
    pub time_ms: i64,
}

impl Record {
    /// Size of this record's frame on disk.
    pub fn frame_len(&self) -> usize {
        PREFIX + MIN_BODY + self.topic.len() + self.payload.len()
    }
}

/// Append the frame of `rec` with sequence number `seq` to `out`. The caller
/// has checked that the topic fits in a `u16`.
pub fn encode(seq: u64, rec: &Record, out: &mut Vec<u8>) {
    let body = MIN_BODY + rec.topic.len() + rec.payload.len();
    let start = out.len();
    out.reserve(PREFIX + body);
    out.extend_from_slice(&(body as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&rec.time_ms.to_le_bytes());
    out.extend_from_slice(&(rec.topic.len() as u16).to_le_bytes());
    out.extend_from_slice(rec.topic.as_bytes());
    out.extend_from_slice(&rec.payload);
    let crc = crc32fast::hash(&out[start + PREFIX..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Fewer bytes than the frame needs (a torn write when at the end).
    Short,
    /// Impossible length, checksum mismatch or malformed topic.
    Corrupt,
}

/// Length of the frame starting at `buf[0]` if its prefix is readable:
/// `Ok(None)` when fewer than [`PREFIX`] bytes are there.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, Bad> {
    if buf.len() < PREFIX {
        return Ok(None);
    }
    let body = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(MIN_BODY..=MAX_RECORD).contains(&body) {
        return Err(Bad::Corrupt);
    }
    Ok(Some(PREFIX + body))
}

/// A decoded frame.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    /// Sequence number.
    pub seq: u64,
    /// The record.
    pub record: Record,
    /// Frame length in bytes.
    pub len: usize,
}

/// Decode the frame at the start of `buf`, checking its checksum.
pub fn decode(buf: &[u8]) -> Result<Decoded, Bad> {
    let Some(len) = frame_len(buf)? else {
        return Err(Bad::Short);
    };
    if buf.len() < len {
        return Err(Bad::Short);
    }
    let body = &buf[PREFIX..len];
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if crc32fast::hash(body) != crc {
        return Err(Bad::Corrupt);
    }
    let u64_at = |i: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&body[i..i + 8]);
        b
    };
    let seq = u64::from_le_bytes(u64_at(0));
    let time_ms = i64::from_le_bytes(u64_at(8));
    let topic_len = u16::from_le_bytes([body[16], body[17]]) as usize;
    let rest = &body[MIN_BODY..];
    if topic_len > rest.len() {
        return Err(Bad::Corrupt);
    }
    let topic = std::str::from_utf8(&rest[..topic_len]).map_err(|_| Bad::Corrupt)?;
    Ok(Decoded {
        seq,
        record: Record {
            topic: topic.to_owned(),
            payload: Bytes::copy_from_slice(&rest[topic_len..]),
            time_ms,
        },
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        Record {
            topic: "devices/d1/telemetry".into(),
            payload: Bytes::from_static(b"{\"t\":21.5}"),
            time_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        encode(42, &rec(), &mut buf);
        encode(43, &rec(), &mut buf);
        assert_eq!(buf.len(), 2 * rec().frame_len());
        let d = decode(&buf).expect("decodes");
        assert_eq!((d.seq, d.len), (42, rec().frame_len()));
        assert_eq!(d.record, rec());
        let d2 = decode(&buf[d.len..]).expect("second");
        assert_eq!(d2.seq, 43);
    }

    #[test]
    fn empty_topic_and_payload() {
        let r = Record {
            topic: String::new(),
            payload: Bytes::new(),
            time_ms: -5,
        };
        let mut buf = Vec::new();
        encode(1, &r, &mut buf);
        assert_eq!(buf.len(), PREFIX + MIN_BODY);
        assert_eq!(decode(&buf).expect("decodes").record, r);
    }

    #[test]
    fn crc_mismatch_is_corrupt() {
        let mut buf = Vec::new();
        encode(7, &rec(), &mut buf);
        for i in PREFIX..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert_eq!(decode(&b), Err(Bad::Corrupt), "byte {i}");
        }
        let mut b = buf.clone();
        b[5] ^= 1;
        assert_eq!(decode(&b), Err(Bad::Corrupt));
    }

    #[test]
    fn truncated_is_short_and_bad_length_corrupt() {
        let mut buf = Vec::new();
        encode(7, &rec(), &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]), Err(Bad::Short), "cut {cut}");
        }
        let mut b = buf.clone();
        b[..4].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(decode(&b), Err(Bad::Corrupt));
        b[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&b), Err(Bad::Corrupt));
    }
}
