//! The edge node's CoAP gateway (RFC 7252, Observe RFC 7641, block-wise
//! transfer RFC 7959) over the broker's in-process API.
//!
//! `POST`/`PUT coap://node/ps/{topic…}` publishes the body to `{topic…}`
//! (Confirmable as QoS 1, Non-confirmable as QoS 0; Content-Format becomes
//! the MQTT content type); `GET` answers the topic's retained message, and
//! with `Observe: 0` subscribes and notifies each new message. Devices give
//! their credentials as query parameters (`?u=USER&p=PASSWORD`, optional
//! `c=CLIENT_ID`); the broker's [`verge_broker::Authenticator`] checks them
//! and its ACL decides, so a device has the same rights over CoAP as over
//! MQTT. Over DTLS (`coaps://`, feature `dtls`, module `dtls`) the device
//! is the PSK identity or client certificate name its handshake proved,
//! and the query string carries no credentials; both listeners share one
//! exchange implementation (`gateway::Transport`).
//!
//! Design: one task owns the socket and all exchange state (message-id
//! de-duplication, observers, Confirmable retransmissions, block-wise
//! buffers); requests that need the broker or a password check run as
//! tasks of their own (bounded) and hand their answer back over a channel,
//! so a slow argon2 check never stalls other devices. Each observer's broker
//! subscription is forwarded by a small task into one bounded queue.
//!
//! The codec ([`codec`], [`option`]) is written here, does no I/O and is
//! strict about the message format. Rejected alternative: the `coap-lite`
//! crate (MIT/Apache-2.0, builds on 1.95 in ~2 s): passively maintained,
//! brings three crates (two versions of `coap-message`), keeps options in
//! a map of linked lists and accepts some malformed messages (payload marker
//! without payload); the CoAP header is small enough to own and fuzz.
//!
//! The gateway is the default `gateway` feature; without it the crate is
//! the codec alone (no broker, no async runtime), as the fuzz target
//! (`fuzz/fuzz_targets/fuzz_coap.rs`) builds it.

pub mod codec;
#[cfg(feature = "gateway")]
pub mod config;
#[cfg(feature = "dtls")]
mod dtls;
#[cfg(feature = "gateway")]
pub mod error;
#[cfg(feature = "gateway")]
mod exchange;
#[cfg(feature = "gateway")]
mod gateway;
#[cfg(feature = "gateway")]
mod handler;
#[cfg(feature = "gateway")]
mod observe;
pub mod option;
#[cfg(feature = "gateway")]
mod request;
#[cfg(feature = "gateway")]
pub mod stats;

pub use codec::{CoapMessage, Code, DecodeError, MsgType};
#[cfg(feature = "gateway")]
pub use config::{CoapConfig, DtlsConfig, NotifyType, PskEntry};
#[cfg(feature = "dtls")]
pub use dtls::Channel as DatagramChannel;
#[cfg(feature = "gateway")]
pub use error::CoapError;
#[cfg(feature = "gateway")]
pub use gateway::{Gateway, RunningGateway, bind, bind_dtls};
#[cfg(feature = "gateway")]
pub use stats::{Stats, StatsSnapshot};
