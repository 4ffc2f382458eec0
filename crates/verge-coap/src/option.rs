//! CoAP option numbers and values: unsigned integers, Block1/Block2
//! (RFC 7959) and the Content-Format registry entries the gateway maps to
//! MQTT content types.

/// One option instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    /// Option number.
    pub number: u16,
    /// Raw value.
    pub value: Vec<u8>,
}

/// If-Match.
pub const IF_MATCH: u16 = 1;
/// Uri-Host.
pub const URI_HOST: u16 = 3;
/// ETag.
pub const ETAG: u16 = 4;
/// If-None-Match.
pub const IF_NONE_MATCH: u16 = 5;
/// Observe (RFC 7641).
pub const OBSERVE: u16 = 6;
/// Uri-Port.
pub const URI_PORT: u16 = 7;
/// Uri-Path.
pub const URI_PATH: u16 = 11;
/// Content-Format.
pub const CONTENT_FORMAT: u16 = 12;
/// Max-Age.
pub const MAX_AGE: u16 = 14;
/// Uri-Query.
pub const URI_QUERY: u16 = 15;
/// Accept.
pub const ACCEPT: u16 = 17;
/// Block2 (RFC 7959).
pub const BLOCK2: u16 = 23;
/// Block1 (RFC 7959).
pub const BLOCK1: u16 = 27;
/// Size2 (RFC 7959).
pub const SIZE2: u16 = 28;
/// Size1.
pub const SIZE1: u16 = 60;

/// Critical options the gateway understands in a request; any other
/// critical (odd-numbered) option makes it answer 4.02 Bad Option.
const UNDERSTOOD_CRITICAL: &[u16] = &[
    URI_HOST, URI_PORT, URI_PATH, URI_QUERY, ACCEPT, BLOCK2, BLOCK1,
];

/// Whether an option number is critical (RFC 7252 §5.4.1: odd numbers).
pub fn is_critical(number: u16) -> bool {
    number & 1 == 1
}

/// The first critical option in `opts` that the gateway does not
/// understand, if any.
pub fn unknown_critical(opts: &[Opt]) -> Option<u16> {
    opts.iter()
        .map(|o| o.number)
        .find(|&n| is_critical(n) && !UNDERSTOOD_CRITICAL.contains(&n))
}

/// An unsigned integer in its shortest big-endian form (0 = no bytes).
pub fn encode_uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    bytes[skip..].to_vec()
}

/// An unsigned integer option value (at most 4 bytes).
pub fn decode_uint(b: &[u8]) -> Option<u32> {
    if b.len() > 4 {
        return None;
    }
    Some(b.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x)))
}

/// A Block1 or Block2 option value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Block number.
    pub num: u32,
    /// More blocks follow.
    pub more: bool,
    /// Size exponent: the block holds `2^(szx+4)` bytes (0–6).
    pub szx: u8,
}

impl Block {
    /// Largest block number (20 bits).
    pub const MAX_NUM: u32 = (1 << 20) - 1;

    /// Parse an option value; `None` for more than 3 bytes or the reserved
    /// size exponent 7.
    pub fn decode(b: &[u8]) -> Option<Block> {
        if b.len() > 3 {
            return None;
        }
        let v = decode_uint(b)?;
        let szx = (v & 7) as u8;
        if szx == 7 {
            return None;
        }
        Some(Block {
            num: v >> 4,
            more: v & 8 != 0,
            szx,
        })
    }

    /// The option value.
    pub fn encode(self) -> Vec<u8> {
        encode_uint(
            ((self.num & Self::MAX_NUM) << 4)
                | (u32::from(self.more) << 3)
                | u32::from(self.szx & 7),
        )
    }

    /// Block size in bytes.
    pub fn size(self) -> usize {
        1 << (usize::from(self.szx.min(6)) + 4)
    }

    /// Byte offset of this block in the whole body.
    pub fn offset(self) -> usize {
        self.num as usize * self.size()
    }

    /// The size exponent of the largest block size not above `bytes`
    /// (16 ≤ size ≤ 1024).
    pub fn szx_for(bytes: usize) -> u8 {
        let mut szx = 6u8;
        while szx > 0 && (1usize << (szx + 4)) > bytes {
            szx -= 1;
        }
        szx
    }
}

/// Content-Formats from the IANA registry with a media type.
const FORMATS: &[(u16, &str)] = &[
    (0, "text/plain;charset=utf-8"),
    (40, "application/link-format"),
    (41, "application/xml"),
    (42, "application/octet-stream"),
    (47, "application/exi"),
    (50, "application/json"),
    (60, "application/cbor"),
    (110, "application/senml+json"),
    (112, "application/senml+cbor"),
];

/// The MQTT content type for a CoAP Content-Format (unregistered numbers
/// become `application/vnd.coap.cf-N`, so nothing is lost).
pub fn content_type(format: u32) -> String {
    FORMATS
        .iter()
        .find(|(n, _)| u32::from(*n) == format)
        .map(|(_, t)| (*t).to_owned())
        .unwrap_or_else(|| format!("application/vnd.coap.cf-{format}"))
}

/// The CoAP Content-Format for an MQTT content type, if there is one.
pub fn content_format(content_type: &str) -> Option<u32> {
    let t = content_type.trim();
    if let Some(n) = t.strip_prefix("application/vnd.coap.cf-") {
        return n.parse().ok();
    }
    FORMATS
        .iter()
        .find(|(_, m)| m.eq_ignore_ascii_case(t))
        .map(|(n, _)| u32::from(*n))
        .or((t == "text/plain").then_some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint_is_shortest() {
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(encode_uint(1), vec![1]);
        assert_eq!(encode_uint(0x1234), vec![0x12, 0x34]);
        assert_eq!(decode_uint(&[0x12, 0x34]), Some(0x1234));
        assert_eq!(decode_uint(&[1, 2, 3, 4, 5]), None);
    }

    #[test]
    fn block_round_trip() {
        let b = Block {
            num: 5,
            more: true,
            szx: 6,
        };
        assert_eq!(Block::decode(&b.encode()), Some(b));
        assert_eq!(b.size(), 1024);
        assert_eq!(b.offset(), 5120);
        assert_eq!(Block::decode(&[0x0f]), None, "szx 7 is reserved");
        assert_eq!(Block::szx_for(1024), 6);
        assert_eq!(Block::szx_for(1000), 5);
        assert_eq!(Block::szx_for(3), 0);
    }

    #[test]
    fn content_formats_map_both_ways() {
        assert_eq!(content_type(50), "application/json");
        assert_eq!(content_format("application/json"), Some(50));
        assert_eq!(content_type(11542), "application/vnd.coap.cf-11542");
        assert_eq!(content_format("application/vnd.coap.cf-11542"), Some(11542));
        assert_eq!(content_format("image/png"), None);
    }

    #[test]
    fn critical_options() {
        assert!(is_critical(URI_PATH));
        assert!(!is_critical(OBSERVE));
        let opts = vec![Opt {
            number: 9,
            value: vec![],
        }];
        assert_eq!(unknown_critical(&opts), Some(9));
        let opts = vec![Opt {
            number: URI_PATH,
            value: vec![],
        }];
        assert_eq!(unknown_critical(&opts), None);
    }
}
