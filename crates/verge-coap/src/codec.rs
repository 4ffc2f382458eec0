//! The CoAP message codec (RFC 7252 §3): bytes to [`CoapMessage`] and back.
//!
//! Pure: no I/O, no async runtime. The decoder is strict about the message
//! format (version 1, token length 0–8, reserved option nibble 15, a payload
//! marker must be followed by payload, an Empty message carries nothing) and
//! never panics on hostile bytes; a format error keeps the header it could
//! read, so the gateway can answer a Confirmable message with Reset.

use thiserror::Error;

use crate::option::{self, Opt};

/// The four message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// Confirmable: wants an Acknowledgement.
    Con,
    /// Non-confirmable.
    Non,
    /// Acknowledgement.
    Ack,
    /// Reset.
    Rst,
}

impl MsgType {
    fn bits(self) -> u8 {
        match self {
            MsgType::Con => 0,
            MsgType::Non => 1,
            MsgType::Ack => 2,
            MsgType::Rst => 3,
        }
    }

    fn from_bits(b: u8) -> MsgType {
        match b & 3 {
            0 => MsgType::Con,
            1 => MsgType::Non,
            2 => MsgType::Ack,
            _ => MsgType::Rst,
        }
    }
}

/// A request method or response code: class (3 bits) and detail (5 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code(pub u8);

impl Code {
    /// 0.00: an Empty message.
    pub const EMPTY: Code = Code::new(0, 0);
    /// 0.01 GET.
    pub const GET: Code = Code::new(0, 1);
    /// 0.02 POST.
    pub const POST: Code = Code::new(0, 2);
    /// 0.03 PUT.
    pub const PUT: Code = Code::new(0, 3);
    /// 0.04 DELETE.
    pub const DELETE: Code = Code::new(0, 4);
    /// 2.01 Created.
    pub const CREATED: Code = Code::new(2, 1);
    /// 2.03 Valid.
    pub const VALID: Code = Code::new(2, 3);
    /// 2.04 Changed.
    pub const CHANGED: Code = Code::new(2, 4);
    /// 2.05 Content.
    pub const CONTENT: Code = Code::new(2, 5);
    /// 2.31 Continue (RFC 7959).
    pub const CONTINUE: Code = Code::new(2, 31);
    /// 4.00 Bad Request.
    pub const BAD_REQUEST: Code = Code::new(4, 0);
    /// 4.01 Unauthorized.
    pub const UNAUTHORIZED: Code = Code::new(4, 1);
    /// 4.02 Bad Option.
    pub const BAD_OPTION: Code = Code::new(4, 2);
    /// 4.03 Forbidden.
    pub const FORBIDDEN: Code = Code::new(4, 3);
    /// 4.04 Not Found.
    pub const NOT_FOUND: Code = Code::new(4, 4);
    /// 4.05 Method Not Allowed.
    pub const METHOD_NOT_ALLOWED: Code = Code::new(4, 5);
    /// 4.08 Request Entity Incomplete (RFC 7959).
    pub const REQUEST_ENTITY_INCOMPLETE: Code = Code::new(4, 8);
    /// 4.13 Request Entity Too Large.
    pub const REQUEST_ENTITY_TOO_LARGE: Code = Code::new(4, 13);
    /// 5.00 Internal Server Error.
    pub const INTERNAL_SERVER_ERROR: Code = Code::new(5, 0);
    /// 5.03 Service Unavailable.
    pub const SERVICE_UNAVAILABLE: Code = Code::new(5, 3);

    /// A code from class and detail.
    pub const fn new(class: u8, detail: u8) -> Code {
        Code((class << 5) | (detail & 0x1f))
    }

    /// The class (0 request, 2 success, 4 client error, 5 server error).
    pub fn class(self) -> u8 {
        self.0 >> 5
    }

    /// The detail.
    pub fn detail(self) -> u8 {
        self.0 & 0x1f
    }

    /// Whether this is a request method (0.01–0.31).
    pub fn is_request(self) -> bool {
        self.class() == 0 && self.detail() != 0
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:02}", self.class(), self.detail())
    }
}

/// One CoAP message. Options are kept sorted by number (stable, so the order
/// of repeated options such as Uri-Path is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoapMessage {
    /// Message type.
    pub ty: MsgType,
    /// Method or response code.
    pub code: Code,
    /// Message ID (de-duplication and ACK/RST matching).
    pub mid: u16,
    /// Token, 0–8 bytes (request/response matching).
    pub token: Vec<u8>,
    /// Options in ascending number order.
    pub options: Vec<Opt>,
    /// Payload (empty = none).
    pub payload: Vec<u8>,
}

/// Why a datagram is not a CoAP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeErrorKind {
    /// Shorter than the 4-byte header.
    #[error("datagram shorter than the coap header")]
    TooShort,
    /// Version other than 1.
    #[error("unsupported coap version")]
    BadVersion,
    /// Token length 9–15.
    #[error("token length above 8")]
    BadTokenLength,
    /// Datagram ends inside the token or an option.
    #[error("datagram ends inside the token or an option")]
    Truncated,
    /// Option delta or length nibble 15 without a payload marker.
    #[error("reserved option delta or length")]
    BadOption,
    /// Option number beyond 65535.
    #[error("option number out of range")]
    OptionOverflow,
    /// Payload marker followed by nothing.
    #[error("payload marker without payload")]
    EmptyPayload,
    /// Code 0.00 with a token, options or payload.
    #[error("empty message with content")]
    NonEmptyEmpty,
}

/// A decode failure with what of the header could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{kind}")]
pub struct DecodeError {
    /// Type and message id, if the fixed header was readable.
    pub header: Option<(MsgType, u16)>,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

impl CoapMessage {
    /// A message with no options and no payload.
    pub fn new(ty: MsgType, code: Code, mid: u16, token: Vec<u8>) -> CoapMessage {
        CoapMessage {
            ty,
            code,
            mid,
            token,
            options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// An Empty message (ACK or RST) for `mid`.
    pub fn empty(ty: MsgType, mid: u16) -> CoapMessage {
        CoapMessage::new(ty, Code::EMPTY, mid, Vec::new())
    }

    /// Add an option, keeping the options sorted.
    pub fn push_option(&mut self, number: u16, value: Vec<u8>) {
        let at = self.options.partition_point(|o| o.number <= number);
        self.options.insert(at, Opt { number, value });
    }

    /// Add an unsigned-integer option in its shortest form.
    pub fn push_uint(&mut self, number: u16, value: u32) {
        self.push_option(number, option::encode_uint(value));
    }

    /// Remove every instance of option `number`.
    pub fn remove_option(&mut self, number: u16) {
        self.options.retain(|o| o.number != number);
    }

    /// The first value of option `number`.
    pub fn option(&self, number: u16) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|o| o.number == number)
            .map(|o| o.value.as_slice())
    }

    /// Every value of option `number`, in order.
    pub fn options_of(&self, number: u16) -> impl Iterator<Item = &[u8]> {
        self.options
            .iter()
            .filter(move |o| o.number == number)
            .map(|o| o.value.as_slice())
    }

    /// Option `number` read as an unsigned integer (None if absent or longer
    /// than 4 bytes).
    pub fn uint(&self, number: u16) -> Option<u32> {
        self.option(number).and_then(option::decode_uint)
    }

    /// Decode one datagram.
    pub fn decode(buf: &[u8]) -> Result<CoapMessage, DecodeError> {
        let err = |header, kind| DecodeError { header, kind };
        if buf.len() < 4 {
            return Err(err(None, DecodeErrorKind::TooShort));
        }
        let ty = MsgType::from_bits(buf[0] >> 4);
        let mid = u16::from_be_bytes([buf[2], buf[3]]);
        let header = Some((ty, mid));
        if buf[0] >> 6 != 1 {
            return Err(err(header, DecodeErrorKind::BadVersion));
        }
        let tkl = usize::from(buf[0] & 0x0f);
        if tkl > 8 {
            return Err(err(header, DecodeErrorKind::BadTokenLength));
        }
        let code = Code(buf[1]);
        let token = buf
            .get(4..4 + tkl)
            .ok_or(err(header, DecodeErrorKind::Truncated))?
            .to_vec();
        let mut rest = &buf[4 + tkl..];
        let mut options = Vec::new();
        let mut number: u32 = 0;
        let mut payload = Vec::new();
        while let Some((&first, after)) = rest.split_first() {
            if first == 0xff {
                if after.is_empty() {
                    return Err(err(header, DecodeErrorKind::EmptyPayload));
                }
                payload = after.to_vec();
                break;
            }
            rest = after;
            let delta = ext(first >> 4, &mut rest).map_err(|k| err(header, k))?;
            let len = ext(first & 0x0f, &mut rest).map_err(|k| err(header, k))?;
            number += delta;
            let n =
                u16::try_from(number).map_err(|_| err(header, DecodeErrorKind::OptionOverflow))?;
            let len = len as usize;
            let value = rest
                .get(..len)
                .ok_or(err(header, DecodeErrorKind::Truncated))?;
            options.push(Opt {
                number: n,
                value: value.to_vec(),
            });
            rest = &rest[len..];
        }
        if code == Code::EMPTY && (tkl != 0 || buf.len() != 4) {
            return Err(err(header, DecodeErrorKind::NonEmptyEmpty));
        }
        Ok(CoapMessage {
            ty,
            code,
            mid,
            token,
            options,
            payload,
        })
    }

    /// Encode into a datagram. Tokens longer than 8 bytes are cut to 8.
    pub fn encode(&self) -> Vec<u8> {
        let tkl = self.token.len().min(8);
        let mut out = Vec::with_capacity(4 + tkl + self.payload.len() + 8 * self.options.len() + 1);
        out.push(0x40 | (self.ty.bits() << 4) | tkl as u8);
        out.push(self.code.0);
        out.extend_from_slice(&self.mid.to_be_bytes());
        out.extend_from_slice(&self.token[..tkl]);
        let mut sorted: Vec<&Opt> = self.options.iter().collect();
        sorted.sort_by_key(|o| o.number);
        let mut last = 0u16;
        for o in sorted {
            let delta = u32::from(o.number - last);
            last = o.number;
            let (dn, dx) = nibble(delta);
            let len = o.value.len().min(65535 + 269);
            let (ln, lx) = nibble(len as u32);
            out.push((dn << 4) | ln);
            out.extend_from_slice(&dx);
            out.extend_from_slice(&lx);
            out.extend_from_slice(&o.value[..len]);
        }
        if !self.payload.is_empty() {
            out.push(0xff);
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

/// Read an extended option delta or length (nibble 13 = one more byte,
/// 14 = two more bytes, 15 = reserved).
fn ext(nib: u8, rest: &mut &[u8]) -> Result<u32, DecodeErrorKind> {
    match nib {
        13 => {
            let (&b, r) = rest.split_first().ok_or(DecodeErrorKind::Truncated)?;
            *rest = r;
            Ok(u32::from(b) + 13)
        }
        14 => {
            let b = rest.get(..2).ok_or(DecodeErrorKind::Truncated)?;
            let v = u32::from(u16::from_be_bytes([b[0], b[1]])) + 269;
            *rest = &rest[2..];
            Ok(v)
        }
        15 => Err(DecodeErrorKind::BadOption),
        n => Ok(u32::from(n)),
    }
}

/// The nibble and extension bytes for a delta or length.
fn nibble(v: u32) -> (u8, Vec<u8>) {
    if v < 13 {
        (v as u8, Vec::new())
    } else if v < 269 {
        (13, vec![(v - 13) as u8])
    } else {
        (14, ((v - 269) as u16).to_be_bytes().to_vec())
    }
}
