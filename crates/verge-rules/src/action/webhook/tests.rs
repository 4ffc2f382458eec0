//! Unit tests of the webhook action: header checks, status
//! classification, HTTPS against a local server (the URL checks are
//! `verge_net::client::url`'s).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

use super::*;
use crate::config::Delivery;

fn config(url: &str) -> WebhookConfig {
    WebhookConfig {
        url: url.into(),
        headers: BTreeMap::new(),
        timeout: HumanDuration(Duration::from_secs(5)),
        delivery: Delivery::default(),
    }
}

#[test]
fn bad_headers_and_timeout_are_refused() {
    let mut c = config("http://127.0.0.1/");
    c.headers.insert("bad name".into(), "x".into());
    let e = Webhook::new(&c).err().expect("refused").to_string();
    assert!(e.contains("invalid header name `bad name`"), "{e}");

    let mut c = config("http://127.0.0.1/");
    c.headers.insert("x-token".into(), "a\nb".into());
    let e = Webhook::new(&c).err().expect("refused").to_string();
    assert!(e.contains("invalid value for header `x-token`"), "{e}");
    assert!(!e.contains("a\nb"));

    let mut c = config("http://127.0.0.1/");
    c.headers.insert("Content-Length".into(), "3".into());
    let e = Webhook::new(&c).err().expect("refused").to_string();
    assert!(e.contains("set by the webhook itself"), "{e}");

    let mut c = config("http://127.0.0.1/");
    c.headers.insert("X-A".into(), "1".into());
    c.headers.insert("x-a".into(), "2".into());
    let e = Webhook::new(&c).err().expect("refused").to_string();
    assert!(e.contains("given twice"), "{e}");

    let mut c = config("http://127.0.0.1/");
    c.timeout = HumanDuration(Duration::ZERO);
    let e = Webhook::new(&c).err().expect("refused").to_string();
    assert!(e.contains("timeout"), "{e}");
}

#[test]
fn statuses_are_classified() {
    assert!(classify(StatusCode::OK, "").is_ok());
    assert!(classify(StatusCode::NO_CONTENT, "").is_ok());
    for s in [500, 502, 503, 504, 429, 408] {
        let e = classify(StatusCode::from_u16(s).expect("status"), "").expect_err("error");
        assert!(e.retry, "{s}");
    }
    for s in [400, 401, 403, 404, 410, 301, 302] {
        let e = classify(StatusCode::from_u16(s).expect("status"), "").expect_err("error");
        assert!(!e.retry, "{s}");
    }
    let e = classify(StatusCode::BAD_REQUEST, "missing field `x`").expect_err("error");
    assert_eq!(e.message, "http 400 bad request: missing field `x`");
    let e = classify(StatusCode::MOVED_PERMANENTLY, "").expect_err("error");
    assert!(e.message.contains("redirects are not followed"));
    assert_eq!(snippet(b" line\r\nnext\x00 "), "line  next");
}

/// A one-connection HTTPS server with a self-signed certificate for
/// `localhost` and 127.0.0.1; answers 200 and returns the request head.
async fn tls_server() -> (u16, RootCertStore, tokio::task::JoinHandle<String>) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let cert: CertificateDer<'static> = key.cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("tls accept");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tls.read(&mut buf).await.expect("read");
            assert!(n > 0, "client closed early");
            seen.extend_from_slice(&buf[..n]);
        }
        tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .expect("write");
        tls.flush().await.expect("flush");
        String::from_utf8_lossy(&seen).into_owned()
    });
    (port, roots, task)
}

fn output() -> Output {
    Output {
        rule: "r1".into(),
        row: verge_sql::Row::default(),
        json: Bytes::from_static(b"{\"t\":1}"),
        topic: "t".into(),
        time_ms: 0,
        hops: 1,
    }
}

#[tokio::test]
async fn https_with_a_trusted_self_signed_certificate() {
    let (port, roots, server) = tls_server().await;
    let hook = Webhook::build(
        &config(&format!("https://localhost:{port}/in")),
        Some(roots),
    )
    .expect("webhook");
    hook.deliver(&output()).await.expect("delivered");
    let head = server.await.expect("server");
    assert!(head.starts_with("POST /in HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("host: localhost:{port}\r\n")),
        "{head}"
    );
}

#[tokio::test]
async fn https_to_an_ip_literal() {
    let (port, roots, server) = tls_server().await;
    let hook = Webhook::build(&config(&format!("https://127.0.0.1:{port}/")), Some(roots))
        .expect("webhook");
    hook.deliver(&output()).await.expect("delivered");
    server.await.expect("server");
}

#[tokio::test]
async fn https_with_an_untrusted_certificate_is_permanent() {
    let (port, _roots, _server) = tls_server().await;
    let hook = Webhook::new(&config(&format!("https://localhost:{port}/"))).expect("webhook");
    let e = hook.deliver(&output()).await.expect_err("untrusted");
    assert!(!e.retry, "{e}");
    assert!(e.message.contains("tls: invalid peer certificate"), "{e}");
    assert!(e.message.starts_with("POST https://localhost:"), "{e}");
}
