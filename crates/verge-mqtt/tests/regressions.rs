//! Regression tests, each named after the bug it pins: allocation from an
//! untrusted length, silent corruption when encoding oversized property
//! fields, and spec rules the decoder once let through.

use bytes::{Bytes, BytesMut};
use verge_mqtt::*;

fn dec(bytes: &[u8], protocol: Protocol) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), protocol, usize::MAX)
}

fn publish_with(properties: Properties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 0,
        properties,
        payload: Bytes::new(),
    })
}

/// Encodes into a buffer holding a marker and checks the marker is all
/// that is left after a refused encode.
fn refused(packet: &Packet, protocol: Protocol) -> EncodeError {
    let mut buf = BytesMut::from(&b"keep"[..]);
    let err = encode(packet, protocol, &mut buf).expect_err("must be refused");
    assert_eq!(&buf[..], b"keep", "a refused encode writes nothing");
    err
}

#[test]
fn incomplete_packet_does_not_reserve_its_announced_size() {
    // Five bytes announcing a 268,435,455-byte PUBLISH: decode used to
    // reserve the whole announced size before any of it arrived.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(decode(&mut buf, Protocol::V5, usize::MAX), Ok(None));
    assert_eq!(buf.len(), 5);
    assert!(
        buf.capacity() <= 128 * 1024,
        "reserved {} bytes",
        buf.capacity()
    );
}

#[test]
fn non_minimal_variable_byte_integers_are_malformed() {
    // [MQTT-1.5.5-1]: remaining length 0 written in two bytes
    assert!(matches!(
        dec(&[0xC0, 0x80, 0x00], Protocol::V311),
        Err(DecodeError::MalformedPacket(_))
    ));
    // property length 0 written in two bytes
    assert!(matches!(
        dec(&[0x30, 0x05, 0x00, 0x01, b'a', 0x80, 0x00], Protocol::V5),
        Err(DecodeError::MalformedPacket(_))
    ));
    // subscription identifier 1 written in two bytes
    assert!(matches!(
        dec(
            &[0x30, 0x07, 0x00, 0x01, b'a', 0x03, 0x0B, 0x81, 0x00],
            Protocol::V5
        ),
        Err(DecodeError::MalformedPacket(_))
    ));
    // the shortest forms still decode
    assert_eq!(
        dec(&[0xC0, 0x00], Protocol::V311),
        Ok(Some(Packet::PingReq))
    );
    let mut long = vec![0x30, 0x80, 0x01, 0x00, 0x01, b'a'];
    long.resize(3 + 128, b'x');
    assert!(matches!(
        dec(&long, Protocol::V311),
        Ok(Some(Packet::Publish(_)))
    ));
}

#[test]
fn authentication_data_without_a_method_is_a_protocol_error() {
    // AUTH, continue authentication, properties: authentication data "a"
    assert!(matches!(
        dec(
            &[0xF0, 0x06, 0x18, 0x04, 0x16, 0x00, 0x01, b'a'],
            Protocol::V5
        ),
        Err(DecodeError::ProtocolError(_))
    ));
    // with the method first it is fine
    let ok = [
        0xF0, 0x0A, 0x18, 0x08, 0x15, 0x00, 0x01, b'm', 0x16, 0x00, 0x01, b'a',
    ];
    let Ok(Some(Packet::Auth(auth))) = dec(&ok, Protocol::V5) else {
        panic!("valid AUTH refused");
    };
    assert_eq!(auth.properties.authentication_method.as_deref(), Some("m"));
    assert_eq!(
        auth.properties.authentication_data,
        Some(Bytes::from_static(b"a"))
    );
}

#[test]
fn response_topic_must_be_a_valid_topic_name() {
    // PUBLISH "t", response topic "" / "a/+"
    assert!(matches!(
        dec(
            &[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x08, 0x00, 0x00],
            Protocol::V5
        ),
        Err(DecodeError::ProtocolError(_))
    ));
    assert!(matches!(
        dec(
            &[
                0x30, 0x0A, 0x00, 0x01, b't', 0x06, 0x08, 0x00, 0x03, b'a', b'/', b'+'
            ],
            Protocol::V5
        ),
        Err(DecodeError::ProtocolError(_))
    ));
}

#[test]
fn acks_of_subscriptions_carry_at_least_one_code() {
    assert!(matches!(
        dec(&[0x90, 0x02, 0x00, 0x01], Protocol::V311),
        Err(DecodeError::ProtocolError(_))
    ));
    assert!(matches!(
        dec(&[0x90, 0x03, 0x00, 0x01, 0x00], Protocol::V5),
        Err(DecodeError::ProtocolError(_))
    ));
    assert!(matches!(
        dec(&[0xB0, 0x03, 0x00, 0x01, 0x00], Protocol::V5),
        Err(DecodeError::ProtocolError(_))
    ));
    // 3.1.1 UNSUBACK has no payload at all
    assert!(matches!(
        dec(&[0xB0, 0x02, 0x00, 0x01], Protocol::V311),
        Ok(Some(Packet::UnsubAck(_)))
    ));
}

#[test]
fn oversized_property_fields_are_refused_not_truncated() {
    // A 70,000-byte user property used to be written with a wrapped length
    // prefix, producing a packet that no receiver can parse.
    let long = "x".repeat(70_000);
    let user = Properties {
        user_properties: vec![("k".into(), long.clone())],
        ..Properties::default()
    };
    assert_eq!(
        refused(&publish_with(user.clone()), Protocol::V5),
        EncodeError::FieldTooLong
    );

    let reason = Properties {
        reason_string: Some(long.clone()),
        ..Properties::default()
    };
    let ack = Packet::PubAck(Ack {
        packet_id: 1,
        reason_code: reason::NO_MATCHING_SUBSCRIBERS,
        properties: reason,
    });
    assert_eq!(refused(&ack, Protocol::V5), EncodeError::FieldTooLong);

    let data = Properties {
        correlation_data: Some(Bytes::from(vec![0u8; 70_000])),
        ..Properties::default()
    };
    let connect = Packet::Connect(Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        username: None,
        password: None,
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: data,
        }),
        properties: Properties::default(),
    });
    assert_eq!(refused(&connect, Protocol::V5), EncodeError::FieldTooLong);

    // 3.1.1 does not write properties, so they cannot be too long there
    let mut buf = BytesMut::new();
    encode(&publish_with(user), Protocol::V311, &mut buf)
        .expect("properties are not written in 3.1.1");
    assert_eq!(&buf[..], [0x30, 0x03, 0x00, 0x01, b't']);
}

#[test]
fn subscription_identifier_beyond_the_variable_byte_integer_range_is_refused() {
    // 2^28 used to be written in five bytes while encoded_len counted four.
    let props = |id| Properties {
        subscription_identifiers: vec![id],
        ..Properties::default()
    };
    assert_eq!(
        refused(&publish_with(props(268_435_456)), Protocol::V5),
        EncodeError::ValueTooLarge
    );
    let p = publish_with(props(268_435_455));
    let mut buf = BytesMut::new();
    encode(&p, Protocol::V5, &mut buf).expect("largest identifier encodes");
    assert_eq!(buf.len(), encoded_len(&p, Protocol::V5));
    assert_eq!(decode(&mut buf, Protocol::V5, usize::MAX), Ok(Some(p)));
}
