//! The DL/T 645-2007 frame codec: pure, no I/O, never panics on any input.
//!
//! A frame on the wire:
//!
//! ```text
//! [FE FE FE FE]  68  A0 A1 A2 A3 A4 A5  68  C  L  DATA(L bytes, each +33h)  CS  16
//!  preamble          address (BCD,          control, length                  sum of every
//!  (optional)        lowest byte first)                                       byte from the
//!                                                                             first 68 to DATA
//! ```
//!
//! [`decode`] skips any bytes before the first plausible frame start (the
//! preamble, or garbage), returns [`DecodeError::Incomplete`] until a whole
//! frame is in the buffer, and only then copies the data out: the length
//! byte is a `u8`, so nothing larger than 255 bytes is ever allocated.

use std::fmt;

/// The start and end delimiters and the preamble byte.
pub const START: u8 = 0x68;
/// See [`START`].
pub const END: u8 = 0x16;
/// Sent (any number of times) before a frame to wake up the receiver.
pub const PREAMBLE: u8 = 0xFE;
/// Added to every data byte on the wire (and taken off on reception).
pub const DATA_OFFSET: u8 = 0x33;
/// Bytes of a frame around its data: 68, address, 68, C, L, CS, 16.
pub const OVERHEAD: usize = 12;
/// Longest data field: the length is one byte.
pub const MAX_DATA: usize = 255;

/// Control codes (the function code with its direction and flags).
pub mod control {
    /// Master → meter: read data.
    pub const READ: u8 = 0x11;
    /// Master → meter: read the next frame of a follow-up answer.
    pub const READ_FOLLOW: u8 = 0x12;
    /// Bit 7: the frame comes from the meter.
    pub const FROM_METER: u8 = 0x80;
    /// Bit 6: the meter answers with an error.
    pub const ERROR: u8 = 0x40;
    /// Bit 5: more frames follow.
    pub const MORE: u8 = 0x20;
    /// Bits 0–4: the function code.
    pub const FUNCTION: u8 = 0x1F;
    /// Meter → master: read data answered, nothing follows.
    pub const READ_OK: u8 = 0x91;
    /// Meter → master: read data answered, more frames follow.
    pub const READ_OK_MORE: u8 = 0xB1;
    /// Meter → master: read data refused (one error byte).
    pub const READ_ERROR: u8 = 0xD1;
}

/// A meter address: six bytes in wire order (lowest two digits first).
/// `AAh` in a byte is a wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address(pub [u8; 6]);

impl Address {
    /// The wildcard address `AAAAAAAAAAAA`: any meter on the line answers.
    pub const WILDCARD: Address = Address([0xAA; 6]);

    /// Parse an address as printed on a meter: 12 decimal digits, most
    /// significant first (`"000000000001"`), with `AA` allowed for any
    /// byte as a wildcard.
    pub fn parse(s: &str) -> Result<Address, String> {
        let b = s.as_bytes();
        if b.len() != 12 {
            return Err(format!("{s:?} is not 12 digits"));
        }
        let mut out = [0u8; 6];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let byte = match pair {
                [b'A' | b'a', b'A' | b'a'] => 0xAA,
                [h @ b'0'..=b'9', l @ b'0'..=b'9'] => ((h - b'0') << 4) | (l - b'0'),
                _ => {
                    return Err(format!(
                        "{s:?} is not 12 decimal digits (or `AA` wildcards)"
                    ));
                }
            };
            // printed most significant first; the wire is lowest first
            out[5 - i] = byte;
        }
        Ok(Address(out))
    }

    /// Whether an answer from `other` may come from this (possibly
    /// wildcard) address.
    pub fn matches(&self, other: &Address) -> bool {
        self.0
            .iter()
            .zip(other.0)
            .all(|(&a, b)| a == 0xAA || a == b)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter().rev() {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// One frame, its data without the +33h offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The meter's address.
    pub address: Address,
    /// The control code (see [`control`]).
    pub control: u8,
    /// The data field, plain (the +33h is the codec's business).
    pub data: Vec<u8>,
}

/// Why bytes are not (yet) a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No whole frame yet: read more bytes and try again.
    #[error("incomplete frame")]
    Incomplete,
    /// The checksum does not match the frame.
    #[error("bad checksum: computed {computed:#04x}, frame says {found:#04x}")]
    Checksum {
        /// Sum of the frame's bytes.
        computed: u8,
        /// The frame's CS byte.
        found: u8,
    },
    /// The byte after the checksum is not 16h.
    #[error("bad end byte {0:#04x} (expected 0x16)")]
    End(u8),
}

/// Why a frame cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("data of {0} bytes is longer than the 255 a frame holds")]
pub struct TooLong(pub usize);

/// Encode `frame` after `preamble` bytes of FEh.
pub fn encode(frame: &Frame, preamble: usize) -> Result<Vec<u8>, TooLong> {
    let len = u8::try_from(frame.data.len()).map_err(|_| TooLong(frame.data.len()))?;
    let mut out = Vec::with_capacity(preamble + OVERHEAD + frame.data.len());
    out.resize(preamble, PREAMBLE);
    let start = out.len();
    out.push(START);
    out.extend_from_slice(&frame.address.0);
    out.push(START);
    out.push(frame.control);
    out.push(len);
    out.extend(frame.data.iter().map(|b| b.wrapping_add(DATA_OFFSET)));
    out.push(checksum(&out[start..]));
    out.push(END);
    Ok(out)
}

/// Sum of `bytes` modulo 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
}

/// Decode the first frame in `buf`: the frame and how many bytes of `buf`
/// it used up (what came before it included). Bytes before a plausible
/// start (`68`, six address bytes, `68`) are skipped, so preamble and
/// garbage are passed over. A checksum or end-byte error reports the first
/// candidate that had a whole frame's bytes.
pub fn decode(buf: &[u8]) -> Result<(Frame, usize), DecodeError> {
    let mut from = 0;
    loop {
        let Some(at) = buf
            .get(from..)
            .and_then(|b| b.iter().position(|&x| x == START))
        else {
            return Err(DecodeError::Incomplete);
        };
        let start = from + at;
        let rest = &buf[start..];
        match rest.get(7) {
            None => return Err(DecodeError::Incomplete),
            Some(&START) => return decode_at(rest).map(|(f, used)| (f, start + used)),
            // not a frame start: look for the next 68
            Some(_) => from = start + 1,
        }
    }
}

/// Decode a frame that starts at `rest[0]` (68, address, 68 checked).
fn decode_at(rest: &[u8]) -> Result<(Frame, usize), DecodeError> {
    let (Some(&control), Some(&len)) = (rest.get(8), rest.get(9)) else {
        return Err(DecodeError::Incomplete);
    };
    let total = OVERHEAD + usize::from(len);
    let Some(frame) = rest.get(..total) else {
        return Err(DecodeError::Incomplete);
    };
    let cs_at = total - 2;
    let computed = checksum(&frame[..cs_at]);
    if computed != frame[cs_at] {
        return Err(DecodeError::Checksum {
            computed,
            found: frame[cs_at],
        });
    }
    if frame[total - 1] != END {
        return Err(DecodeError::End(frame[total - 1]));
    }
    let mut address = [0u8; 6];
    address.copy_from_slice(&frame[1..7]);
    let data = frame[10..cs_at]
        .iter()
        .map(|b| b.wrapping_sub(DATA_OFFSET))
        .collect();
    Ok((
        Frame {
            address: Address(address),
            control,
            data,
        },
        total,
    ))
}

/// The names of the bits set in a read's error byte (the data of a D1h
/// answer), e.g. `"no data requested"`; several are joined with `, `.
pub fn error_names(err: u8) -> String {
    const NAMES: [&str; 8] = [
        "other error",
        "no data requested",
        "password error or unauthorized",
        "baud rate cannot be changed",
        "year time zones exceeded",
        "day time periods exceeded",
        "tariffs exceeded",
        "reserved error bit 7",
    ];
    let names: Vec<&str> = NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| err & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "error with no reason given".into()
    } else {
        names.join(", ")
    }
}
