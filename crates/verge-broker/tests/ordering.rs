//! Ordering across connections: a SUBSCRIBE written to its socket before
//! another client writes a PUBLISH is in force for that PUBLISH, without
//! waiting for the SUBACK (issue 16: the publisher's connection, woken by
//! the same readiness poll, often read and routed its PUBLISH before the
//! subscriber's connection had read its SUBSCRIBE; 29-31 of 50 trials
//! missed with two workers).
//!
//! The clients are blocking sockets on a thread of their own, so their
//! writes happen in program order outside the broker's runtime, and the
//! runtime has two workers as in the node. The broker orders them by when
//! their bytes reached its sockets (see `connection/arrival.rs` and
//! `router/recent.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use verge_mqtt::{Packet, Protocol, QoS};

/// A blocking raw client.
struct Blocking {
    stream: TcpStream,
    protocol: Protocol,
    buf: BytesMut,
}

impl Blocking {
    fn connect(addr: SocketAddr, protocol: Protocol, client_id: &str) -> Blocking {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut c = Blocking {
            stream,
            protocol,
            buf: BytesMut::new(),
        };
        c.send(&Packet::Connect(connect_packet(protocol, client_id, 0)));
        match c.next(WAIT) {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, 0, "{a:?}"),
            other => panic!("expected CONNACK, got {other:?}"),
        }
        c
    }

    fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        verge_mqtt::encode(p, self.protocol, &mut out).expect("encode");
        self.stream.write_all(&out).expect("write");
    }

    /// The next packet within `d`, or `None`.
    fn next(&mut self, d: Duration) -> Option<Packet> {
        let deadline = Instant::now() + d;
        loop {
            if let Some(p) =
                verge_mqtt::decode(&mut self.buf, self.protocol, usize::MAX).expect("decode")
            {
                return Some(p);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("broker closed the connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
    }
}

fn trials(addr: SocketAddr, protocol: Protocol) -> Vec<usize> {
    let mut sub = Blocking::connect(addr, protocol, "order-sub");
    let mut publ = Blocking::connect(addr, protocol, "order-pub");
    let mut missed = Vec::new();
    for i in 0..50usize {
        let topic = format!("order/{i}");
        sub.send(&subscribe_packet(1, &topic, QoS::AtMostOnce));
        publ.send(&publish_packet(&topic, QoS::AtMostOnce, 0, b"m"));
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut got = false;
        while let Some(p) = sub.next(deadline.saturating_duration_since(Instant::now())) {
            if let Packet::Publish(m) = p {
                assert_eq!(m.topic, topic);
                got = true;
                break;
            }
        }
        if !got {
            missed.push(i);
        }
    }
    missed
}

async fn subscribe_before_publish(protocol: Protocol) {
    let b = start().await;
    let addr = b.addr;
    let missed = tokio::task::spawn_blocking(move || trials(addr, protocol))
        .await
        .expect("client thread");
    assert!(
        missed.is_empty(),
        "{} of 50 publishes missed a subscription written just before them: {missed:?}",
        missed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_subscribe_written_before_publish_is_in_force_v5() {
    subscribe_before_publish(Protocol::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_subscribe_written_before_publish_is_in_force_v311() {
    subscribe_before_publish(Protocol::V311).await;
}
