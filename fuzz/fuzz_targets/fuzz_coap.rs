//! CoAP: the gateway's datagram decoder and the option values it reads.
//! - decoding never panics;
//! - a decoded message encodes to exactly the datagram (the format has one
//!   encoding per message, and the decoder refuses the rest);
//! - a refused datagram of 4 bytes or more still yields its type and
//!   message id (the gateway answers a Confirmable one with Reset);
//! - Block1/Block2, unsigned-integer options and Content-Format values read
//!   as the gateway reads them round-trip through their encoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verge_coap::option::{self, Block};
use verge_coap::{CoapMessage, MsgType};

fuzz_target!(|data: &[u8]| {
    let msg = match CoapMessage::decode(data) {
        Ok(m) => m,
        Err(e) => {
            if data.len() >= 4 {
                let (ty, mid) = e.header.expect("a 4-byte header is always readable");
                assert_eq!(mid, u16::from_be_bytes([data[2], data[3]]));
                let again = CoapMessage::empty(ty, mid).encode();
                assert_eq!(
                    CoapMessage::decode(&again).map(|m| (m.ty, m.mid)),
                    Ok((ty, mid))
                );
            } else {
                assert_eq!(e.header, None);
            }
            return;
        }
    };
    assert_eq!(msg.encode(), data, "re-encoding {msg:?}");
    assert!(msg.token.len() <= 8);
    assert!(msg.options.is_sorted_by_key(|o| o.number));
    if msg.ty == MsgType::Ack || msg.ty == MsgType::Rst {
        let _ = msg.code.is_request();
    }

    for number in [option::BLOCK1, option::BLOCK2] {
        if let Some(b) = msg.option(number).and_then(Block::decode) {
            assert!(b.szx < 7 && b.num <= Block::MAX_NUM);
            assert_eq!(Block::decode(&b.encode()), Some(b));
            assert!(b.offset() <= Block::MAX_NUM as usize * 1024);
        }
    }
    for o in &msg.options {
        if let Some(v) = option::decode_uint(&o.value) {
            assert_eq!(option::decode_uint(&option::encode_uint(v)), Some(v));
        }
    }
    if let Some(cf) = msg.uint(option::CONTENT_FORMAT) {
        assert_eq!(option::content_format(&option::content_type(cf)), Some(cf));
    }
    let _ = option::unknown_critical(&msg.options);
    // the path as the gateway reads it (every segment UTF-8, or refused)
    let _: Option<Vec<&str>> = msg
        .options_of(option::URI_PATH)
        .map(|s| std::str::from_utf8(s).ok())
        .collect();
});
