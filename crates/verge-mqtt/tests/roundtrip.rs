//! Property tests: every packet type round-trips through encode/decode in
//! both protocol versions, and arbitrary bytes never make the decoder panic.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use verge_mqtt::*;

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9/ é]{0,12}"
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,6}(/[a-z0-9]{0,6}){0,3}"
}

fn bin() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    option::of(0u8..=1)
}

fn users() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..3)
}

/// Properties allowed in `place`.
fn props(place: &'static str) -> BoxedStrategy<Properties> {
    match place {
        "publish" | "will" => (
            flag(),
            option::of(any::<u32>()),
            option::of(text()),
            option::of(topic_name()),
            option::of(bin()),
            users(),
            option::of(any::<u32>()),
            vec(1u32..268_435_455, 0..3),
            option::of(1u16..),
        )
            .prop_map(move |(pf, exp, ct, rt, cd, up, delay, ids, alias)| {
                let mut p = Properties {
                    payload_format_indicator: pf,
                    message_expiry_interval: exp,
                    content_type: ct,
                    response_topic: rt,
                    correlation_data: cd,
                    user_properties: up,
                    ..Properties::default()
                };
                if place == "will" {
                    p.will_delay_interval = delay;
                } else {
                    p.subscription_identifiers = ids;
                    p.topic_alias = alias;
                }
                p
            })
            .boxed(),
        "connect" => (
            option::of(any::<u32>()),
            option::of(1u16..),
            option::of(any::<u16>()),
            option::of(1u32..),
            flag(),
            flag(),
            option::of(text()),
            option::of(bin()),
            users(),
        )
            .prop_map(|(se, rm, tam, mps, rpi, rri, am, ad, up)| Properties {
                session_expiry_interval: se,
                receive_maximum: rm,
                topic_alias_maximum: tam,
                maximum_packet_size: mps,
                request_problem_information: rpi,
                request_response_information: rri,
                // authentication data only comes with a method
                authentication_data: if am.is_some() { ad } else { None },
                authentication_method: am,
                user_properties: up,
                ..Properties::default()
            })
            .boxed(),
        "connack" => (
            (
                option::of(any::<u32>()),
                option::of(text()),
                option::of(any::<u16>()),
                option::of(1u16..),
            ),
            (option::of(any::<u16>()), flag(), flag(), option::of(1u32..)),
            (
                flag(),
                flag(),
                flag(),
                option::of(text()),
                option::of(text()),
            ),
            (option::of(text()), option::of(text()), users()),
        )
            .prop_map(|(a, b, c, d)| Properties {
                session_expiry_interval: a.0,
                assigned_client_identifier: a.1,
                server_keep_alive: a.2,
                receive_maximum: a.3,
                topic_alias_maximum: b.0,
                maximum_qos: b.1,
                retain_available: b.2,
                maximum_packet_size: b.3,
                wildcard_subscription_available: c.0,
                subscription_identifier_available: c.1,
                shared_subscription_available: c.2,
                response_information: c.3,
                server_reference: c.4,
                reason_string: d.0,
                authentication_method: d.1,
                user_properties: d.2,
                ..Properties::default()
            })
            .boxed(),
        "subscribe" => (option::of(1u32..268_435_455), users())
            .prop_map(|(id, up)| Properties {
                subscription_identifiers: id.into_iter().collect(),
                user_properties: up,
                ..Properties::default()
            })
            .boxed(),
        "disconnect" => (
            option::of(any::<u32>()),
            option::of(text()),
            option::of(text()),
            users(),
        )
            .prop_map(|(se, rs, sr, up)| Properties {
                session_expiry_interval: se,
                reason_string: rs,
                server_reference: sr,
                user_properties: up,
                ..Properties::default()
            })
            .boxed(),
        "auth" => (
            option::of(text()),
            option::of(bin()),
            option::of(text()),
            users(),
        )
            .prop_map(|(am, ad, rs, up)| Properties {
                authentication_data: if am.is_some() { ad } else { None },
                authentication_method: am,
                reason_string: rs,
                user_properties: up,
                ..Properties::default()
            })
            .boxed(),
        // acks, suback, unsuback
        _ => (option::of(text()), users())
            .prop_map(|(rs, up)| Properties {
                reason_string: rs,
                user_properties: up,
                ..Properties::default()
            })
            .boxed(),
    }
}

fn packet(v5: bool) -> BoxedStrategy<Packet> {
    let p = move |place: &'static str| {
        if v5 {
            props(place)
        } else {
            Just(Properties::default()).boxed()
        }
    };
    let code = move || {
        if v5 {
            any::<u8>().boxed()
        } else {
            Just(0u8).boxed()
        }
    };
    let connack_code = move || {
        if v5 {
            any::<u8>().boxed()
        } else {
            prop_oneof![
                Just(0u8),
                Just(0x84),
                Just(0x85),
                Just(0x88),
                Just(0x86),
                Just(0x87)
            ]
            .boxed()
        }
    };
    let will = (topic_name(), bin(), qos(), any::<bool>(), p("will")).prop_map(
        |(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    );
    let connect = (
        any::<bool>(),
        any::<u16>(),
        text(),
        option::of(text()),
        option::of(bin()),
        option::of(will),
        p("connect"),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, username, password, will, properties)| {
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Connect {
                    protocol: if v5 { Protocol::V5 } else { Protocol::V311 },
                    clean_start,
                    keep_alive,
                    client_id,
                    username,
                    password,
                    will,
                    properties,
                })
            },
        );
    let connack = (any::<bool>(), connack_code(), p("connack")).prop_map(
        |(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                reason_code,
                properties,
            })
        },
    );
    let publish = (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        1u16..,
        p("publish"),
        bin(),
    )
        .prop_map(|(qos, dup, retain, topic, id, properties, payload)| {
            Packet::Publish(Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic,
                packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
                properties,
                payload,
            })
        });
    let ack = (0usize..4, 1u16.., code(), p("ack")).prop_map(
        |(kind, packet_id, reason_code, properties)| {
            let a = Ack {
                packet_id,
                reason_code,
                properties,
            };
            match kind {
                0 => Packet::PubAck(a),
                1 => Packet::PubRec(a),
                2 => Packet::PubRel(a),
                _ => Packet::PubComp(a),
            }
        },
    );
    let sub_opts =
        (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, nl, rap, rh)| {
            SubOptions {
                qos,
                no_local: nl && v5,
                retain_as_published: rap && v5,
                retain_handling: if v5 { rh } else { 0 },
            }
        });
    let subscribe = (1u16.., vec((text(), sub_opts), 1..4), p("subscribe")).prop_map(
        |(packet_id, f, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters: f
                    .into_iter()
                    .map(|(filter, options)| SubscribeFilter { filter, options })
                    .collect(),
                properties,
            })
        },
    );
    let suback_codes = move || {
        if v5 {
            vec(any::<u8>(), 1..4).boxed()
        } else {
            vec(prop_oneof![Just(0u8), Just(1), Just(2), Just(0x80)], 1..4).boxed()
        }
    };
    let suback =
        (1u16.., suback_codes(), p("suback")).prop_map(|(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        });
    let unsubscribe = (1u16.., vec(text(), 1..4), p("unsubscribe")).prop_map(
        |(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties: Properties {
                    user_properties: properties.user_properties,
                    ..Properties::default()
                },
            })
        },
    );
    let unsuback_codes = move || {
        if v5 {
            vec(any::<u8>(), 1..4).boxed()
        } else {
            Just(Vec::new()).boxed()
        }
    };
    let unsuback = (1u16.., unsuback_codes(), p("unsuback")).prop_map(
        |(packet_id, reason_codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                properties,
            })
        },
    );
    let disconnect = (code(), p("disconnect")).prop_map(|(reason_code, properties)| {
        Packet::Disconnect(Disconnect {
            reason_code,
            properties,
        })
    });
    let mut options = vec![
        connect.boxed(),
        connack.boxed(),
        publish.boxed(),
        ack.boxed(),
        subscribe.boxed(),
        suback.boxed(),
        unsubscribe.boxed(),
        unsuback.boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect.boxed(),
    ];
    if v5 {
        options.push(
            (code(), p("auth"))
                .prop_map(|(reason_code, properties)| {
                    Packet::Auth(Auth {
                        reason_code,
                        properties,
                    })
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(options).boxed()
}

fn roundtrip(packet: &Packet, protocol: Protocol) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::new();
    encode(packet, protocol, &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(buf.len(), encoded_len(packet, protocol));
    let whole = buf.clone();
    // every strict prefix is incomplete, never an error
    for cut in [0, 1, whole.len() / 2, whole.len().saturating_sub(1)] {
        if cut < whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            prop_assert_eq!(decode(&mut part, protocol, usize::MAX), Ok(None));
        }
    }
    let decoded =
        decode(&mut buf, protocol, usize::MAX).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(decoded.as_ref(), Some(packet));
    prop_assert!(buf.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn v311_packets_round_trip(p in packet(false)) {
        roundtrip(&p, Protocol::V311)?;
    }

    #[test]
    fn v5_packets_round_trip(p in packet(true)) {
        roundtrip(&p, Protocol::V5)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut buf = BytesMut::from(&bytes[..]);
            // decode until error or incomplete
            while let Ok(Some(_)) = decode(&mut buf, protocol, 1 << 20) {}
        }
    }

    #[test]
    fn mutated_packets_never_panic(p in packet(true), pos in any::<usize>(), byte in any::<u8>()) {
        let mut buf = BytesMut::new();
        encode(&p, Protocol::V5, &mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let i = pos % buf.len();
        buf[i] = byte;
        while let Ok(Some(_)) = decode(&mut buf, Protocol::V5, 1 << 20) {}
    }
}
