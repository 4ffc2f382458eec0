//! The on-disk record format and its checksum. A record is
//! `crc32(body) u32 LE | body length u16 LE | body`; a chunk body is
//! `series u32 | time i64 | tag u8 | value`, a dictionary body is
//! `series u32 | device length u16 | device | metric`. All integers are
//! little endian.

use crate::value::Value;

/// Header bytes before each body.
pub const HEADER: usize = 6;
/// Largest body.
pub const MAX_BODY: usize = u16::MAX as usize;
/// Bytes of a chunk body before the value.
const POINT_FIXED: usize = 4 + 8 + 1;

const TAG_NUMBER: u8 = 0;
const TAG_BOOL: u8 = 1;
const TAG_TEXT: u8 = 2;
const TAG_JSON: u8 = 3;

/// CRC-32 (IEEE, as zlib), by `crc32fast`.
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// Append `buf` to the file at `path` (created if missing) and clear it;
/// `flushed` is the file's length before and after. On failure the buffer
/// is kept and a partial write is cut off, so the next call can retry.
pub fn append(
    path: &std::path::Path,
    buf: &mut Vec<u8>,
    flushed: &mut u64,
) -> Result<(), crate::TsdbError> {
    use std::io::Write;
    if buf.is_empty() {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| crate::TsdbError::io("open", path, e))?;
    if let Err(e) = f.write_all(buf) {
        let _ = f.set_len(*flushed);
        return Err(crate::TsdbError::io("write", path, e));
    }
    *flushed += buf.len() as u64;
    buf.clear();
    Ok(())
}

fn frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&crc32(body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(body);
}

/// The encoded size of a point record, or `None` when it is too big.
pub fn point_size(value: &Value) -> Option<usize> {
    let v = match value {
        Value::Number(_) => 8,
        Value::Bool(_) => 1,
        Value::Text(s) | Value::Json(s) => s.len(),
    };
    (POINT_FIXED + v <= MAX_BODY).then_some(HEADER + POINT_FIXED + v)
}

/// Append a point record; the caller checked [`point_size`].
pub fn encode_point(out: &mut Vec<u8>, series: u32, time_ms: i64, value: &Value) {
    let mut body = Vec::with_capacity(POINT_FIXED + 8);
    body.extend_from_slice(&series.to_le_bytes());
    body.extend_from_slice(&time_ms.to_le_bytes());
    match value {
        Value::Number(n) => {
            body.push(TAG_NUMBER);
            body.extend_from_slice(&n.to_le_bytes());
        }
        Value::Bool(b) => {
            body.push(TAG_BOOL);
            body.push(u8::from(*b));
        }
        Value::Text(s) => {
            body.push(TAG_TEXT);
            body.extend_from_slice(s.as_bytes());
        }
        Value::Json(s) => {
            body.push(TAG_JSON);
            body.extend_from_slice(s.as_bytes());
        }
    }
    frame(out, &body);
}

/// Append a dictionary record; the caller checked the name lengths.
pub fn encode_series(out: &mut Vec<u8>, series: u32, device: &str, metric: &str) {
    let mut body = Vec::with_capacity(6 + device.len() + metric.len());
    body.extend_from_slice(&series.to_le_bytes());
    body.extend_from_slice(&(device.len() as u16).to_le_bytes());
    body.extend_from_slice(device.as_bytes());
    body.extend_from_slice(metric.as_bytes());
    frame(out, &body);
}

/// The next framed body in `bytes`: `Some((body, record length))`, or
/// `None` when the bytes end early or the checksum does not match (a torn
/// or corrupt tail).
pub fn next(bytes: &[u8]) -> Option<(&[u8], usize)> {
    let header = bytes.get(..HEADER)?;
    let crc = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let len = usize::from(u16::from_le_bytes([header[4], header[5]]));
    let body = bytes.get(HEADER..HEADER + len)?;
    (crc32(body) == crc).then_some((body, HEADER + len))
}

/// Decode a point body: `(series, time, value)`.
pub fn decode_point(body: &[u8]) -> Option<(u32, i64, Value)> {
    let series = u32::from_le_bytes(body.get(0..4)?.try_into().ok()?);
    let time = i64::from_le_bytes(body.get(4..12)?.try_into().ok()?);
    let tag = *body.get(12)?;
    let rest = &body[POINT_FIXED..];
    let text = || String::from_utf8(rest.to_vec()).ok();
    let value = match tag {
        TAG_NUMBER => Value::Number(f64::from_le_bytes(rest.try_into().ok()?)),
        TAG_BOOL => Value::Bool(*rest.first()? != 0),
        TAG_TEXT => Value::Text(text()?),
        TAG_JSON => Value::Json(text()?),
        _ => return None,
    };
    Some((series, time, value))
}

/// Decode a dictionary body: `(series, device, metric)`.
pub fn decode_series(body: &[u8]) -> Option<(u32, String, String)> {
    let series = u32::from_le_bytes(body.get(0..4)?.try_into().ok()?);
    let dlen = usize::from(u16::from_le_bytes(body.get(4..6)?.try_into().ok()?));
    let device = String::from_utf8(body.get(6..6 + dlen)?.to_vec()).ok()?;
    let metric = String::from_utf8(body.get(6 + dlen..)?.to_vec()).ok()?;
    Some((series, device, metric))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn points_round_trip() {
        let values = [
            Value::Number(-1.5),
            Value::Bool(true),
            Value::Text("hé".into()),
            Value::Json("{\"a\":1}".into()),
        ];
        let mut buf = Vec::new();
        for (i, v) in values.iter().enumerate() {
            encode_point(&mut buf, i as u32, 1000 + i as i64, v);
        }
        let mut at = 0;
        for (i, v) in values.iter().enumerate() {
            let (body, len) = next(&buf[at..]).expect("record");
            assert_eq!(
                decode_point(body),
                Some((i as u32, 1000 + i as i64, v.clone()))
            );
            assert_eq!(point_size(v), Some(len));
            at += len;
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn torn_and_corrupt_records_are_rejected() {
        let mut buf = Vec::new();
        encode_point(&mut buf, 1, 2, &Value::Number(3.0));
        assert!(next(&buf[..buf.len() - 1]).is_none());
        let last = buf.len() - 1;
        buf[last] ^= 0x40;
        assert!(next(&buf).is_none());
    }

    #[test]
    fn series_round_trip() {
        let mut buf = Vec::new();
        encode_series(&mut buf, 7, "dev-1", "temp");
        let (body, _) = next(&buf).expect("record");
        assert_eq!(
            decode_series(body),
            Some((7, "dev-1".into(), "temp".into()))
        );
    }
}
