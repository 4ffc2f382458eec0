//! Decoding: bytes from the network into [`Packet`]s. Strict, never panics,
//! never trusts a length before checking it against the bytes present.

use bytes::{Buf, Bytes, BytesMut};

use crate::packet::*;
use crate::props::{Place, decode_props};

/// Why bytes could not be decoded into a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes break the packet format.
    #[error("malformed packet: {0}")]
    MalformedPacket(&'static str),
    /// Well-formed, but against the protocol's rules.
    #[error("protocol error: {0}")]
    ProtocolError(&'static str),
    /// The packet is larger than allowed.
    #[error("packet too large")]
    PacketTooLarge,
    /// CONNECT asked for a protocol level we do not speak.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// CONNECT did not name the MQTT protocol.
    #[error("invalid protocol name")]
    InvalidProtocolName,
    /// A topic name is empty where not allowed or holds wildcards.
    #[error("invalid topic name")]
    TopicNameInvalid,
    /// A string is not well-formed UTF-8 or holds U+0000.
    #[error("invalid utf-8 string")]
    InvalidUtf8,
}

impl DecodeError {
    /// The 5.0 reason code to close the connection with.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::MalformedPacket(_) | DecodeError::InvalidUtf8 => reason::MALFORMED_PACKET,
            DecodeError::ProtocolError(_) => reason::PROTOCOL_ERROR,
            DecodeError::PacketTooLarge => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) | DecodeError::InvalidProtocolName => {
                reason::UNSUPPORTED_PROTOCOL_VERSION
            }
            DecodeError::TopicNameInvalid => reason::TOPIC_NAME_INVALID,
        }
    }
}

/// A bounds-checked cursor over one packet's bytes.
pub(crate) struct Reader {
    buf: Bytes,
}

const SHORT: DecodeError = DecodeError::MalformedPacket("packet shorter than its contents");
/// A variable byte integer "MUST use the minimum number of bytes necessary"
/// (\[MQTT-1.5.5-1\]): a last byte of 0 after a continuation byte breaks that.
const NOT_SHORTEST: DecodeError =
    DecodeError::MalformedPacket("variable byte integer not in its shortest form");

/// The most `decode` reserves ahead for a packet that has not fully arrived:
/// the announced length is untrusted, so it never sizes an allocation.
const RESERVE_AHEAD: usize = 64 * 1024;

impl Reader {
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.is_empty() {
            return Err(SHORT);
        }
        Ok(self.buf.get_u8())
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.len() < 2 {
            return Err(SHORT);
        }
        Ok(self.buf.get_u16())
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.len() < 4 {
            return Err(SHORT);
        }
        Ok(self.buf.get_u32())
    }
    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let b = self.u8()?;
            value |= ((b & 0x7F) as u32) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(NOT_SHORTEST);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedPacket(
            "variable byte integer longer than 4 bytes",
        ))
    }
    pub fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(SHORT);
        }
        Ok(self.buf.split_to(n))
    }
    pub fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        Ok(Reader { buf: self.take(n)? })
    }
    pub fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.binary()?;
        let s = std::str::from_utf8(&b).map_err(|_| DecodeError::InvalidUtf8)?;
        if s.contains('\0') {
            return Err(DecodeError::InvalidUtf8);
        }
        Ok(s.to_owned())
    }
    pub fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }
}

/// Read the fixed header: `(first byte, remaining length, header length)`,
/// `None` if more bytes are needed.
fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut len: usize = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(NOT_SHORTEST);
            }
            return Ok(Some((buf[0], len, 2 + i)));
        }
    }
    Err(DecodeError::MalformedPacket(
        "remaining length longer than 4 bytes",
    ))
}

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
    let mut r = Reader { buf: frame };
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

const V3_CONNACK: [(u8, u8); 6] = [
    (0, reason::SUCCESS),
    (1, reason::UNSUPPORTED_PROTOCOL_VERSION),
    (2, reason::CLIENT_IDENTIFIER_NOT_VALID),
    (3, reason::SERVER_UNAVAILABLE),
    (4, reason::BAD_USERNAME_OR_PASSWORD),
    (5, reason::NOT_AUTHORIZED),
];

/// The 3.1.1 connect return code for a 5.0 reason code.
pub(crate) fn v3_connack_code(code: u8) -> u8 {
    match code {
        reason::SUCCESS => 0,
        reason::UNSUPPORTED_PROTOCOL_VERSION => 1,
        reason::CLIENT_IDENTIFIER_NOT_VALID => 2,
        reason::BAD_USERNAME_OR_PASSWORD => 4,
        reason::NOT_AUTHORIZED | reason::BANNED => 5,
        _ => 3,
    }
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
