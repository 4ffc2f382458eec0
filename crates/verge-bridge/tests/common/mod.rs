//! What the bridge's integration tests share: brokers, queues, a bridge
//! config and a device speaking MQTT 5 over TCP.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use verge_bridge::{BridgeConfig, Forward};
use verge_broker::duration::HumanDuration;
use verge_broker::{BoundListener, Broker, BrokerConfig, Transport};
use verge_mqtt::QoS;
use verge_queue::{Queue, QueueConfig};

pub const WAIT: Duration = Duration::from_secs(60);

/// A broker without listeners (the node's) or on `port` (the cloud's).
pub async fn broker(port: Option<u16>, anonymous: bool) -> (Broker, Option<SocketAddr>) {
    let cfg = BrokerConfig {
        allow_anonymous: anonymous,
        ..BrokerConfig::default()
    };
    let auth = Broker::authenticator(&cfg).expect("auth");
    let mut broker = Broker::start(cfg, auth);
    let mut addr = None;
    if let Some(port) = port {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let l = BoundListener {
            listener,
            transport: Transport::Tcp,
        };
        addr = Some(l.local_addr().expect("addr"));
        broker.serve(l);
    }
    (broker, addr)
}

/// A port that was free a moment ago.
pub async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn bridge_config(port: u16) -> BridgeConfig {
    BridgeConfig {
        enabled: true,
        url: format!("mqtt://127.0.0.1:{port}"),
        reconnect_min: HumanDuration(Duration::from_millis(50)),
        reconnect_max: HumanDuration(Duration::from_millis(200)),
        connect_timeout: HumanDuration(Duration::from_secs(2)),
        forwards: vec![
            Forward {
                filter: "devices/#".into(),
                lane: "telemetry".into(),
            },
            Forward {
                filter: "alarms/#".into(),
                lane: "alarms".into(),
            },
        ],
        ..BridgeConfig::default()
    }
}

pub fn open_queue(dir: &std::path::Path) -> Queue {
    let (q, _) = Queue::open(QueueConfig {
        dir: dir.to_path_buf(),
        ..QueueConfig::default()
    })
    .expect("queue");
    q
}

pub async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A device speaking MQTT 5 to the node's broker over TCP, packets encoded
/// with `verge_mqtt`.
pub struct Device {
    pub stream: tokio::net::TcpStream,
    pub buf: bytes::BytesMut,
}

impl Device {
    pub async fn connect(addr: SocketAddr, id: &str) -> Device {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("tcp");
        let mut d = Device {
            stream,
            buf: bytes::BytesMut::new(),
        };
        d.send(&verge_mqtt::Packet::Connect(verge_mqtt::Connect {
            protocol: verge_mqtt::Protocol::V5,
            clean_start: true,
            keep_alive: 0,
            client_id: id.to_owned(),
            username: None,
            password: None,
            will: None,
            properties: verge_mqtt::Properties::default(),
        }))
        .await;
        match d.recv().await {
            verge_mqtt::Packet::ConnAck(a) => assert_eq!(a.reason_code, 0, "{a:?}"),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        d
    }

    pub async fn send(&mut self, p: &verge_mqtt::Packet) {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        verge_mqtt::encode(p, verge_mqtt::Protocol::V5, &mut out).expect("encode");
        self.stream.write_all(&out).await.expect("write");
    }

    pub async fn recv(&mut self) -> verge_mqtt::Packet {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(p) = verge_mqtt::decode(&mut self.buf, verge_mqtt::Protocol::V5, usize::MAX)
                .expect("decode")
            {
                return p;
            }
            let n = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("nothing from the broker")
                .expect("read");
            assert!(n > 0, "the broker closed the connection");
        }
    }

    /// Publish at QoS 1 and return the PUBACK's reason code.
    pub async fn publish_acked(&mut self, topic: &str, packet_id: u16, payload: &[u8]) -> u8 {
        self.send(&verge_mqtt::Packet::Publish(verge_mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.to_owned(),
            packet_id,
            properties: verge_mqtt::Properties::default(),
            payload: bytes::Bytes::copy_from_slice(payload),
        }))
        .await;
        match self.recv().await {
            verge_mqtt::Packet::PubAck(a) => {
                assert_eq!(a.packet_id, packet_id);
                a.reason_code
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}
