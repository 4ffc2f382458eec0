//! Decoding: bytes from the network into [`Packet`]s. Strict, never panics,
//! never trusts a length before checking it against the bytes present.

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;
use crate::packet::*;
use crate::props::{Place, decode_props};
use crate::wire::{Reader, V3_CONNACK, fixed_header};

/// The most `decode` reserves ahead for a packet that has not fully arrived:
/// the announced length is untrusted, so it never sizes an allocation.
const RESERVE_AHEAD: usize = 64 * 1024;

/// Decode one packet from the front of `buf`. `Ok(None)` means more bytes
/// are needed and `buf` is untouched. A CONNECT is decoded by its own
/// protocol level; other packets by `protocol`. A packet whose total size
/// exceeds `max_packet_size` is refused as soon as its fixed header is read.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some((first, remaining, header)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let total = header + remaining;
    if total > max_packet_size {
        return Err(DecodeError::PacketTooLarge);
    }
    if buf.len() < total {
        // A hint for the caller's next read, bounded: a peer announcing a
        // large packet must not make us allocate before sending its bytes.
        buf.reserve((total - buf.len()).min(RESERVE_AHEAD));
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(header);
    let mut r = Reader::new(frame);
    let packet = body(first, &mut r, protocol)?;
    if !r.is_empty() {
        return Err(DecodeError::MalformedPacket(
            "bytes left over after the packet",
        ));
    }
    Ok(Some(packet))
}

fn flags(first: u8, want: u8) -> Result<(), DecodeError> {
    if first & 0x0F != want {
        return Err(DecodeError::MalformedPacket("reserved fixed header flags"));
    }
    Ok(())
}

fn body(first: u8, r: &mut Reader, protocol: Protocol) -> Result<Packet, DecodeError> {
    let v5 = protocol == Protocol::V5;
    match first >> 4 {
        1 => {
            flags(first, 0)?;
            connect(r).map(Packet::Connect)
        }
        2 => {
            flags(first, 0)?;
            connack(r, v5).map(Packet::ConnAck)
        }
        3 => publish(first, r, v5).map(Packet::Publish),
        4 => {
            flags(first, 0)?;
            ack(r, v5).map(Packet::PubAck)
        }
        5 => {
            flags(first, 0)?;
            ack(r, v5).map(Packet::PubRec)
        }
        6 => {
            flags(first, 2)?;
            ack(r, v5).map(Packet::PubRel)
        }
        7 => {
            flags(first, 0)?;
            ack(r, v5).map(Packet::PubComp)
        }
        8 => {
            flags(first, 2)?;
            subscribe(r, v5).map(Packet::Subscribe)
        }
        9 => {
            flags(first, 0)?;
            suback(r, v5).map(Packet::SubAck)
        }
        10 => {
            flags(first, 2)?;
            unsubscribe(r, v5).map(Packet::Unsubscribe)
        }
        11 => {
            flags(first, 0)?;
            unsuback(r, v5).map(Packet::UnsubAck)
        }
        12 => {
            flags(first, 0)?;
            Ok(Packet::PingReq)
        }
        13 => {
            flags(first, 0)?;
            Ok(Packet::PingResp)
        }
        14 => {
            flags(first, 0)?;
            let (reason_code, properties) = reason_and_props(r, v5, Place::Disconnect)?;
            Ok(Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            }))
        }
        15 if v5 => {
            flags(first, 0)?;
            let (reason_code, properties) = reason_and_props(r, v5, Place::Auth)?;
            Ok(Packet::Auth(Auth {
                reason_code,
                properties,
            }))
        }
        _ => Err(DecodeError::MalformedPacket("reserved packet type")),
    }
}

fn props(r: &mut Reader, v5: bool, place: Place) -> Result<Properties, DecodeError> {
    if v5 {
        decode_props(r, place)
    } else {
        Ok(Properties::default())
    }
}

fn connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V311,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQTT", l) | (b"MQIsdp", l) => return Err(DecodeError::UnsupportedProtocolVersion(l)),
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let v5 = protocol == Protocol::V5;
    let f = r.u8()?;
    if f & 0x01 != 0 {
        return Err(DecodeError::MalformedPacket("reserved connect flag set"));
    }
    let clean_start = f & 0x02 != 0;
    let will_flag = f & 0x04 != 0;
    let will_qos = (f >> 3) & 0x03;
    let will_retain = f & 0x20 != 0;
    let has_password = f & 0x40 != 0;
    let has_username = f & 0x80 != 0;
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::MalformedPacket("will qos 3"))?;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::MalformedPacket(
            "will qos or retain without will",
        ));
    }
    if !v5 && has_password && !has_username {
        return Err(DecodeError::MalformedPacket("password without user name"));
    }
    let keep_alive = r.u16()?;
    let properties = props(r, v5, Place::Connect)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = props(r, v5, Place::Will)?;
        let topic = r.string()?;
        if !crate::topic::valid_topic_name(&topic) {
            return Err(DecodeError::TopicNameInvalid);
        }
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        username,
        password,
        will,
        properties,
    })
}

fn connack(r: &mut Reader, v5: bool) -> Result<ConnAck, DecodeError> {
    let f = r.u8()?;
    if f & 0xFE != 0 {
        return Err(DecodeError::MalformedPacket("reserved connack flags"));
    }
    let code = r.u8()?;
    let reason_code = if v5 {
        code
    } else {
        V3_CONNACK
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| *v)
            .ok_or(DecodeError::MalformedPacket("unknown connect return code"))?
    };
    let properties = props(r, v5, Place::ConnAck)?;
    Ok(ConnAck {
        session_present: f & 1 != 0,
        reason_code,
        properties,
    })
}

fn publish(first: u8, r: &mut Reader, v5: bool) -> Result<Publish, DecodeError> {
    let dup = first & 0x08 != 0;
    let qos =
        QoS::from_u8((first >> 1) & 0x03).ok_or(DecodeError::MalformedPacket("publish qos 3"))?;
    let retain = first & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::MalformedPacket("dup flag on a qos 0 publish"));
    }
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce { 0 } else { r.u16()? };
    if qos != QoS::AtMostOnce && packet_id == 0 {
        return Err(DecodeError::MalformedPacket("packet identifier 0"));
    }
    let properties = props(r, v5, Place::Publish)?;
    if topic.contains(['+', '#']) {
        return Err(DecodeError::TopicNameInvalid);
    }
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::TopicNameInvalid);
    }
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::MalformedPacket("packet identifier 0"));
    }
    Ok(id)
}

fn ack(r: &mut Reader, v5: bool) -> Result<Ack, DecodeError> {
    let packet_id = packet_id(r)?;
    let (reason_code, properties) = reason_and_props(r, v5, Place::Ack)?;
    Ok(Ack {
        packet_id,
        reason_code,
        properties,
    })
}

/// The optional reason code and properties that end PUBACK-like packets,
/// DISCONNECT and AUTH in 5.0 (absent = success, no properties).
fn reason_and_props(
    r: &mut Reader,
    v5: bool,
    place: Place,
) -> Result<(u8, Properties), DecodeError> {
    if !v5 || r.is_empty() {
        return Ok((reason::SUCCESS, Properties::default()));
    }
    let code = r.u8()?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        decode_props(r, place)?
    };
    Ok((code, properties))
}

fn subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, Place::Subscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let o = r.u8()?;
        let reserved = if v5 { 0xC0 } else { 0xFC };
        if o & reserved != 0 {
            return Err(DecodeError::MalformedPacket(
                "reserved subscription option bits",
            ));
        }
        let qos =
            QoS::from_u8(o & 0x03).ok_or(DecodeError::MalformedPacket("subscription qos 3"))?;
        let retain_handling = (o >> 4) & 0x03;
        if retain_handling == 3 {
            return Err(DecodeError::MalformedPacket("retain handling 3"));
        }
        filters.push(SubscribeFilter {
            filter,
            options: SubOptions {
                qos,
                no_local: o & 0x04 != 0,
                retain_as_published: o & 0x08 != 0,
                retain_handling,
            },
        });
    }
    if filters.is_empty() {
        return Err(DecodeError::ProtocolError(
            "subscribe without topic filters",
        ));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn suback(r: &mut Reader, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, Place::SubAck)?;
    let reason_codes = r.rest().to_vec();
    if reason_codes.is_empty() {
        return Err(DecodeError::ProtocolError("suback without reason codes"));
    }
    if !v5 && reason_codes.iter().any(|&c| c > 2 && c != 0x80) {
        return Err(DecodeError::MalformedPacket("invalid suback return code"));
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn unsubscribe(r: &mut Reader, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, Place::Unsubscribe)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(DecodeError::ProtocolError(
            "unsubscribe without topic filters",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn unsuback(r: &mut Reader, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = props(r, v5, Place::UnsubAck)?;
    let reason_codes = if v5 { r.rest().to_vec() } else { Vec::new() };
    if v5 && reason_codes.is_empty() {
        return Err(DecodeError::ProtocolError("unsuback without reason codes"));
    }
    Ok(UnsubAck {
        packet_id,
        reason_codes,
        properties,
    })
}
