//! Why bytes could not be decoded or a packet could not be encoded.

use crate::packet::reason;

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

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string or binary field is longer than 65,535 bytes.
    #[error("field longer than 65535 bytes")]
    FieldTooLong,
    /// The packet is larger than MQTT's 268,435,455-byte limit.
    #[error("packet larger than the mqtt limit")]
    PacketTooLarge,
    /// A subscription identifier is above 268,435,455, the largest variable
    /// byte integer.
    #[error("subscription identifier larger than 268435455")]
    ValueTooLarge,
    /// The packet type does not exist in the protocol version (AUTH in 3.1.1).
    #[error("packet type not in this protocol version")]
    NotInProtocol,
}
