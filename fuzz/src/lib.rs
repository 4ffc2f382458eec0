//! What the fuzz targets share: a reader that turns the fuzzer's bytes into
//! choices, and the MQTT checks run for both protocol versions.

use bytes::BytesMut;
use verge_mqtt::{DecodeError, Packet, Protocol, decode, encode, encoded_len};

/// The largest packet the targets let the decoder accept (the broker's
/// default `max_packet_size` is of this order).
const MAX_PACKET: usize = 1 << 20;

/// Choices taken from the front of the fuzzer's input; once it is used up
/// every choice is 0.
pub struct Choices<'a> {
    /// What is left.
    pub rest: &'a [u8],
}

impl<'a> Choices<'a> {
    /// Choices from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Choices { rest: data }
    }

    /// One byte.
    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }

    /// Up to `n` bytes (fewer when the input runs out).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        head
    }
}

/// Every packet at the front of `buf`, as the broker's read loop decodes
/// them, ending with the error that stopped it (if any).
fn decode_all(buf: &mut BytesMut, protocol: Protocol) -> Vec<Result<Packet, DecodeError>> {
    let mut out = Vec::new();
    loop {
        match decode(buf, protocol, MAX_PACKET) {
            Ok(Some(p)) => out.push(Ok(p)),
            Ok(None) => return out,
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
}

/// The MQTT decoder on arbitrary bytes, after a CONNECT of `protocol`:
/// - it never panics;
/// - every decoded packet encodes to `encoded_len` bytes that decode to the
///   same packet and encode to the same bytes again;
/// - bytes arriving in pieces (as reads from a socket do) decode to the
///   same packets and the same error as all at once, and a `None` (more
///   bytes needed) leaves the buffer as it was.
pub fn mqtt(data: &[u8], protocol: Protocol) {
    let whole = decode_all(&mut BytesMut::from(data), protocol);
    for packet in whole.iter().flatten() {
        // a CONNECT carries its own version
        let p = match packet {
            Packet::Connect(c) => c.protocol,
            _ => protocol,
        };
        let mut out = BytesMut::new();
        if encode(packet, p, &mut out).is_err() {
            continue;
        }
        assert_eq!(
            out.len(),
            encoded_len(packet, p),
            "encoded_len of {packet:?}"
        );
        let bytes = out.clone().freeze();
        let again = decode(&mut out, p, usize::MAX).expect("a re-encoded packet decodes");
        assert_eq!(again.as_ref(), Some(packet), "round trip");
        assert!(out.is_empty(), "the re-encoded packet is used up whole");
        let mut twice = BytesMut::new();
        encode(packet, p, &mut twice).expect("encodes again");
        assert_eq!(twice.freeze(), bytes, "encoding is deterministic");
    }

    // the same bytes in pieces of 1 to 16 bytes
    let piece = usize::from(data.first().copied().unwrap_or(0) % 16) + 1;
    let mut buf = BytesMut::new();
    let mut pieces = Vec::new();
    'feed: for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match decode(&mut buf, protocol, MAX_PACKET) {
                Ok(Some(p)) => pieces.push(Ok(p)),
                Ok(None) => {
                    assert_eq!(buf, before, "`None` leaves the buffer untouched");
                    break;
                }
                Err(e) => {
                    pieces.push(Err(e));
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(pieces, whole, "decoding in pieces of {piece} bytes");
}
