//! Wire primitives shared by the decoder, the encoder and the property
//! codec: a bounds-checked reader, variable byte integers, length-prefixed
//! strings and binary data, and the 3.1.1 connect return codes. Pure: no
//! I/O, never panics.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::packet::reason;

/// A bounds-checked cursor over one packet's bytes.
pub(crate) struct Reader {
    buf: Bytes,
}

const SHORT: DecodeError = DecodeError::MalformedPacket("packet shorter than its contents");
/// A variable byte integer "MUST use the minimum number of bytes necessary"
/// (\[MQTT-1.5.5-1\]): a last byte of 0 after a continuation byte breaks that.
const NOT_SHORTEST: DecodeError =
    DecodeError::MalformedPacket("variable byte integer not in its shortest form");

impl Reader {
    /// A cursor over `buf`.
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(SHORT);
        }
        Ok(self.buf.get_u8())
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(SHORT);
        }
        Ok(self.buf.get_u16())
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(SHORT);
        }
        Ok(self.buf.get_u32())
    }
    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let b = self.u8()?;
            value |= ((b & 0x7F) as u32) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(NOT_SHORTEST);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedPacket(
            "variable byte integer longer than 4 bytes",
        ))
    }
    pub fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(SHORT);
        }
        Ok(self.buf.split_to(n))
    }
    pub fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        Ok(Reader { buf: self.take(n)? })
    }
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.binary()?;
        let s = std::str::from_utf8(&b).map_err(|_| DecodeError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(s.to_owned())
    }
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }
}

/// Read the fixed header: `(first byte, remaining length, header length)`,
/// `None` if more bytes are needed.
pub(crate) fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut len: usize = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(NOT_SHORTEST);
            }
            return Ok(Some((buf[0], len, 2 + i)));
        }
    }
    Err(DecodeError::MalformedPacket(
        "remaining length longer than 4 bytes",
    ))
}

/// Largest value of a variable byte integer.
pub(crate) const MAX_VARINT: u32 = 268_435_455;

/// Bytes a variable byte integer of value `v` takes.
pub(crate) fn varint_len(v: u32) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Append `v` as a variable byte integer (`v` at most [`MAX_VARINT`]).
pub(crate) fn write_varint(buf: &mut BytesMut, mut v: u32) {
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if v == 0 {
            return;
        }
    }
}

/// Bytes a length-prefixed UTF-8 string takes.
pub(crate) fn str_len(s: &str) -> usize {
    2 + s.len()
}

/// Bytes length-prefixed binary data takes.
pub(crate) fn bin_len(b: &[u8]) -> usize {
    2 + b.len()
}

/// Append a length-prefixed UTF-8 string (length checked by the caller).
pub(crate) fn write_str(buf: &mut BytesMut, s: &str) {
    write_bin(buf, s.as_bytes());
}

/// Append length-prefixed binary data (length checked by the caller).
pub(crate) fn write_bin(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u16(b.len() as u16);
    buf.put_slice(b);
}

/// The 3.1.1 connect return codes and the 5.0 reason codes they stand for.
pub(crate) const V3_CONNACK: [(u8, u8); 6] = [
    (0, reason::SUCCESS),
    (1, reason::UNSUPPORTED_PROTOCOL_VERSION),
    (2, reason::CLIENT_IDENTIFIER_NOT_VALID),
    (3, reason::SERVER_UNAVAILABLE),
    (4, reason::BAD_USERNAME_OR_PASSWORD),
    (5, reason::NOT_AUTHORIZED),
];

/// The 3.1.1 connect return code for a 5.0 reason code.
pub(crate) fn v3_connack_code(code: u8) -> u8 {
    match code {
        reason::SUCCESS => 0,
        reason::UNSUPPORTED_PROTOCOL_VERSION => 1,
        reason::CLIENT_IDENTIFIER_NOT_VALID => 2,
        reason::BAD_USERNAME_OR_PASSWORD => 4,
        reason::NOT_AUTHORIZED | reason::BANNED => 5,
        _ => 3,
    }
}
