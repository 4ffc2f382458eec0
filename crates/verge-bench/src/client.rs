//! A minimal MQTT client for the benchmarks, on the `verge_mqtt` codec over
//! tokio TCP: connect, subscribe, then hand the socket to the caller's own
//! read/write loops.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use verge_mqtt::{
    Connect, Packet, Properties, Protocol, QoS, SubOptions, Subscribe, SubscribeFilter, decode,
    encode,
};

/// Largest packet the bench accepts from a broker.
pub const MAX_PACKET: usize = 64 << 20;

/// A connected client: the socket and whatever was read past the last
/// packet handed out.
pub struct Client {
    /// The socket (TCP_NODELAY set).
    pub stream: TcpStream,
    /// Bytes read but not yet decoded.
    pub rbuf: BytesMut,
    /// The protocol spoken.
    pub protocol: Protocol,
}

impl Client {
    /// Open a TCP connection (from `source`, if given) and complete the
    /// CONNECT/CONNACK handshake with a clean session.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<SocketAddr>,
        protocol: Protocol,
        client_id: &str,
        keep_alive: u16,
    ) -> anyhow::Result<Client> {
        Self::connect_as(addr, source, protocol, client_id, keep_alive, None).await
    }

    /// [`Client::connect`] with a username and password.
    pub async fn connect_as(
        addr: SocketAddr,
        source: Option<SocketAddr>,
        protocol: Protocol,
        client_id: &str,
        keep_alive: u16,
        credentials: Option<(&str, &[u8])>,
    ) -> anyhow::Result<Client> {
        let stream = match source {
            None => TcpStream::connect(addr).await,
            Some(src) => {
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }?;
                socket.bind(src)?;
                socket.connect(addr).await
            }
        }
        .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let mut client = Client {
            stream,
            rbuf: BytesMut::with_capacity(4096),
            protocol,
        };
        let connect = Connect {
            protocol,
            clean_start: true,
            keep_alive,
            client_id: client_id.to_owned(),
            username: credentials.map(|(u, _)| u.to_owned()),
            password: credentials.map(|(_, p)| Bytes::copy_from_slice(p)),
            will: None,
            properties: Properties::default(),
        };
        client.send(&Packet::Connect(connect)).await?;
        match client.recv().await.context("waiting for CONNACK")? {
            Packet::ConnAck(ack) if ack.reason_code == 0 => Ok(client),
            Packet::ConnAck(ack) => bail!(
                "{addr} refused the connection (reason code 0x{:02x})",
                ack.reason_code
            ),
            other => bail!("{addr} answered CONNECT with {}", name(&other)),
        }
    }

    /// Send one packet.
    pub async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut buf = BytesMut::new();
        encode(packet, self.protocol, &mut buf).context("encoding a packet")?;
        self.stream
            .write_all(&buf)
            .await
            .context("writing to the broker")?;
        Ok(())
    }

    /// Read until one packet is complete.
    pub async fn recv(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) =
                decode(&mut self.rbuf, self.protocol, MAX_PACKET).context("decoding a packet")?
            {
                return Ok(p);
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .context("reading from the broker")?;
            if n == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// Subscribe to one filter and wait for the SUBACK; a PUBLISH arriving
    /// before it is an error (the bench subscribes before publishing).
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let sub = Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: filter.to_owned(),
                options: SubOptions {
                    qos,
                    ..SubOptions::default()
                },
            }],
            properties: Properties::default(),
        };
        self.send(&Packet::Subscribe(sub)).await?;
        match self.recv().await.context("waiting for SUBACK")? {
            Packet::SubAck(ack) => match ack.reason_codes.first() {
                Some(&code) if code < 0x80 => Ok(()),
                code => bail!("subscription to `{filter}` refused (reason code {code:?})"),
            },
            other => bail!("expected SUBACK, got {}", name(&other)),
        }
    }
}

/// Connect `n` clients named `{name}-{i}` at once; returned in index order.
pub async fn connect_many(
    addr: SocketAddr,
    protocol: Protocol,
    name: &str,
    n: usize,
) -> anyhow::Result<Vec<Client>> {
    let mut connecting = tokio::task::JoinSet::new();
    for i in 0..n {
        let id = format!("{name}-{i}");
        connecting.spawn(async move { (i, Client::connect(addr, None, protocol, &id, 0).await) });
    }
    let mut clients = Vec::with_capacity(n);
    while let Some(r) = connecting.join_next().await {
        let (i, c) = r.context("connecting task")?;
        clients.push((i, c.with_context(|| format!("connecting {name}-{i}"))?));
    }
    clients.sort_by_key(|(i, _)| *i);
    Ok(clients.into_iter().map(|(_, c)| c).collect())
}

/// A packet's name, for error messages.
pub fn name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        Packet::Auth(_) => "AUTH",
    }
}
