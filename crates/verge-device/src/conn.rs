//! One connection to the node: TCP or TLS, the CONNECT/CONNACK handshake,
//! and packets in and out through the `verge_mqtt` codec (never encoded
//! by hand here).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use verge_mqtt::{Connect, Packet, Properties, Protocol, decode, encode};

use crate::Error;
use crate::config::Resolved;

/// A byte stream to the node (TCP or TLS over TCP).
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A connected, MQTT-established connection.
pub(crate) struct Conn {
    /// The socket.
    stream: Box<dyn Stream>,
    /// Bytes read and not yet decoded.
    rbuf: BytesMut,
    /// Packets encoded and not yet written.
    wbuf: BytesMut,
    /// Largest packet taken from the node.
    max_in: usize,
    /// Largest packet the node takes (CONNACK), if it said.
    pub max_out: Option<usize>,
    /// Keep alive in force (the node may override ours).
    pub keep_alive: Duration,
    /// QoS 1 publishes in flight at most.
    pub max_inflight: usize,
    /// When we last wrote.
    pub last_sent: Instant,
    /// When a PINGREQ went out without its PINGRESP yet.
    pub ping_sent: Option<Instant>,
}

impl Conn {
    /// Open the socket (and TLS) and complete CONNECT/CONNACK within the
    /// connect timeout.
    pub async fn open(cfg: &Resolved) -> Result<Conn, Error> {
        tokio::time::timeout(cfg.connect_timeout, Self::open_inner(cfg))
            .await
            .map_err(|_| Error::Timeout {
                what: "the connection to the node",
            })?
    }

    async fn open_inner(cfg: &Resolved) -> Result<Conn, Error> {
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let tcp = TcpStream::connect((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &cfg.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Error::Tls(format!("handshake with {addr}: {e}")))?,
            ),
        };
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: BytesMut::new(),
            max_in: cfg.max_packet as usize,
            max_out: None,
            keep_alive: Duration::from_secs(cfg.keep_alive.into()),
            max_inflight: cfg.max_inflight.into(),
            last_sent: Instant::now(),
            ping_sent: None,
        };
        let connect = Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive: cfg.keep_alive,
            client_id: cfg.client_id.clone(),
            username: Some(cfg.device.clone()),
            password: Some(Bytes::copy_from_slice(cfg.secret.as_bytes())),
            will: None,
            properties: Properties {
                maximum_packet_size: Some(cfg.max_packet),
                receive_maximum: Some(cfg.max_inflight),
                ..Properties::default()
            },
        };
        conn.queue(&Packet::Connect(connect))?;
        conn.flush().await?;
        let ack = loop {
            if let Some(p) = conn.next_packet()? {
                break p;
            }
            conn.fill().await?;
        };
        let Packet::ConnAck(ack) = ack else {
            return Err(Error::Protocol(format!(
                "the node answered CONNECT with {}",
                ack.name()
            )));
        };
        if ack.reason_code >= 0x80 {
            return Err(Error::from_connack(ack.reason_code));
        }
        let p = &ack.properties;
        if let Some(ka) = p.server_keep_alive {
            conn.keep_alive = Duration::from_secs(ka.into());
        }
        if let Some(rm) = p.receive_maximum {
            conn.max_inflight = conn.max_inflight.min(usize::from(rm.max(1)));
        }
        conn.max_out = p.maximum_packet_size.map(|m| m as usize);
        Ok(conn)
    }

    /// Encode a packet behind the ones queued (no I/O).
    pub fn queue(&mut self, packet: &Packet) -> Result<(), Error> {
        if let Some(max) = self.max_out {
            let len = verge_mqtt::encoded_len(packet, Protocol::V5);
            if len > max {
                return Err(Error::Protocol(format!(
                    "a {} of {len} bytes is more than the node takes ({max})",
                    packet.name()
                )));
            }
        }
        encode(packet, Protocol::V5, &mut self.wbuf)
            .map_err(|e| Error::Protocol(format!("encoding a {}: {e}", packet.name())))
    }

    /// Whether packets wait for [`Conn::flush`].
    pub fn has_queued(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Write the queued packets.
    pub async fn flush(&mut self) -> Result<(), Error> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stream
            .write_all(&self.wbuf)
            .await
            .map_err(|e| Error::io("writing to the node", e))?;
        self.stream
            .flush()
            .await
            .map_err(|e| Error::io("writing to the node", e))?;
        self.wbuf.clear();
        self.last_sent = Instant::now();
        Ok(())
    }

    /// The next complete packet already read (no I/O); a malformed one is
    /// an error (the caller drops the connection).
    pub fn next_packet(&mut self) -> Result<Option<Packet>, Error> {
        decode(&mut self.rbuf, Protocol::V5, self.max_in)
            .map_err(|e| Error::Protocol(format!("a bad packet from the node: {e}")))
    }

    /// Read once; an error when the node closed the connection.
    /// Cancel-safe.
    pub async fn fill(&mut self) -> Result<(), Error> {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(4096);
        }
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(Error::io(
                "reading from the node",
                std::io::ErrorKind::UnexpectedEof.into(),
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(Error::io("reading from the node", e)),
        }
    }

    /// Send DISCONNECT with `reason_code` (after what is queued) and
    /// close the socket, within a second; errors do not matter here.
    pub async fn disconnect(mut self, reason_code: u8) {
        let goodbye = async {
            let packet = Packet::Disconnect(verge_mqtt::Disconnect {
                reason_code,
                properties: Properties::default(),
            });
            if self.queue(&packet).is_ok() {
                let _ = self.flush().await;
            }
            let _ = self.stream.shutdown().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), goodbye).await;
    }
}
