//! Codec properties: encode/decode round-trips, and decoding arbitrary bytes
//! never panics; plus a golden datagram from RFC 7252's examples.

use proptest::prelude::*;
use verge_coap::option::{self, Block, Opt};
use verge_coap::{CoapMessage, Code, MsgType};

fn msg_type() -> impl Strategy<Value = MsgType> {
    prop_oneof![
        Just(MsgType::Con),
        Just(MsgType::Non),
        Just(MsgType::Ack),
        Just(MsgType::Rst)
    ]
}

proptest! {
    #[test]
    fn round_trip(
        ty in msg_type(),
        code in 1u8..=255,
        mid: u16,
        token in proptest::collection::vec(any::<u8>(), 0..=8),
        mut opts in proptest::collection::vec((0u16..2000, proptest::collection::vec(any::<u8>(), 0..300)), 0..8),
        payload in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        opts.sort_by_key(|(n, _)| *n);
        let m = CoapMessage {
            ty,
            code: Code(code),
            mid,
            token,
            options: opts.into_iter().map(|(number, value)| Opt { number, value }).collect(),
            payload,
        };
        prop_assert_eq!(CoapMessage::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = CoapMessage::decode(&bytes);
    }

    #[test]
    fn block_round_trip(num in 0u32..=Block::MAX_NUM, more: bool, szx in 0u8..7) {
        let b = Block { num, more, szx };
        prop_assert_eq!(Block::decode(&b.encode()), Some(b));
    }
}

#[test]
fn golden_get_request() {
    // CON GET, mid 0x7d34, token 0x71, Uri-Path "temperature".
    let bytes = b"\x41\x01\x7d\x34\x71\xbbtemperature";
    let m = CoapMessage::decode(bytes).expect("decodes");
    assert_eq!((m.ty, m.code, m.mid), (MsgType::Con, Code::GET, 0x7d34));
    assert_eq!(m.token, vec![0x71]);
    assert_eq!(m.option(option::URI_PATH), Some(&b"temperature"[..]));
    assert_eq!(m.encode(), bytes.to_vec());
}

#[test]
fn long_options_use_extended_deltas_and_lengths() {
    let mut m = CoapMessage::new(MsgType::Non, Code::CONTENT, 1, vec![]);
    m.push_option(option::SIZE1, vec![1; 300]);
    m.push_option(2000, vec![]);
    let back = CoapMessage::decode(&m.encode()).expect("decodes");
    assert_eq!(back, m);
    assert_eq!(Code::CONTENT.to_string(), "2.05");
}
