//! MQTT 5.0 properties: which packet may carry which property, and their
//! encoding and decoding.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::packet::Properties;
use crate::wire::{
    MAX_VARINT, Reader, bin_len, str_len, varint_len, write_bin, write_str, write_varint,
};

/// Where a property block appears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Connect = 1 << 0,
    ConnAck = 1 << 1,
    Publish = 1 << 2,
    Will = 1 << 3,
    Ack = 1 << 4,
    Subscribe = 1 << 5,
    SubAck = 1 << 6,
    Unsubscribe = 1 << 7,
    UnsubAck = 1 << 8,
    Disconnect = 1 << 9,
    Auth = 1 << 10,
}

const C: u16 = Place::Connect as u16;
const CA: u16 = Place::ConnAck as u16;
const P: u16 = Place::Publish as u16;
const W: u16 = Place::Will as u16;
const A: u16 = Place::Ack as u16;
const S: u16 = Place::Subscribe as u16;
const SA: u16 = Place::SubAck as u16;
const UA: u16 = Place::UnsubAck as u16;
const D: u16 = Place::Disconnect as u16;
const AU: u16 = Place::Auth as u16;
const ALL: u16 = 0x7FF;

/// Which places allow property `id` (table 2-4 of the 5.0 specification).
fn allowed(id: u8) -> u16 {
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => P | W,
        0x0B => P | S,
        0x11 => C | CA | D,
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => CA,
        0x15 | 0x16 => C | CA | AU,
        0x17 | 0x19 => C,
        0x18 => W,
        0x1C => CA | D,
        0x1F => CA | A | SA | UA | D | AU,
        0x21 | 0x22 | 0x27 => C | CA,
        0x23 => P,
        0x26 => ALL,
        _ => 0,
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::ProtocolError("property appears twice"));
    }
    *slot = Some(v);
    Ok(())
}

fn flag(v: u8, what: &'static str) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::ProtocolError(what));
    }
    Ok(v)
}

/// Decode a property block (length prefix included).
pub(crate) fn decode_props(r: &mut Reader, place: Place) -> Result<Properties, DecodeError> {
    let len = r.varint()? as usize;
    let mut block = r.sub(len)?;
    let mut p = Properties::default();
    while !block.is_empty() {
        let id = block.varint()?;
        let id = u8::try_from(id)
            .map_err(|_| DecodeError::MalformedPacket("unknown property identifier"))?;
        let mask = allowed(id);
        if mask == 0 {
            return Err(DecodeError::MalformedPacket("unknown property identifier"));
        }
        if mask & place as u16 == 0 {
            return Err(DecodeError::ProtocolError(
                "property not allowed in this packet",
            ));
        }
        match id {
            0x01 => set_once(
                &mut p.payload_format_indicator,
                flag(block.u8()?, "payload format indicator")?,
            )?,
            0x02 => set_once(&mut p.message_expiry_interval, block.u32()?)?,
            0x03 => set_once(&mut p.content_type, block.string()?)?,
            0x08 => {
                let t = block.string()?;
                if !crate::topic::valid_topic_name(&t) {
                    return Err(DecodeError::ProtocolError(
                        "response topic is not a valid topic name",
                    ));
                }
                set_once(&mut p.response_topic, t)?
            }
            0x09 => set_once(&mut p.correlation_data, block.binary()?)?,
            0x0B => {
                let v = block.varint()?;
                if v == 0 {
                    return Err(DecodeError::ProtocolError("subscription identifier 0"));
                }
                if place == Place::Subscribe && !p.subscription_identifiers.is_empty() {
                    return Err(DecodeError::ProtocolError("property appears twice"));
                }
                p.subscription_identifiers.push(v);
            }
            0x11 => set_once(&mut p.session_expiry_interval, block.u32()?)?,
            0x12 => set_once(&mut p.assigned_client_identifier, block.string()?)?,
            0x13 => set_once(&mut p.server_keep_alive, block.u16()?)?,
            0x15 => set_once(&mut p.authentication_method, block.string()?)?,
            0x16 => set_once(&mut p.authentication_data, block.binary()?)?,
            0x17 => set_once(
                &mut p.request_problem_information,
                flag(block.u8()?, "request problem information")?,
            )?,
            0x18 => set_once(&mut p.will_delay_interval, block.u32()?)?,
            0x19 => set_once(
                &mut p.request_response_information,
                flag(block.u8()?, "request response information")?,
            )?,
            0x1A => set_once(&mut p.response_information, block.string()?)?,
            0x1C => set_once(&mut p.server_reference, block.string()?)?,
            0x1F => set_once(&mut p.reason_string, block.string()?)?,
            0x21 => {
                let v = block.u16()?;
                if v == 0 {
                    return Err(DecodeError::ProtocolError("receive maximum 0"));
                }
                set_once(&mut p.receive_maximum, v)?
            }
            0x22 => set_once(&mut p.topic_alias_maximum, block.u16()?)?,
            0x23 => {
                let v = block.u16()?;
                if v == 0 {
                    return Err(DecodeError::ProtocolError("topic alias 0"));
                }
                set_once(&mut p.topic_alias, v)?
            }
            0x24 => set_once(&mut p.maximum_qos, flag(block.u8()?, "maximum qos")?)?,
            0x25 => set_once(
                &mut p.retain_available,
                flag(block.u8()?, "retain available")?,
            )?,
            0x26 => {
                let k = block.string()?;
                let v = block.string()?;
                p.user_properties.push((k, v));
            }
            0x27 => {
                let v = block.u32()?;
                if v == 0 {
                    return Err(DecodeError::ProtocolError("maximum packet size 0"));
                }
                set_once(&mut p.maximum_packet_size, v)?
            }
            0x28 => set_once(
                &mut p.wildcard_subscription_available,
                flag(block.u8()?, "wildcard available")?,
            )?,
            0x29 => set_once(
                &mut p.subscription_identifier_available,
                flag(block.u8()?, "subscription identifier available")?,
            )?,
            0x2A => set_once(
                &mut p.shared_subscription_available,
                flag(block.u8()?, "shared available")?,
            )?,
            _ => return Err(DecodeError::MalformedPacket("unknown property identifier")),
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::ProtocolError(
            "authentication data without authentication method",
        ));
    }
    Ok(p)
}

/// Whether every property can be encoded: strings and binary data of at most
/// 65,535 bytes, subscription identifiers within the variable byte integer
/// range.
pub(crate) fn check_props(p: &Properties) -> Result<(), EncodeError> {
    let long = |b: &[u8]| b.len() > u16::MAX as usize;
    let s = |o: &Option<String>| o.as_ref().is_some_and(|v| long(v.as_bytes()));
    let bin = |o: &Option<Bytes>| o.as_ref().is_some_and(|v| long(v));
    if s(&p.content_type)
        || s(&p.response_topic)
        || bin(&p.correlation_data)
        || s(&p.assigned_client_identifier)
        || s(&p.authentication_method)
        || bin(&p.authentication_data)
        || s(&p.response_information)
        || s(&p.server_reference)
        || s(&p.reason_string)
        || p.user_properties
            .iter()
            .any(|(k, v)| long(k.as_bytes()) || long(v.as_bytes()))
    {
        return Err(EncodeError::FieldTooLong);
    }
    if p.subscription_identifiers.iter().any(|&v| v > MAX_VARINT) {
        return Err(EncodeError::ValueTooLarge);
    }
    Ok(())
}

/// Bytes of the property contents (without the length prefix).
pub(crate) fn props_body_len(p: &Properties) -> usize {
    let b = |o: &Option<u8>| if o.is_some() { 2 } else { 0 };
    let h = |o: &Option<u16>| if o.is_some() { 3 } else { 0 };
    let w = |o: &Option<u32>| if o.is_some() { 5 } else { 0 };
    let s = |o: &Option<String>| o.as_ref().map_or(0, |s| 1 + str_len(s));
    let bin = |o: &Option<Bytes>| o.as_ref().map_or(0, |d| 1 + bin_len(d));
    b(&p.payload_format_indicator)
        + w(&p.message_expiry_interval)
        + s(&p.content_type)
        + s(&p.response_topic)
        + bin(&p.correlation_data)
        + p.subscription_identifiers
            .iter()
            .map(|&v| 1 + varint_len(v))
            .sum::<usize>()
        + w(&p.session_expiry_interval)
        + s(&p.assigned_client_identifier)
        + h(&p.server_keep_alive)
        + s(&p.authentication_method)
        + bin(&p.authentication_data)
        + b(&p.request_problem_information)
        + w(&p.will_delay_interval)
        + b(&p.request_response_information)
        + s(&p.response_information)
        + s(&p.server_reference)
        + s(&p.reason_string)
        + h(&p.receive_maximum)
        + h(&p.topic_alias_maximum)
        + h(&p.topic_alias)
        + b(&p.maximum_qos)
        + b(&p.retain_available)
        + p.user_properties
            .iter()
            .map(|(k, v)| 1 + str_len(k) + str_len(v))
            .sum::<usize>()
        + w(&p.maximum_packet_size)
        + b(&p.wildcard_subscription_available)
        + b(&p.subscription_identifier_available)
        + b(&p.shared_subscription_available)
}

/// Bytes of the property block including its length prefix.
pub(crate) fn props_len(p: &Properties) -> usize {
    let body = props_body_len(p);
    varint_len(body as u32) + body
}

/// Write a property block including its length prefix.
pub(crate) fn write_props(buf: &mut BytesMut, p: &Properties) {
    write_varint(buf, props_body_len(p) as u32);
    let byte = |buf: &mut BytesMut, id: u8, v: Option<u8>| {
        if let Some(v) = v {
            buf.put_u8(id);
            buf.put_u8(v);
        }
    };
    let short = |buf: &mut BytesMut, id: u8, v: Option<u16>| {
        if let Some(v) = v {
            buf.put_u8(id);
            buf.put_u16(v);
        }
    };
    let word = |buf: &mut BytesMut, id: u8, v: Option<u32>| {
        if let Some(v) = v {
            buf.put_u8(id);
            buf.put_u32(v);
        }
    };
    let string = |buf: &mut BytesMut, id: u8, v: &Option<String>| {
        if let Some(v) = v {
            buf.put_u8(id);
            write_str(buf, v);
        }
    };
    let binary = |buf: &mut BytesMut, id: u8, v: &Option<Bytes>| {
        if let Some(v) = v {
            buf.put_u8(id);
            write_bin(buf, v);
        }
    };
    byte(buf, 0x01, p.payload_format_indicator);
    word(buf, 0x02, p.message_expiry_interval);
    string(buf, 0x03, &p.content_type);
    string(buf, 0x08, &p.response_topic);
    binary(buf, 0x09, &p.correlation_data);
    for &v in &p.subscription_identifiers {
        buf.put_u8(0x0B);
        write_varint(buf, v);
    }
    word(buf, 0x11, p.session_expiry_interval);
    string(buf, 0x12, &p.assigned_client_identifier);
    short(buf, 0x13, p.server_keep_alive);
    string(buf, 0x15, &p.authentication_method);
    binary(buf, 0x16, &p.authentication_data);
    byte(buf, 0x17, p.request_problem_information);
    word(buf, 0x18, p.will_delay_interval);
    byte(buf, 0x19, p.request_response_information);
    string(buf, 0x1A, &p.response_information);
    string(buf, 0x1C, &p.server_reference);
    string(buf, 0x1F, &p.reason_string);
    short(buf, 0x21, p.receive_maximum);
    short(buf, 0x22, p.topic_alias_maximum);
    short(buf, 0x23, p.topic_alias);
    byte(buf, 0x24, p.maximum_qos);
    byte(buf, 0x25, p.retain_available);
    for (k, v) in &p.user_properties {
        buf.put_u8(0x26);
        write_str(buf, k);
        write_str(buf, v);
    }
    word(buf, 0x27, p.maximum_packet_size);
    byte(buf, 0x28, p.wildcard_subscription_available);
    byte(buf, 0x29, p.subscription_identifier_available);
    byte(buf, 0x2A, p.shared_subscription_available);
}

/// Whether a property block is empty.
pub(crate) fn is_empty(p: &Properties) -> bool {
    props_body_len(p) == 0
}
