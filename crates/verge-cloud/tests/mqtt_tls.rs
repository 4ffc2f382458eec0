//! The node MQTT endpoint over TLS (`[mqtt.tls]`) through `serve_with` on
//! real sockets: the join names the `mqtts://` endpoint, a node connects
//! with a self-signed certificate as its CA and its QoS 1 message is stored
//! before the PUBACK; a client trusting another CA fails the handshake; bad
//! certificate paths fail the start naming the key.
//!
//! rumqttc is built without TLS here (its TLS feature pulls aws-lc), so the
//! client is the workspace codec over tokio-rustls.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use bytes::{Bytes, BytesMut};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use verge_cloud::{Cloud, CloudConfig};
use verge_mqtt::{Ack, Connect, Packet, Properties, Protocol, Publish, QoS};

const WAIT: Duration = Duration::from_secs(10);

fn connector(ca_pem: &[u8]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.expect("pem")).expect("root");
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: SocketAddr,
    ca_pem: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::from(addr.ip());
    timeout(WAIT, connector(ca_pem).connect(name, tcp))
        .await
        .expect("handshake within the time limit")
}

async fn write<S: AsyncWrite + Unpin>(s: &mut S, p: &Packet) {
    let bytes = verge_mqtt::to_bytes(p, Protocol::V311).expect("encode");
    s.write_all(&bytes).await.expect("write");
}

async fn read<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Packet {
    timeout(WAIT, async {
        loop {
            if let Some(p) = verge_mqtt::decode(buf, Protocol::V311, 1 << 20).expect("decode") {
                return p;
            }
            let n = s.read_buf(buf).await.expect("read");
            assert!(n > 0, "the endpoint closed the connection");
        }
    })
    .await
    .expect("a packet within the time limit")
}

fn tls_config(cfg: &mut CloudConfig, dir: &Path) {
    let files = verge_broker::listener::self_signed(dir).expect("self-signed certificate");
    cfg.mqtt.tls.enabled = true;
    cfg.mqtt.tls.cert = files.cert;
    cfg.mqtt.tls.key = files.key;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_publishes_over_tls_and_an_untrusted_ca_fails_the_handshake() {
    let certs = tempfile::tempdir().expect("tmp");
    let h = common::harness_with(false, |cfg| tls_config(cfg, certs.path()))
        .await
        .expect("harness");
    let ca = std::fs::read(certs.path().join("cert.pem")).expect("cert");

    // The join tells the node the TLS endpoint.
    let (s, v) = h
        .call(Method::POST, "/api/nodes", Some(json!({"name": "edge-t"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let token = v["join_token"].as_str().expect("token").to_owned();
    let (s, v) = h
        .call_as(
            Method::POST,
            "/api/agent/join",
            None,
            Some(json!({"token": token, "hostname": "h"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["mqtt_url"], "mqtts://127.0.0.1:8885");
    let node = v["node_id"].as_str().expect("id").to_owned();
    let secret = v["secret"].as_str().expect("secret").to_owned();

    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let mqtt = TcpListener::bind("127.0.0.1:0").await.expect("bind mqtt");
    let tls = TcpListener::bind("127.0.0.1:0").await.expect("bind tls");
    let tls_addr = tls.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        h.cloud
            .clone()
            .serve_with(http, Some(mqtt), Some(tls), async {
                let _ = stop_rx.await;
            }),
    );

    // Another CA: the handshake fails.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let refused = tls_connect(tls_addr, other.cert.pem().as_bytes()).await;
    let Err(e) = refused else {
        panic!("a certificate from another CA was accepted")
    };
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");

    // The right CA: CONNECT, a QoS 1 PUBLISH, stored before the PUBACK.
    let mut s = tls_connect(tls_addr, &ca).await.expect("tls handshake");
    let mut buf = BytesMut::new();
    write(
        &mut s,
        &Packet::Connect(Connect {
            protocol: Protocol::V311,
            clean_start: true,
            keep_alive: 30,
            client_id: node.clone(),
            username: Some(node.clone()),
            password: Some(Bytes::from(secret.clone())),
            will: None,
            properties: Properties::default(),
        }),
    )
    .await;
    match read(&mut s, &mut buf).await {
        Packet::ConnAck(a) => assert_eq!(a.reason_code, 0, "{a:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    write(
        &mut s,
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: format!("nodes/{node}/up/devices/d1/telemetry"),
            packet_id: 7,
            properties: Properties::default(),
            payload: Bytes::from_static(br#"{"t":19.5}"#),
        }),
    )
    .await;
    match read(&mut s, &mut buf).await {
        Packet::PubAck(Ack {
            packet_id,
            reason_code,
            ..
        }) => assert_eq!((packet_id, reason_code), (7, 0)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let (st, msgs) = h
        .call(Method::GET, &format!("/api/nodes/{node}/messages"), None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(msgs.as_array().map(Vec::len), Some(1), "{msgs}");
    assert_eq!(msgs[0]["topic"], "devices/d1/telemetry");
    assert_eq!(msgs[0]["payload"]["t"], 19.5);
    drop(s);

    let _ = stop_tx.send(());
    timeout(WAIT, server)
        .await
        .expect("stops")
        .expect("task")
        .expect("served");
}

async fn open_err(cfg: &CloudConfig) -> String {
    match Cloud::open(cfg.clone()).await {
        Ok(_) => panic!("the cloud started with bad TLS files"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn bad_certificate_paths_fail_the_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = CloudConfig::default();
    cfg.cloud.data_dir = dir.path().join("data");
    cfg.mqtt.tls.enabled = true;
    let e = open_err(&cfg).await;
    assert!(e.contains("mqtt.tls.cert"), "{e}");

    cfg.mqtt.tls.cert = Some(dir.path().join("missing-cert.pem"));
    cfg.mqtt.tls.key = Some(dir.path().join("missing-key.pem"));
    let text = open_err(&cfg).await;
    assert!(
        text.contains("mqtt.tls.cert") && text.contains("missing-cert.pem"),
        "{text}"
    );

    let files = verge_broker::listener::self_signed(&dir.path().join("tls")).expect("cert");
    cfg.mqtt.tls.cert = files.cert;
    let text = open_err(&cfg).await;
    assert!(
        text.contains("mqtt.tls.key") && text.contains("missing-key.pem"),
        "{text}"
    );
}

#[tokio::test]
async fn a_tls_listener_without_tls_enabled_is_refused() {
    let h = common::harness().await;
    let l = || TcpListener::bind("127.0.0.1:0");
    let (http, mqtt, tls) = (
        l().await.expect("a"),
        l().await.expect("b"),
        l().await.expect("c"),
    );
    let e = h
        .cloud
        .clone()
        .serve_with(http, Some(mqtt), Some(tls), async {})
        .await
        .expect_err("tls is off");
    assert!(e.to_string().contains("mqtt.tls.enabled"), "{e}");
}
