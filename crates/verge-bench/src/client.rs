//! The bench's one MQTT client, a thin layer on the `verge_mqtt` codec over
//! tokio TCP: connect, subscribe, send and receive packets one at a time,
//! or split into a [`Reader`] and a [`Writer`] for the load loops, which
//! encode many packets per write and decode every packet a read brought.
//! Every packet the bench (and `verge device simulate`) exchanges with a
//! broker goes through this module.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use verge_mqtt::{
    ConnAck, Connect, Disconnect, Packet, Properties, Protocol, QoS, SubOptions, Subscribe,
    SubscribeFilter, decode, encode,
};

/// Largest packet the bench accepts from a broker.
pub const MAX_PACKET: usize = 64 << 20;

/// Read buffer of a client that receives one packet at a time.
const SMALL_READ: usize = 4096;

/// A connected client: both halves of the socket.
pub struct Client {
    /// Where packets come from.
    reader: Reader,
    /// Where packets go.
    writer: Writer,
}

/// The reading half: bytes read but not yet decoded, and the socket.
pub struct Reader {
    /// The socket's read half.
    half: OwnedReadHalf,
    /// Bytes read but not yet decoded.
    buf: BytesMut,
    /// The protocol spoken.
    protocol: Protocol,
}

/// The writing half: packets queued with [`Writer::queue`] go out in one
/// write on [`Writer::flush`].
pub struct Writer {
    /// The socket's write half.
    half: OwnedWriteHalf,
    /// Encoded packets not yet written.
    buf: BytesMut,
    /// The protocol spoken.
    protocol: Protocol,
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
        let (client, _) = Self::connect_with(addr, source, connect).await?;
        Ok(client)
    }

    /// Open a TCP connection (from `source`, if given), send `connect` and
    /// wait for a successful CONNACK, which is returned with the client
    /// (its properties carry the broker's limits).
    pub async fn connect_with(
        addr: SocketAddr,
        source: Option<SocketAddr>,
        connect: Connect,
    ) -> anyhow::Result<(Client, ConnAck)> {
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
        let protocol = connect.protocol;
        let (rd, wr) = stream.into_split();
        let mut client = Client {
            reader: Reader {
                half: rd,
                buf: BytesMut::with_capacity(SMALL_READ),
                protocol,
            },
            writer: Writer {
                half: wr,
                buf: BytesMut::new(),
                protocol,
            },
        };
        client.send(&Packet::Connect(connect)).await?;
        match client.recv().await.context("waiting for CONNACK")? {
            Packet::ConnAck(ack) if ack.reason_code == 0 => Ok((client, ack)),
            Packet::ConnAck(ack) => bail!(
                "{addr} refused the connection (reason code 0x{:02x})",
                ack.reason_code
            ),
            other => bail!("{addr} answered CONNECT with {}", other.name()),
        }
    }

    /// Send one packet.
    pub async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        self.writer.queue(packet)?;
        self.writer.flush().await.context("writing to the broker")?;
        Ok(())
    }

    /// Read until one packet is complete.
    pub async fn recv(&mut self) -> anyhow::Result<Packet> {
        self.reader.recv().await
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
            other => bail!("expected SUBACK, got {}", other.name()),
        }
    }

    /// The two halves, for a reading and a writing loop.
    pub fn into_split(self) -> (Reader, Writer) {
        (self.reader, self.writer)
    }

    /// The bare socket, for a connection that is only held open.
    pub fn into_stream(self) -> anyhow::Result<TcpStream> {
        self.reader
            .half
            .reunite(self.writer.half)
            .context("joining the socket's halves")
    }
}

impl Reader {
    /// The next complete packet already read, if any (no I/O).
    pub fn next_packet(&mut self) -> anyhow::Result<Option<Packet>> {
        decode(&mut self.buf, self.protocol, MAX_PACKET).context("decoding a packet")
    }

    /// Read once from the socket, first making room for `room` bytes when
    /// less than a quarter of that is free; returns the bytes read (0: the
    /// broker closed the connection). Cancel-safe.
    pub async fn fill(&mut self, room: usize) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < room / 4 {
            self.buf.reserve(room);
        }
        self.half.read_buf(&mut self.buf).await
    }

    /// Read until one packet is complete.
    pub async fn recv(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(p) = self.next_packet()? {
                return Ok(p);
            }
            let n = self
                .fill(SMALL_READ)
                .await
                .context("reading from the broker")?;
            if n == 0 {
                bail!("the broker closed the connection");
            }
        }
    }
}

impl Writer {
    /// Make room for `bytes` more of queued packets.
    pub fn reserve(&mut self, bytes: usize) {
        self.buf.reserve(bytes);
    }

    /// Encode one packet behind the ones already queued (no I/O).
    pub fn queue(&mut self, packet: &Packet) -> anyhow::Result<()> {
        encode(packet, self.protocol, &mut self.buf).context("encoding a packet")
    }

    /// Whether packets wait for [`Writer::flush`].
    pub fn has_queued(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Write every queued packet.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.half.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Send DISCONNECT (after whatever is queued) and close the write
    /// side; errors do not matter here.
    pub async fn disconnect(&mut self) {
        if self
            .queue(&Packet::Disconnect(Disconnect::default()))
            .is_ok()
        {
            let _ = self.flush().await;
        }
        let _ = self.half.shutdown().await;
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

#[cfg(test)]
mod tests {
    use verge_mqtt::Publish;

    use super::*;
    use crate::InProcessBroker;

    fn publish(packet_id: u16, payload: &'static [u8]) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "t/1".into(),
            packet_id,
            properties: Properties::default(),
            payload: Bytes::from_static(payload),
        })
    }

    #[test]
    fn halves_batch_publishes_and_read_their_acks() {
        let broker = InProcessBroker::start().expect("broker");
        let addr = broker.addr;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut sub = Client::connect(addr, None, Protocol::V5, "sub", 0)
                .await
                .expect("sub connects");
            sub.subscribe("t/#", QoS::AtLeastOnce)
                .await
                .expect("subscribes");
            let connect = Connect {
                protocol: Protocol::V5,
                clean_start: true,
                keep_alive: 0,
                client_id: "pub".into(),
                username: None,
                password: None,
                will: None,
                properties: Properties::default(),
            };
            let (client, ack) = Client::connect_with(addr, None, connect)
                .await
                .expect("pub connects");
            assert_eq!(ack.reason_code, 0);
            let (mut rd, mut wr) = client.into_split();
            wr.queue(&publish(1, b"a")).expect("encodes");
            wr.queue(&publish(2, b"b")).expect("encodes");
            assert!(wr.has_queued());
            wr.flush().await.expect("writes");
            assert!(!wr.has_queued());
            for id in [1, 2] {
                match rd.recv().await.expect("ack") {
                    Packet::PubAck(a) => assert_eq!(a.packet_id, id),
                    other => panic!("expected PUBACK, got {}", other.name()),
                }
            }
            for want in [&b"a"[..], b"b"] {
                match sub.recv().await.expect("delivery") {
                    Packet::Publish(p) => assert_eq!(&p.payload[..], want),
                    other => panic!("expected PUBLISH, got {}", other.name()),
                }
            }
            wr.disconnect().await;
            assert!(
                rd.recv().await.is_err(),
                "the broker closes after DISCONNECT"
            );
        });
        broker.stop();
    }
}
