//! Fuzz the MQTT packet decoder: arbitrary bytes never panic, and whatever
//! decodes re-encodes to something that decodes to the same packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use verge_mqtt::{Protocol, decode, encode};

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, protocol, 1 << 20) {
            // CONNECT carries its own version
            let p = match &packet {
                verge_mqtt::Packet::Connect(c) => c.protocol,
                _ => protocol,
            };
            let mut out = BytesMut::new();
            if encode(&packet, p, &mut out).is_ok() {
                let again = decode(&mut out, p, usize::MAX).expect("re-encoded packet decodes");
                assert_eq!(again.as_ref(), Some(&packet));
            }
        }
    }
});
