//! The simulated nodes' HTTP: a few HTTP/2 cleartext connections (prior
//! knowledge) to one cloud replica, shared by every node, so 10,000 held
//! long polls cost the cloud a few dozen sockets instead of 10,000.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Streams a server allows on one connection by default (hyper's server
/// setting, which axum does not change); a connection is given fewer.
pub const STREAMS_PER_CONN: usize = 150;

/// HTTP/2 connections to one replica, handed out round robin.
#[derive(Clone)]
pub struct Pool {
    /// Where the replica listens.
    addr: SocketAddr,
    /// The connections' request handles.
    conns: Arc<Vec<SendRequest<Full<Bytes>>>>,
    /// The next connection to use.
    next: Arc<AtomicUsize>,
}

/// An answer: status and body.
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON of type `T`, or an error naming the status and body
    /// when the status is not `want`.
    pub fn json<T: serde::de::DeserializeOwned>(&self, want: StatusCode) -> anyhow::Result<T> {
        if self.status != want {
            bail!(
                "HTTP {} (expected {want}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            );
        }
        serde_json::from_slice(&self.body).context("decoding the JSON answer")
    }
}

impl Pool {
    /// Open `n` connections to `addr`.
    pub async fn connect(addr: SocketAddr, n: usize) -> anyhow::Result<Pool> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            stream.set_nodelay(true).context("setting TCP_NODELAY")?;
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            conns.push(send);
        }
        Ok(Pool {
            addr,
            conns: Arc::new(conns),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// How many connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Send a request on connection `slot` (modulo the pool size), or the
    /// next one round robin when `None`; `bearer` is the `Authorization`
    /// credential without its `Bearer ` prefix.
    pub async fn request(
        &self,
        slot: Option<usize>,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        let i = slot.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed)) % self.len();
        let mut send = self.conns[i].clone();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.addr))
            .header("authorization", format!("Bearer {bearer}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("building a request")?;
        send.ready().await.context("HTTP/2 connection closed")?;
        let resp = send
            .send_request(req)
            .await
            .with_context(|| format!("{path} on {}", self.addr))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer of {path}"))?
            .to_bytes();
        Ok(Answer { status, body })
    }
}
