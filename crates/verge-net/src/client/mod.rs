//! The HTTP/1 client of the webhook action and the cloud agent: one
//! [`Endpoint`] per origin, `http://` and `https://`, a deadline over the
//! whole exchange, a cap on the body read, and (when asked) one kept-alive
//! connection.
//!
//! Design notes:
//! - hyper's low-level connection (`client::conn::http1`), not a pooled
//!   client: each user sends one request at a time to one origin, so a pool
//!   would never hold more than one connection, and hyper is in the build
//!   anyway for the HTTP APIs. A client crate (reqwest, ureq) would add
//!   more to the build than these two files.
//! - A kept connection the server has closed is replaced; if a request on
//!   a *reused* connection fails before any answer arrives (the server
//!   closed it while idle, a race every keep-alive client has), it is sent
//!   once more on a fresh connection within the same deadline.
//! - The caller builds the request (method, target, headers); the client
//!   moves bytes and says what went wrong ([`ClientError`]), and the caller
//!   words and classifies it for its own users.

mod error;
mod url;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;

pub use error::{ClientError, io_message, lower};
pub use url::{Host, InvalidUrl, Url};

/// The connection type: requests carry their body in one piece.
type Sender = SendRequest<Full<Bytes>>;

/// An answer: the status and as much of the body as was read.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// The body, or its start when it did not end well.
    pub body: Bytes,
    /// How reading the body ended.
    pub end: BodyEnd,
}

/// How reading a response body ended.
#[derive(Debug)]
pub enum BodyEnd {
    /// Read to its end.
    Complete,
    /// Longer than the cap; the rest was not read.
    TooLong,
    /// The connection failed while reading.
    Failed(hyper::Error),
    /// The deadline passed while reading (`body` is empty).
    TimedOut,
}

/// One origin (`scheme://host:port`) requests are sent to.
pub struct Endpoint {
    /// The checked URL.
    url: Url,
    /// TLS connector and the name to verify, for `https://`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Keep the connection for the next request.
    keep_alive: bool,
    /// The kept-alive connection, if any. Taken out while a request uses it,
    /// so the lock is never held across an await.
    idle: Mutex<Option<Sender>>,
}

impl Endpoint {
    /// An endpoint for `url`; `tls` is used for `https://` only (see
    /// `verge_net::tls::http_client_config`). One connection per request
    /// unless [`Endpoint::keep_alive`] is set.
    pub fn new(url: Url, tls: Arc<ClientConfig>) -> Result<Endpoint, InvalidUrl> {
        let tls = if url.https {
            let name = match &url.host {
                Host::Ip(ip) => ServerName::from(*ip),
                Host::Name(n) => ServerName::try_from(n.clone()).map_err(|_| {
                    InvalidUrl(format!("invalid host name `{n}` in url `{}`", url.label))
                })?,
            };
            Some((TlsConnector::from(tls), name))
        } else {
            None
        };
        Ok(Endpoint {
            url,
            tls,
            keep_alive: false,
            idle: Mutex::new(None),
        })
    }

    /// Keep a connection open between requests.
    pub fn keep_alive(mut self, keep: bool) -> Endpoint {
        self.keep_alive = keep;
        self
    }

    /// The URL requests go to.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Send the request `make` builds (twice when a reused connection
    /// turns out closed), the response head before `deadline`, then the
    /// body up to `max_body` bytes in what is left of it.
    pub async fn send(
        &self,
        make: impl Fn() -> Request<Full<Bytes>>,
        deadline: Instant,
        max_body: usize,
    ) -> Result<Reply, ClientError> {
        let (sender, response) = timeout_at(deadline, self.exchange(&make))
            .await
            .map_err(|_| ClientError::TimedOut)??;
        let status = response.status();
        let (body, end) = timeout_at(deadline, read(response.into_body(), max_body))
            .await
            .unwrap_or((Bytes::new(), BodyEnd::TimedOut));
        if self.keep_alive && matches!(end, BodyEnd::Complete) && !sender.is_closed() {
            *self.idle.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
        }
        Ok(Reply { status, body, end })
    }

    /// Send the request on the kept connection or a new one; returns the
    /// connection with the response head.
    async fn exchange(
        &self,
        make: &impl Fn() -> Request<Full<Bytes>>,
    ) -> Result<(Sender, Response<Incoming>), ClientError> {
        if let Some(mut sender) = self.take_idle()
            && sender.ready().await.is_ok()
        {
            match sender.send_request(make()).await {
                Ok(response) => return Ok((sender, response)),
                Err(e) if error::closed_before_answer(&e) => {
                    tracing::debug!(
                        url = %self.url.label,
                        error = %e,
                        "kept connection was closed; reconnecting"
                    );
                }
                Err(e) => return Err(ClientError::Http(e)),
            }
        }
        let mut sender = self.connect().await?;
        sender.ready().await.map_err(ClientError::Http)?;
        let response = sender
            .send_request(make())
            .await
            .map_err(ClientError::Http)?;
        Ok((sender, response))
    }

    /// The kept connection, unless it is known to be closed.
    fn take_idle(&self) -> Option<Sender> {
        let sender = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        (!sender.is_closed()).then_some(sender)
    }

    /// Resolve, connect (each address in turn), TLS handshake, and start the
    /// connection's task.
    async fn connect(&self) -> Result<Sender, ClientError> {
        let port = self.url.port;
        let addrs: Vec<SocketAddr> = match &self.url.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Host::Name(name) => tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|error| ClientError::Resolve {
                    host: name.clone(),
                    error,
                })?
                .collect(),
        };
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(tcp), _) => tcp,
            (None, Some(e)) => return Err(ClientError::Connect(e)),
            (None, None) => {
                return Err(ClientError::NoAddress {
                    host: self.url.host.to_string(),
                });
            }
        };
        // Requests are small and sent whole; do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        tracing::debug!(url = %self.url.label, "connecting");
        match &self.tls {
            None => self.start(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(ClientError::Tls)?;
                self.start(TokioIo::new(tls)).await
            }
        }
    }

    /// HTTP/1 handshake over an open stream; the connection runs in its own
    /// task, which ends when the server closes it or the sender is dropped.
    async fn start<T>(&self, io: T) -> Result<Sender, ClientError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, connection) = http1::handshake(io).await.map_err(ClientError::Http)?;
        let url = self.url.label.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%url, error = %e, "http connection ended");
            }
        });
        Ok(sender)
    }
}

/// Read a response body to its end, or up to `max` bytes.
async fn read(mut body: Incoming, max: usize) -> (Bytes, BodyEnd) {
    let mut first: Option<Bytes> = None;
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Err(e) => return (joined(first, buf), BodyEnd::Failed(e)),
        };
        let seen = first.as_ref().map_or(0, Bytes::len) + buf.len();
        if seen + data.len() > max {
            let mut all = joined(first, buf).to_vec();
            all.extend_from_slice(&data[..max - seen]);
            return (Bytes::from(all), BodyEnd::TooLong);
        }
        // A body in one frame is kept as it is, without a copy.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            None => buf.extend_from_slice(&data),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
        }
    }
    (joined(first, buf), BodyEnd::Complete)
}

fn joined(first: Option<Bytes>, buf: Vec<u8>) -> Bytes {
    first.unwrap_or_else(|| Bytes::from(buf))
}
