//! Encoding: [`Packet`]s into bytes for the network, for either protocol
//! version, with one reservation per packet.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::EncodeError;
use crate::packet::*;
use crate::props::{check_props, is_empty, props_len, write_props};
use crate::wire::{
    MAX_VARINT, bin_len, str_len, v3_connack_code, varint_len, write_bin, write_str, write_varint,
};

/// Largest remaining length of a packet.
const MAX_REMAINING: usize = MAX_VARINT as usize;

fn reason_tail_len(code: u8, p: &Properties, v5: bool) -> usize {
    // The reason-code-only form is legal, but several clients (rumqttc)
    // cannot read it, so a reason code is always followed by a property
    // length.
    if !v5 || (code == reason::SUCCESS && is_empty(p)) {
        0
    } else {
        1 + props_len(p)
    }
}

fn v5_props_len(p: &Properties, v5: bool) -> usize {
    if v5 { props_len(p) } else { 0 }
}

/// Remaining length of a packet (everything after the fixed header).
fn remaining_len(packet: &Packet, protocol: Protocol) -> usize {
    let v5 = protocol == Protocol::V5;
    match packet {
        Packet::Connect(c) => {
            let cv5 = c.protocol == Protocol::V5;
            let mut n = 6 + 1 + 1 + 2 + v5_props_len(&c.properties, cv5) + str_len(&c.client_id);
            if let Some(w) = &c.will {
                n += v5_props_len(&w.properties, cv5) + str_len(&w.topic) + bin_len(&w.payload);
            }
            n += c.username.as_deref().map_or(0, str_len);
            n += c.password.as_deref().map_or(0, bin_len);
            n
        }
        Packet::ConnAck(a) => 2 + v5_props_len(&a.properties, v5),
        Packet::Publish(p) => {
            str_len(&p.topic)
                + if p.qos == QoS::AtMostOnce { 0 } else { 2 }
                + v5_props_len(&p.properties, v5)
                + p.payload.len()
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            2 + reason_tail_len(a.reason_code, &a.properties, v5)
        }
        Packet::Subscribe(s) => {
            2 + v5_props_len(&s.properties, v5)
                + s.filters
                    .iter()
                    .map(|f| str_len(&f.filter) + 1)
                    .sum::<usize>()
        }
        Packet::SubAck(s) => 2 + v5_props_len(&s.properties, v5) + s.reason_codes.len(),
        Packet::Unsubscribe(u) => {
            2 + v5_props_len(&u.properties, v5)
                + u.filters.iter().map(|f| str_len(f)).sum::<usize>()
        }
        Packet::UnsubAck(u) => {
            if v5 {
                2 + props_len(&u.properties) + u.reason_codes.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => reason_tail_len(d.reason_code, &d.properties, v5),
        Packet::Auth(a) => reason_tail_len(a.reason_code, &a.properties, v5),
    }
}

/// Total encoded size of `packet` (fixed header included).
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let r = remaining_len(packet, protocol);
    1 + varint_len(r.min(u32::MAX as usize) as u32) + r
}

/// Refuse what would not encode faithfully: a string or binary field over
/// 65,535 bytes (its length prefix would wrap) or, in 5.0, a property value
/// out of range. Runs before anything is written, so `buf` stays as it was.
fn check_fields(packet: &Packet, v5: bool) -> Result<(), EncodeError> {
    let props = |p: &Properties, v5: bool| if v5 { check_props(p) } else { Ok(()) };
    match packet {
        Packet::Connect(c) => {
            let cv5 = c.protocol == Protocol::V5;
            props(&c.properties, cv5)?;
            if let Some(w) = &c.will {
                props(&w.properties, cv5)?;
            }
        }
        Packet::ConnAck(a) => props(&a.properties, v5)?,
        Packet::Publish(p) => props(&p.properties, v5)?,
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            props(&a.properties, v5)?
        }
        Packet::Subscribe(s) => props(&s.properties, v5)?,
        Packet::SubAck(s) => props(&s.properties, v5)?,
        Packet::Unsubscribe(u) => props(&u.properties, v5)?,
        Packet::UnsubAck(u) => props(&u.properties, v5)?,
        Packet::Disconnect(d) => props(&d.properties, v5)?,
        Packet::Auth(a) => props(&a.properties, v5)?,
        Packet::PingReq | Packet::PingResp => {}
    }
    let long = |s: &[u8]| s.len() > u16::MAX as usize;
    let bad = match packet {
        Packet::Connect(c) => {
            long(c.client_id.as_bytes())
                || c.username.as_deref().is_some_and(|u| long(u.as_bytes()))
                || c.password.as_deref().is_some_and(long)
                || c.will
                    .as_ref()
                    .is_some_and(|w| long(w.topic.as_bytes()) || long(&w.payload))
        }
        Packet::Publish(p) => long(p.topic.as_bytes()),
        Packet::Subscribe(s) => s.filters.iter().any(|f| long(f.filter.as_bytes())),
        Packet::Unsubscribe(u) => u.filters.iter().any(|f| long(f.as_bytes())),
        _ => false,
    };
    if bad {
        Err(EncodeError::FieldTooLong)
    } else {
        Ok(())
    }
}

/// Append the encoding of `packet` for `protocol` to `buf`.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let v5 = protocol == Protocol::V5;
    if !v5 && matches!(packet, Packet::Auth(_)) {
        return Err(EncodeError::NotInProtocol);
    }
    check_fields(packet, v5)?;
    let remaining = remaining_len(packet, protocol);
    if remaining > MAX_REMAINING {
        return Err(EncodeError::PacketTooLarge);
    }
    buf.reserve(1 + varint_len(remaining as u32) + remaining);
    let first = match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => 0x30 | (p.dup as u8) << 3 | (p.qos as u8) << 1 | p.retain as u8,
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    };
    buf.put_u8(first);
    write_varint(buf, remaining as u32);
    match packet {
        Packet::Connect(c) => connect(buf, c),
        Packet::ConnAck(a) => {
            buf.put_u8(a.session_present as u8);
            buf.put_u8(if v5 {
                a.reason_code
            } else {
                v3_connack_code(a.reason_code)
            });
            if v5 {
                write_props(buf, &a.properties);
            }
        }
        Packet::Publish(p) => {
            write_str(buf, &p.topic);
            if p.qos != QoS::AtMostOnce {
                buf.put_u16(p.packet_id);
            }
            if v5 {
                write_props(buf, &p.properties);
            }
            buf.put_slice(&p.payload);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            buf.put_u16(a.packet_id);
            reason_tail(buf, a.reason_code, &a.properties, v5);
        }
        Packet::Subscribe(s) => {
            buf.put_u16(s.packet_id);
            if v5 {
                write_props(buf, &s.properties);
            }
            for f in &s.filters {
                write_str(buf, &f.filter);
                let o = &f.options;
                let mut b = o.qos as u8;
                if v5 {
                    b |= (o.no_local as u8) << 2
                        | (o.retain_as_published as u8) << 3
                        | (o.retain_handling & 3) << 4;
                }
                buf.put_u8(b);
            }
        }
        Packet::SubAck(s) => {
            buf.put_u16(s.packet_id);
            if v5 {
                write_props(buf, &s.properties);
                buf.put_slice(&s.reason_codes);
            } else {
                for &c in &s.reason_codes {
                    buf.put_u8(if c >= 0x80 { 0x80 } else { c });
                }
            }
        }
        Packet::Unsubscribe(u) => {
            buf.put_u16(u.packet_id);
            if v5 {
                write_props(buf, &u.properties);
            }
            for f in &u.filters {
                write_str(buf, f);
            }
        }
        Packet::UnsubAck(u) => {
            buf.put_u16(u.packet_id);
            if v5 {
                write_props(buf, &u.properties);
                buf.put_slice(&u.reason_codes);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => reason_tail(buf, d.reason_code, &d.properties, v5),
        Packet::Auth(a) => reason_tail(buf, a.reason_code, &a.properties, v5),
    }
    Ok(())
}

fn reason_tail(buf: &mut BytesMut, code: u8, p: &Properties, v5: bool) {
    if reason_tail_len(code, p, v5) > 0 {
        buf.put_u8(code);
        write_props(buf, p);
    }
}

fn connect(buf: &mut BytesMut, c: &Connect) {
    let v5 = c.protocol == Protocol::V5;
    write_str(buf, "MQTT");
    buf.put_u8(c.protocol.level());
    let mut f = (c.clean_start as u8) << 1;
    if let Some(w) = &c.will {
        f |= 0x04 | (w.qos as u8) << 3 | (w.retain as u8) << 5;
    }
    if c.password.is_some() {
        f |= 0x40;
    }
    if c.username.is_some() {
        f |= 0x80;
    }
    buf.put_u8(f);
    buf.put_u16(c.keep_alive);
    if v5 {
        write_props(buf, &c.properties);
    }
    write_str(buf, &c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            write_props(buf, &w.properties);
        }
        write_str(buf, &w.topic);
        write_bin(buf, &w.payload);
    }
    if let Some(u) = &c.username {
        write_str(buf, u);
    }
    if let Some(p) = &c.password {
        write_bin(buf, p);
    }
}

/// Convenience: encode into a fresh buffer.
pub fn to_bytes(packet: &Packet, protocol: Protocol) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::with_capacity(encoded_len(packet, protocol));
    encode(packet, protocol, &mut buf)?;
    Ok(buf.freeze())
}
