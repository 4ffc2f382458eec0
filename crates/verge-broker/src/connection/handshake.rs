//! The CONNECT handshake: read CONNECT, identify the client, authenticate
//! it, attach it to its session in the router and answer CONNACK.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use verge_mqtt::{
    ConnAck, Connect, DecodeError, Packet, Properties, Protocol, decode, encode, reason,
};

use super::{Conn, Ctx, Io, is_reserved};
use crate::auth::AuthFailure;
use crate::config::{CLIENT_ID_SEPARATOR, ClientIdBinding};
use crate::mailbox::Mailbox;
use crate::message::Message;
use crate::router::{ConnectReply, ConnectReq, Event, Kill};
use crate::stats::{add, inc};

/// Read CONNECT and run the handshake; answers refusals itself.
pub(super) async fn handshake<S>(
    io: &mut Io<S>,
    peer: SocketAddr,
    cert_name: Option<String>,
    transport: &'static str,
    ctx: &Arc<Ctx>,
) -> Option<Conn>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let max = ctx.cfg.max_packet_size as usize;
    let connect =
        match tokio::time::timeout(ctx.cfg.connect_timeout.get(), io.read_connect(max)).await {
            Err(_) => {
                debug!(%peer, "no CONNECT within the connect timeout; closing");
                return None;
            }
            Ok(Err(e)) => {
                inc(&ctx.stats.connects_refused);
                info!(%peer, error = %e, "bad CONNECT; closing");
                if let ConnectError::Decode(d) = &e {
                    // Answer with a CONNACK where the version is known.
                    if !matches!(d, DecodeError::UnsupportedProtocolVersion(_)) {
                        return None;
                    }
                    let ack = ConnAck {
                        reason_code: reason::UNSUPPORTED_PROTOCOL_VERSION,
                        ..ConnAck::default()
                    };
                    let _ = io.send(&Packet::ConnAck(ack), Protocol::V311).await;
                }
                return None;
            }
            Ok(Ok(c)) => c,
        };
    let protocol = connect.protocol;
    match accept(io, connect, peer, cert_name, transport, ctx).await {
        Ok(conn) => Some(conn),
        Err(code) => {
            inc(&ctx.stats.connects_refused);
            let ack = ConnAck {
                reason_code: code,
                ..ConnAck::default()
            };
            let _ = io.send(&Packet::ConnAck(ack), protocol).await;
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Decode(DecodeError),
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("connection closed before CONNECT")]
    Closed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    async fn read_connect(&mut self, max: usize) -> Result<Connect, ConnectError> {
        loop {
            // Anything but CONNECT first (an HTTP request, TLS on the plain
            // port) is refused at once rather than at the connect timeout.
            if self.rbuf.first().is_some_and(|b| b >> 4 != 1) {
                return Err(ConnectError::NotConnect);
            }
            match decode(&mut self.rbuf, Protocol::V5, max) {
                Ok(Some(Packet::Connect(c))) => return Ok(c),
                Ok(Some(_)) => return Err(ConnectError::NotConnect),
                Ok(None) => {}
                Err(e) => return Err(ConnectError::Decode(e)),
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|_| ConnectError::Closed)?;
            if n == 0 {
                return Err(ConnectError::Closed);
            }
            add(&self.stats.bytes_received, n as u64);
        }
    }
}

/// The CONNECT handshake: identify, authenticate, attach to a session and
/// answer CONNACK. Returns the refusing reason code on failure.
async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Io<S>,
    connect: Connect,
    peer: SocketAddr,
    cert_name: Option<String>,
    transport: &'static str,
    ctx: &Arc<Ctx>,
) -> Result<Conn, u8> {
    let cfg = &ctx.cfg;
    let protocol = connect.protocol;
    let v5 = protocol == Protocol::V5;
    if v5 && connect.properties.authentication_method.is_some() {
        info!(%peer, "enhanced authentication requested but none is configured");
        return Err(reason::BAD_AUTHENTICATION_METHOD);
    }
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_start {
            return Err(reason::CLIENT_IDENTIFIER_NOT_VALID);
        }
        // Unique within the process by the counter, across restarts by the
        // start time; put under the identity once it is known.
        let id = format!(
            "verge-{:x}-{:x}-{:x}",
            std::process::id(),
            nanos(),
            ctx.next_conn
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id.clone()
    };
    // Checked by the router, which knows whether this is a takeover (which
    // adds no connection).
    let at_limit = ctx
        .stats
        .clients_connected
        .load(std::sync::atomic::Ordering::Relaxed) as usize
        >= cfg.max_connections;
    let identity = if connect.password.is_none() {
        // no password: nothing expensive to check, stay on this thread
        ctx.auth.authenticate(
            &client_id,
            connect.username.as_deref(),
            None,
            cert_name.as_deref(),
        )
    } else {
        // argon2 is deliberately slow: run it on the blocking pool, a few at
        // a time; a client that waits longer than the connect timeout for a
        // turn is told the server is busy.
        let slot = ctx.password_checks.clone().acquire_owned();
        let Ok(Ok(slot)) = tokio::time::timeout(cfg.connect_timeout.get(), slot).await else {
            info!(%peer, client_id, "too many password checks in progress");
            return Err(reason::SERVER_BUSY);
        };
        let auth = ctx.auth.clone();
        let cid = client_id.clone();
        let user = connect.username.clone();
        let pass = connect.password.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            auth.authenticate(&cid, user.as_deref(), pass.as_deref(), cert_name.as_deref())
        })
        .await
        .map_err(|_| reason::UNSPECIFIED_ERROR)?
    };
    let mut identity = match identity {
        Ok(i) => i,
        Err(f) => {
            info!(%peer, client_id, username = ?connect.username, "authentication failed: {f:?}");
            return Err(match f {
                AuthFailure::BadCredentials => reason::BAD_USERNAME_OR_PASSWORD,
                AuthFailure::NotAuthorized => reason::NOT_AUTHORIZED,
            });
        }
    };
    // An assigned client id goes where the binding wants an authenticated
    // identity's ids: under its username, or the username itself.
    if let (Some(id), Some(user)) = (&mut assigned, identity.username.clone()) {
        match cfg.client_id_binding {
            ClientIdBinding::Prefix => *id = format!("{user}{CLIENT_ID_SEPARATOR}{id}"),
            ClientIdBinding::Exact => *id = user.to_string(),
            ClientIdBinding::Off => {}
        }
        identity.client_id = Arc::from(id.as_str());
    }
    if !ctx.auth.client_id_allowed(&identity, cfg.client_id_binding) {
        inc(&ctx.stats.refused_client_ids);
        info!(%peer, client_id, username = ?identity.username, binding = ?cfg.client_id_binding, "client id not bound to the identity; refusing");
        return Err(reason::CLIENT_IDENTIFIER_NOT_VALID);
    }
    let max_expiry = cfg.max_session_expiry.get().as_secs().min(u32::MAX as u64) as u32;
    let expiry_secs = if v5 {
        connect
            .properties
            .session_expiry_interval
            .unwrap_or(0)
            .min(max_expiry)
    } else if connect.clean_start {
        0
    } else {
        max_expiry
    };
    let mut keep_alive = connect.keep_alive;
    let mut server_keep_alive = None;
    if cfg.max_keep_alive > 0 && (keep_alive == 0 || keep_alive > cfg.max_keep_alive) && v5 {
        keep_alive = cfg.max_keep_alive;
        server_keep_alive = Some(keep_alive);
    }
    let will = connect.will.as_ref().and_then(|w| {
        // `$SYS/...` belongs to the broker, for wills as for publishes.
        if is_reserved(&w.topic) || !ctx.auth.may_publish(&identity, &w.topic) {
            inc(&ctx.stats.denied_publish);
            return None;
        }
        let now = Instant::now();
        let mut props = w.properties.clone();
        let delay = Duration::from_secs(props.will_delay_interval.take().unwrap_or(0) as u64);
        // The Message Expiry Interval stays in the properties: the router
        // starts it when the will is published.
        let expires = None;
        Some((
            Arc::new(Message {
                topic: Arc::from(w.topic.as_str()),
                payload: w.payload.clone(),
                qos: w.qos,
                retain: w.retain,
                properties: props,
                origin: identity.client_id.clone(),
                received: now,
                expires,
                hops: 0,
            }),
            delay,
        ))
    });

    let conn_id = ctx
        .next_conn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mailbox = Arc::new(Mailbox::new(cfg.max_queued_messages));
    let kill = Arc::new(Kill::default());
    let (reply_tx, reply_rx) = oneshot::channel();
    let req = ConnectReq {
        client_id: identity.client_id.clone(),
        username: identity.username.clone(),
        transport,
        clean_start: connect.clean_start,
        expiry: Duration::from_secs(expiry_secs as u64),
        at_limit,
        conn_id,
        mailbox: mailbox.clone(),
        kill: kill.clone(),
        reply: reply_tx,
    };
    if ctx.router.send(Event::Connect(req)).await.is_err() {
        return Err(reason::SERVER_UNAVAILABLE);
    }
    let reply: ConnectReply = match reply_rx.await {
        Ok(r) => r,
        Err(_) => return Err(reason::SERVER_UNAVAILABLE),
    };
    if let Some(code) = reply.refused {
        if code == reason::CLIENT_IDENTIFIER_NOT_VALID {
            warn!(%peer, client_id = %identity.client_id, username = ?identity.username, "the session of this client id belongs to another identity; refusing");
            return Err(code);
        }
        let limit = if code == reason::QUOTA_EXCEEDED {
            "max_persistent_sessions"
        } else {
            "max_connections"
        };
        warn!(%peer, client_id = %identity.client_id, limit, "limit reached; refusing");
        return Err(code);
    }
    let mut props = Properties::default();
    if v5 {
        props.receive_maximum = Some(cfg.max_inflight.max(1));
        props.maximum_packet_size = Some(cfg.max_packet_size);
        props.topic_alias_maximum = Some(cfg.max_topic_alias);
        props.retain_available = Some(1);
        props.wildcard_subscription_available = Some(1);
        props.subscription_identifier_available = Some(1);
        props.shared_subscription_available = Some(1);
        props.assigned_client_identifier = assigned;
        props.server_keep_alive = server_keep_alive;
        if connect.properties.session_expiry_interval.unwrap_or(0) > expiry_secs {
            props.session_expiry_interval = Some(expiry_secs);
        }
    }
    let ack = ConnAck {
        session_present: reply.session_present,
        reason_code: reason::SUCCESS,
        properties: props,
    };
    let _ = encode(&Packet::ConnAck(ack), protocol, &mut io.wbuf);
    debug!(%peer, client_id = %identity.client_id, ?protocol, session_present = reply.session_present, "connected");
    let client_window = if v5 {
        connect.properties.receive_maximum.unwrap_or(u16::MAX)
    } else {
        u16::MAX
    };
    let mut conn = Conn {
        ctx: ctx.clone(),
        peer,
        protocol,
        key: reply.key,
        conn_id,
        identity,
        kill,
        mailbox,
        keep_alive: Duration::from_millis(keep_alive as u64 * 1500),
        expiry: Duration::from_secs(expiry_secs as u64),
        expiry_was_zero: expiry_secs == 0,
        will,
        window: client_window.min(cfg.max_inflight.max(1)) as usize,
        client_max_packet: if v5 {
            connect.properties.maximum_packet_size.unwrap_or(u32::MAX) as usize
        } else {
            usize::MAX
        },
        client_alias_max: if v5 {
            connect.properties.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        },
        aliases_in: HashMap::new(),
        aliases_out: HashMap::new(),
        inflight: VecDeque::new(),
        inflight_ids: HashSet::new(),
        next_id: 1,
        pending: VecDeque::new(),
        qos2_in: HashSet::new(),
        acks: VecDeque::new(),
        wake: None,
        batch: Vec::new(),
        arrived: super::Arrival::now(),
        rate_tokens: cfg.max_publish_rate as f64,
        rate_at: Instant::now(),
    };
    conn.resume(io, reply.carry);
    Ok(conn)
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
