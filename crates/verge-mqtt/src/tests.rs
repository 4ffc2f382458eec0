//! Golden byte vectors written by hand from the specifications, and the
//! decoder's error cases.

use bytes::{Bytes, BytesMut};

use crate::*;

fn dec(bytes: &[u8], protocol: Protocol) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), protocol, 1 << 20)
}

fn enc(p: &Packet, protocol: Protocol) -> Vec<u8> {
    to_bytes(p, protocol).expect("encodes").to_vec()
}

#[test]
fn golden_v311_connect() {
    // MQTT, level 4, flags: username+password+clean, keep alive 60, id "c1"
    let bytes = [
        0x10, 0x16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60, 0, 2, b'c', b'1', 0, 2, b'u',
        b's', 0, 2, b'p', b'w',
    ];
    let p = Packet::Connect(Connect {
        protocol: Protocol::V311,
        clean_start: true,
        keep_alive: 60,
        client_id: "c1".into(),
        username: Some("us".into()),
        password: Some(Bytes::from_static(b"pw")),
        will: None,
        properties: Properties::default(),
    });
    assert_eq!(dec(&bytes, Protocol::V5), Ok(Some(p.clone())));
    assert_eq!(enc(&p, Protocol::V311), bytes);
}

#[test]
fn golden_v5_connect_with_will_and_properties() {
    let bytes = [
        0x10, 0x1F, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x0E, 0, 10, // will qos1, will, clean
        5, 0x11, 0, 0, 0, 30, // session expiry 30
        0, 1, b'c', // client id
        5, 0x18, 0, 0, 0, 5, // will delay 5
        0, 1, b't', 0, 1, b'x',
    ];
    let p = Packet::Connect(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 10,
        client_id: "c".into(),
        username: None,
        password: None,
        will: Some(Will {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties {
                will_delay_interval: Some(5),
                ..Properties::default()
            },
        }),
        properties: Properties {
            session_expiry_interval: Some(30),
            ..Properties::default()
        },
    });
    assert_eq!(dec(&bytes, Protocol::V311), Ok(Some(p.clone())));
    assert_eq!(enc(&p, Protocol::V5), bytes);
}

#[test]
fn golden_publish_both_versions() {
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: 10,
        properties: Properties::default(),
        payload: Bytes::from_static(b"hi"),
    };
    let v3 = [0x33, 9, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'i'];
    assert_eq!(enc(&Packet::Publish(p.clone()), Protocol::V311), v3);
    let v5 = [0x33, 10, 0, 3, b'a', b'/', b'b', 0, 10, 0, b'h', b'i'];
    assert_eq!(enc(&Packet::Publish(p.clone()), Protocol::V5), v5);
    assert_eq!(dec(&v5, Protocol::V5), Ok(Some(Packet::Publish(p))));
}

#[test]
fn golden_acks_use_short_forms() {
    let a = Ack {
        packet_id: 7,
        ..Ack::default()
    };
    assert_eq!(
        enc(&Packet::PubAck(a.clone()), Protocol::V5),
        [0x40, 2, 0, 7]
    );
    assert_eq!(
        enc(&Packet::PubRel(a.clone()), Protocol::V311),
        [0x62, 2, 0, 7]
    );
    let denied = Ack {
        packet_id: 7,
        reason_code: reason::NOT_AUTHORIZED,
        properties: Properties::default(),
    };
    assert_eq!(
        enc(&Packet::PubAck(denied.clone()), Protocol::V5),
        [0x40, 4, 0, 7, 0x87, 0]
    );
    assert_eq!(
        dec(&[0x40, 3, 0, 7, 0x87], Protocol::V5),
        Ok(Some(Packet::PubAck(denied)))
    );
    // 3.1.1 drops the reason code
    assert_eq!(
        dec(&[0x40, 3, 0, 7, 0x87], Protocol::V311),
        Err(DecodeError::MalformedPacket(
            "bytes left over after the packet"
        ))
    );
    assert_eq!(
        enc(&Packet::Disconnect(Disconnect::default()), Protocol::V5),
        [0xE0, 0]
    );
    assert_eq!(enc(&Packet::PingReq, Protocol::V311), [0xC0, 0]);
}

#[test]
fn golden_connack_and_suback_map_codes_for_v311() {
    let ack = ConnAck {
        session_present: false,
        reason_code: reason::BAD_USERNAME_OR_PASSWORD,
        properties: Properties::default(),
    };
    assert_eq!(
        enc(&Packet::ConnAck(ack.clone()), Protocol::V311),
        [0x20, 2, 0, 4]
    );
    assert_eq!(
        enc(&Packet::ConnAck(ack), Protocol::V5),
        [0x20, 3, 0, 0x86, 0]
    );
    let sub = SubAck {
        packet_id: 1,
        reason_codes: vec![0, 2, reason::NOT_AUTHORIZED],
        properties: Properties::default(),
    };
    assert_eq!(
        enc(&Packet::SubAck(sub.clone()), Protocol::V311),
        [0x90, 5, 0, 1, 0, 2, 0x80]
    );
    assert_eq!(
        enc(&Packet::SubAck(sub), Protocol::V5),
        [0x90, 6, 0, 1, 0, 0, 2, 0x87]
    );
}

#[test]
fn golden_subscribe_v5_options() {
    // filter "a/#", qos 1, no local, retain as published, retain handling 2
    let bytes = [0x82, 10, 0, 3, 2, 0x0B, 5, 0, 3, b'a', b'/', b'#', 0x2D];
    let bytes = {
        let mut b = bytes.to_vec();
        b[1] = (b.len() - 2) as u8;
        b
    };
    let Ok(Some(Packet::Subscribe(s))) = dec(&bytes, Protocol::V5) else {
        panic!("subscribe decodes");
    };
    assert_eq!(s.packet_id, 3);
    assert_eq!(s.properties.subscription_identifiers, vec![5]);
    assert_eq!(s.filters[0].filter, "a/#");
    assert_eq!(
        s.filters[0].options,
        SubOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: 2
        }
    );
}

#[test]
fn every_prefix_is_incomplete() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "x/y".into(),
        packet_id: 1,
        properties: Properties {
            user_properties: vec![("k".into(), "v".into())],
            ..Properties::default()
        },
        payload: Bytes::from(vec![7u8; 300]),
    });
    let bytes = enc(&p, Protocol::V5);
    for cut in 0..bytes.len() {
        let mut b = BytesMut::from(&bytes[..cut]);
        assert_eq!(
            decode(&mut b, Protocol::V5, 1 << 20),
            Ok(None),
            "prefix {cut}"
        );
        assert_eq!(b.len(), cut, "buffer untouched");
    }
}

#[test]
fn oversize_is_refused_from_the_fixed_header_alone() {
    // announces 1,000,000 bytes, only the header present
    let mut b = BytesMut::from(&[0x30, 0xC0, 0x84, 0x3D][..]);
    assert_eq!(
        decode(&mut b, Protocol::V5, 1000),
        Err(DecodeError::PacketTooLarge)
    );
    assert_eq!(DecodeError::PacketTooLarge.reason_code(), 0x95);
}

#[test]
fn malformed_inputs_are_errors() {
    use DecodeError::*;
    let cases: &[(&[u8], Protocol, DecodeError)] = &[
        (
            &[0x00, 0],
            Protocol::V5,
            MalformedPacket("reserved packet type"),
        ),
        (
            &[0xF0, 0],
            Protocol::V311,
            MalformedPacket("reserved packet type"),
        ),
        (
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            Protocol::V5,
            MalformedPacket("remaining length longer than 4 bytes"),
        ),
        (
            &[0x60, 2, 0, 1],
            Protocol::V5,
            MalformedPacket("reserved fixed header flags"),
        ),
        (
            &[0x80, 6, 0, 1, 0, 1, b'a', 0],
            Protocol::V311,
            MalformedPacket("reserved fixed header flags"),
        ),
        (
            &[0x36, 5, 0, 1, b'a', 0, 1],
            Protocol::V311,
            MalformedPacket("publish qos 3"),
        ),
        (
            &[0x38, 3, 0, 1, b'a'],
            Protocol::V311,
            MalformedPacket("dup flag on a qos 0 publish"),
        ),
        (
            &[0x32, 5, 0, 1, b'a', 0, 0],
            Protocol::V311,
            MalformedPacket("packet identifier 0"),
        ),
        (&[0x30, 3, 0, 1, b'+'], Protocol::V311, TopicNameInvalid),
        (
            &[0x30, 5, 0, 3, b'a', b'/', b'#'],
            Protocol::V311,
            TopicNameInvalid,
        ),
        (&[0x30, 2, 0, 0], Protocol::V311, TopicNameInvalid),
        (&[0x30, 4, 0, 2, 0xC3, 0x28], Protocol::V311, InvalidUtf8),
        (&[0x30, 3, 0, 1, 0], Protocol::V311, InvalidUtf8),
        (
            &[0x82, 2, 0, 1],
            Protocol::V311,
            ProtocolError("subscribe without topic filters"),
        ),
        (
            &[0x82, 6, 0, 1, 0, 1, b'a', 0x04],
            Protocol::V311,
            MalformedPacket("reserved subscription option bits"),
        ),
        (
            &[0x82, 7, 0, 1, 0, 0, 1, b'a', 0x30],
            Protocol::V5,
            MalformedPacket("retain handling 3"),
        ),
        (
            &[0xA2, 2, 0, 1],
            Protocol::V311,
            ProtocolError("unsubscribe without topic filters"),
        ),
        (
            &[0xC0, 1, 0],
            Protocol::V311,
            MalformedPacket("bytes left over after the packet"),
        ),
        // PUBLISH with a CONNECT-only property (session expiry)
        (
            &[0x30, 9, 0, 1, b'a', 5, 0x11, 0, 0, 0, 1],
            Protocol::V5,
            ProtocolError("property not allowed in this packet"),
        ),
        // content type twice
        (
            &[0x30, 12, 0, 1, b'a', 8, 0x03, 0, 1, b'x', 0x03, 0, 1, b'y'],
            Protocol::V5,
            ProtocolError("property appears twice"),
        ),
        (
            &[0x30, 6, 0, 1, b'a', 2, 0x7F, 0],
            Protocol::V5,
            MalformedPacket("unknown property identifier"),
        ),
        (
            &[0x30, 6, 0, 1, b'a', 2, 0x0B, 0],
            Protocol::V5,
            ProtocolError("subscription identifier 0"),
        ),
        // property length beyond the packet
        (
            &[0x30, 5, 0, 1, b'a', 9, 0x01],
            Protocol::V5,
            MalformedPacket("packet shorter than its contents"),
        ),
    ];
    for (bytes, protocol, want) in cases {
        assert_eq!(dec(bytes, *protocol).as_ref(), Err(want), "{bytes:02x?}");
    }
}

#[test]
fn connect_errors() {
    let connect = |name: &[u8], level: u8, flags: u8| {
        let mut b = vec![0x10, 0];
        b.extend_from_slice(&(name.len() as u16).to_be_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&[level, flags, 0, 0]);
        if level == 5 {
            b.push(0);
        }
        b.extend_from_slice(&[0, 1, b'c']);
        b[1] = (b.len() - 2) as u8;
        b
    };
    assert!(matches!(
        dec(&connect(b"MQTT", 4, 0x02), Protocol::V5),
        Ok(Some(Packet::Connect(_)))
    ));
    assert_eq!(
        dec(&connect(b"MQTT", 3, 0x02), Protocol::V5),
        Err(DecodeError::UnsupportedProtocolVersion(3))
    );
    assert_eq!(
        dec(&connect(b"MQTT", 6, 0x02), Protocol::V5),
        Err(DecodeError::UnsupportedProtocolVersion(6))
    );
    assert_eq!(
        dec(&connect(b"HTTP", 4, 0x02), Protocol::V5),
        Err(DecodeError::InvalidProtocolName)
    );
    assert_eq!(
        dec(&connect(b"MQTT", 4, 0x03), Protocol::V5),
        Err(DecodeError::MalformedPacket("reserved connect flag set"))
    );
    assert_eq!(
        dec(&connect(b"MQTT", 4, 0x20), Protocol::V5),
        Err(DecodeError::MalformedPacket(
            "will qos or retain without will"
        ))
    );
    assert_eq!(
        dec(&connect(b"MQTT", 4, 0x40), Protocol::V5),
        Err(DecodeError::MalformedPacket("password without user name"))
    );
    assert_eq!(
        DecodeError::UnsupportedProtocolVersion(3).reason_code(),
        0x84
    );
}

#[test]
fn encode_refuses_what_cannot_be_sent() {
    let auth = Packet::Auth(Auth::default());
    assert_eq!(
        to_bytes(&auth, Protocol::V311),
        Err(EncodeError::NotInProtocol)
    );
    let long = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a".repeat(70_000),
        packet_id: 0,
        properties: Properties::default(),
        payload: Bytes::new(),
    });
    assert_eq!(
        to_bytes(&long, Protocol::V5),
        Err(EncodeError::FieldTooLong)
    );
}
