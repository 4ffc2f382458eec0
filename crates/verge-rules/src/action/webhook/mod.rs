//! The `webhook` action: POSTs each row's JSON to an `http://` or `https://`
//! URL over one kept-alive connection.
//!
//! One attempt per row; the runner in front of every action retries what
//! this module classifies as transient (no connection, timeout, DNS failure,
//! HTTP 5xx, 429, 408) and gives up at once on the rest (other 4xx, 3xx,
//! invalid responses, TLS certificate errors).
//!
//! Design notes:
//! - The client is hyper's low-level HTTP/1 connection (`client::conn::http1`)
//!   with one cached connection per webhook, not a pooled client: the action
//!   task sends one row at a time, so a pool would never hold more than one
//!   connection, and hyper is in the build anyway for the node's HTTP API.
//!   A cached connection the server has closed is replaced; if a request on
//!   a *reused* connection fails before any answer arrives (the server
//!   closed it while idle, a race every keep-alive client has), it is sent
//!   once more on a fresh connection within the same time limit.
//! - TLS roots are Mozilla's, compiled in (`webpki-roots`) rather than read
//!   from the operating system (`rustls-native-certs`): one small crate
//!   beside `rustls-pki-types` and no platform crates, no file I/O, and the
//!   same behaviour on minimal edge images that ship no CA bundle. The cost
//!   is that new roots need a new build and private CAs are not trusted
//!   (a `ca_file` setting would add them).
//! - Error messages show the URL without its query string, which often
//!   carries a token; configured header values never appear in messages.

use std::error::Error as StdError;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use verge_broker::duration::HumanDuration;

use super::{Action, ActionError, BoxFuture, Output};
use crate::config::WebhookConfig;
use crate::error::RuleError;

/// The header naming the rule that produced the row.
const RULE_HEADER: HeaderName = HeaderName::from_static("x-verge-rule");

/// Headers the webhook sets itself (framing, connection management and
/// `x-verge-rule`); configuring them is refused.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "x-verge-rule",
];

/// A response body longer than this is not read to its end; the connection
/// is closed instead of kept.
const MAX_DRAIN: usize = 64 * 1024;

/// How much of an error response's body goes into the error message.
const MAX_SNIPPET: usize = 200;

/// The connection type: requests carry the row's JSON in one piece.
type Sender = SendRequest<Full<Bytes>>;

/// POSTs rows to one URL (`type = "webhook"`).
pub struct Webhook {
    /// Where to connect.
    host: Host,
    /// TCP port (80 or 443 unless the URL names one).
    port: u16,
    /// TLS connector and the name to verify, for `https://`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Request target in origin form (`/path?query`).
    target: Uri,
    /// `host`, `content-type`, `user-agent` and the configured headers.
    headers: HeaderMap,
    /// Limit for one delivery, connect included.
    timeout: HumanDuration,
    /// `scheme://authority/path` (no query), for error messages.
    label: String,
    /// The kept-alive connection, if any. Taken out while a request uses it,
    /// so the lock is never held across an await.
    idle: Mutex<Option<Sender>>,
}

/// The URL's host.
enum Host {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A name to resolve at each connect.
    Name(String),
}

impl Webhook {
    /// Check the settings and prepare the request; refuses bad URLs,
    /// schemes other than `http`/`https`, bad header names or values and a
    /// zero timeout. Connects only when the first row arrives.
    pub fn new(c: &WebhookConfig) -> Result<Webhook, RuleError> {
        Webhook::build(c, None)
    }

    /// As [`Webhook::new`], trusting `roots` instead of the built-in
    /// Mozilla roots for `https://` (tests use a self-signed certificate).
    fn build(c: &WebhookConfig, roots: Option<RootCertStore>) -> Result<Webhook, RuleError> {
        Webhook::try_build(c, roots).map_err(|m| RuleError::action("webhook", m))
    }

    fn try_build(c: &WebhookConfig, roots: Option<RootCertStore>) -> Result<Webhook, String> {
        let url = Url::parse(&c.url)?;
        if c.timeout.get().is_zero() {
            return Err("timeout must be more than 0s".into());
        }

        let tls = if url.https {
            let config = match roots {
                Some(roots) => tls_config(roots)?,
                None => mozilla_tls_config()?,
            };
            let name = match url.host {
                Host::Ip(ip) => ServerName::from(ip),
                Host::Name(ref n) => ServerName::try_from(n.clone())
                    .map_err(|_| format!("invalid host name `{n}` in url `{}`", c.url))?,
            };
            Some((TlsConnector::from(config), name))
        } else {
            None
        };

        let mut headers = HeaderMap::new();
        let host = HeaderValue::from_str(&url.authority)
            .map_err(|_| format!("invalid host in url `{}`", c.url))?;
        headers.insert(HOST, host);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("verge/", env!("CARGO_PKG_VERSION"))),
        );
        let mut configured: Vec<HeaderName> = Vec::new();
        for (key, value) in &c.headers {
            let name = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| format!("invalid header name `{key}`"))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(format!(
                    "header `{key}` is set by the webhook itself and cannot be configured"
                ));
            }
            if configured.contains(&name) {
                return Err(format!("header `{key}` is given twice"));
            }
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                format!("invalid value for header `{key}`: use printable ascii, spaces and tabs")
            })?;
            value.set_sensitive(true);
            // Configured `content-type` and `user-agent` replace the defaults.
            headers.insert(name.clone(), value);
            configured.push(name);
        }

        Ok(Webhook {
            host: url.host,
            port: url.port,
            tls,
            target: url.target,
            headers,
            timeout: c.timeout,
            label: url.label,
            idle: Mutex::new(None),
        })
    }

    /// One delivery: response head within the time limit, then the body
    /// drained within what is left of it.
    async fn attempt(&self, out: &Output) -> Result<(), ActionError> {
        let deadline = Instant::now() + self.timeout.get();
        let (sender, response) = timeout_at(deadline, self.exchange(out))
            .await
            .map_err(|_| self.timed_out())??;
        let status = response.status();
        let drained = timeout_at(deadline, drain(response.into_body(), !status.is_success())).await;
        let snippet = match drained {
            Ok(Drained::Complete(snippet)) => {
                if !sender.is_closed() {
                    *self.idle.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
                }
                snippet
            }
            // The status is known, so the row's fate is too; only the
            // connection is not worth keeping.
            Ok(Drained::Partial(snippet)) => snippet,
            Err(_) => String::new(),
        };
        classify(status, &snippet)
    }

    /// Send the request on the kept connection or a new one; returns the
    /// connection with the response head.
    async fn exchange(&self, out: &Output) -> Result<(Sender, Response<Incoming>), ActionError> {
        if let Some(mut sender) = self.take_idle()
            && sender.ready().await.is_ok()
        {
            match sender.send_request(self.request(out)?).await {
                Ok(response) => return Ok((sender, response)),
                Err(e) if closed_before_answer(&e) => {
                    tracing::debug!(
                        url = %self.label,
                        error = %e,
                        "kept webhook connection was closed; reconnecting"
                    );
                }
                Err(e) => return Err(hyper_error(&e)),
            }
        }
        let mut sender = self.connect().await?;
        sender.ready().await.map_err(|e| hyper_error(&e))?;
        let response = sender
            .send_request(self.request(out)?)
            .await
            .map_err(|e| hyper_error(&e))?;
        Ok((sender, response))
    }

    /// The cached connection, unless it is known to be closed.
    fn take_idle(&self) -> Option<Sender> {
        let sender = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        (!sender.is_closed()).then_some(sender)
    }

    fn request(&self, out: &Output) -> Result<Request<Full<Bytes>>, ActionError> {
        let mut request = Request::new(Full::new(out.json.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.target.clone();
        let mut headers = self.headers.clone();
        let rule = HeaderValue::from_str(&out.rule).map_err(|_| {
            ActionError::permanent(format!("rule id `{}` cannot be sent as a header", out.rule))
        })?;
        headers.insert(RULE_HEADER, rule);
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// Resolve, connect (each address in turn), TLS handshake, and start the
    /// connection's task.
    async fn connect(&self) -> Result<Sender, ActionError> {
        let addrs: Vec<SocketAddr> = match &self.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, self.port)],
            Host::Name(name) => tokio::net::lookup_host((name.as_str(), self.port))
                .await
                .map_err(|e| {
                    ActionError::transient(format!("dns lookup of `{name}` failed: {}", lower(&e)))
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
            (None, Some(e)) => return Err(ActionError::transient(io_message(&e))),
            (None, None) => {
                return Err(ActionError::transient(format!(
                    "dns lookup of `{}` found no addresses",
                    self.host_name()
                )));
            }
        };
        // Rows are small and sent whole; do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        tracing::debug!(url = %self.label, "webhook connecting");
        match &self.tls {
            None => start(TokioIo::new(tcp)).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| io_error(&e))?;
                start(TokioIo::new(tls)).await
            }
        }
    }

    fn host_name(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        }
    }

    fn timed_out(&self) -> ActionError {
        ActionError::transient(format!("timed out after {}", self.timeout))
    }
}

impl Action for Webhook {
    fn deliver<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async move {
            self.attempt(out).await.map_err(|e| ActionError {
                retry: e.retry,
                message: format!("POST {}: {}", self.label, e.message),
            })
        })
    }
}

/// HTTP/1 handshake over an open stream; the connection runs in its own
/// task, which ends when the server closes it or the sender is dropped.
async fn start<T>(io: T) -> Result<Sender, ActionError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io).await.map_err(|e| hyper_error(&e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "webhook connection ended");
        }
    });
    Ok(sender)
}

/// How far a response body was read.
enum Drained {
    /// To its end: the connection can carry the next request.
    Complete(String),
    /// Not to its end (too long, or the connection failed).
    Partial(String),
}

/// Read the response body to its end (up to [`MAX_DRAIN`]), keeping the
/// start of it when `keep` (for the error message).
async fn drain(mut body: Incoming, keep: bool) -> Drained {
    let mut seen = 0usize;
    let mut start = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Drained::Partial(snippet(&start));
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if keep && start.len() < MAX_SNIPPET {
                let room = MAX_SNIPPET - start.len();
                start.extend_from_slice(&data[..data.len().min(room)]);
            }
            if seen > MAX_DRAIN {
                return Drained::Partial(snippet(&start));
            }
        }
    }
    Drained::Complete(snippet(&start))
}

/// The start of a response body as one line of text.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    line.trim().to_owned()
}

/// 2xx is delivered; 5xx, 429 and 408 may pass; the rest will not.
fn classify(status: StatusCode, body: &str) -> Result<(), ActionError> {
    if status.is_success() {
        return Ok(());
    }
    let mut message = format!("http {}", status.as_u16());
    if let Some(reason) = status.canonical_reason() {
        message.push(' ');
        message.push_str(&reason.to_ascii_lowercase());
    }
    if status.is_redirection() {
        message.push_str(" (redirects are not followed)");
    }
    if !body.is_empty() {
        message.push_str(": ");
        message.push_str(body);
    }
    let transient = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT;
    Err(if transient {
        ActionError::transient(message)
    } else {
        ActionError::permanent(message)
    })
}

/// Whether a request on a reused connection failed because the server had
/// closed that connection, before any answer came.
fn closed_before_answer(e: &hyper::Error) -> bool {
    if e.is_canceled() || e.is_incomplete_message() {
        return true;
    }
    find_io(e).is_some_and(|io| {
        matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        )
    })
}

fn hyper_error(e: &hyper::Error) -> ActionError {
    if e.is_parse() {
        return ActionError::permanent(format!("invalid response: {}", lower(e)));
    }
    if let Some(io) = find_io(e) {
        return io_error(io);
    }
    if e.is_incomplete_message() {
        return ActionError::transient("connection closed before the response was complete");
    }
    if e.is_canceled() {
        return ActionError::transient("connection closed before the request was sent");
    }
    ActionError::transient(lower(e))
}

/// An I/O error: TLS failures (bad certificate, handshake refused) are
/// permanent, network failures transient.
fn io_error(e: &io::Error) -> ActionError {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return ActionError::permanent(format!("tls: {tls}"));
    }
    ActionError::transient(io_message(e))
}

fn io_message(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::BrokenPipe => "connection closed while sending".into(),
        K::UnexpectedEof => "connection closed unexpectedly".into(),
        K::TimedOut => "connect timed out".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        _ => lower(e),
    }
}

/// The first `io::Error` in an error's source chain.
fn find_io<'e>(e: &'e (dyn StdError + 'static)) -> Option<&'e io::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        next = err.source();
    }
    None
}

/// An error's text with a lower-case first letter.
fn lower(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Client TLS settings with the `ring` provider, speaking HTTP/1.1 only.
fn tls_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The settings every `https://` webhook shares (Mozilla's roots; one
/// session-resumption cache).
fn mozilla_tls_config() -> Result<Arc<ClientConfig>, String> {
    static SHARED: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = SHARED.get() {
        return Ok(config.clone());
    }
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = tls_config(roots)?;
    Ok(SHARED.get_or_init(|| config).clone())
}

/// A checked webhook URL.
struct Url {
    https: bool,
    host: Host,
    port: u16,
    /// `host[:port]` as written, for the `host` header.
    authority: String,
    target: Uri,
    label: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!("url `{url}` must start with http:// or https://"));
        };
        let https = if scheme.eq_ignore_ascii_case("http") {
            false
        } else if scheme.eq_ignore_ascii_case("https") {
            true
        } else {
            return Err(format!(
                "unsupported scheme `{scheme}` in url `{url}`: use http or https"
            ));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if authority.contains('@') {
            // Not echoed: the user info may hold a password.
            return Err(
                "user info in the url is not supported; put credentials in `headers`".into(),
            );
        }
        if authority.is_empty() || authority.starts_with(':') {
            return Err(format!("url `{url}` has no host"));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid url `{url}`: {}", lower(&e)))?;
        let auth = uri
            .authority()
            .ok_or_else(|| format!("url `{url}` has no host"))?;
        let raw_host = auth.host();
        let host = if let Some(inner) = raw_host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        {
            Host::Ip(
                inner
                    .parse()
                    .map_err(|_| format!("invalid ipv6 address `{inner}` in url `{url}`"))?,
            )
        } else if let Ok(ip) = raw_host.parse::<IpAddr>() {
            Host::Ip(ip)
        } else if raw_host.is_empty() {
            return Err(format!("url `{url}` has no host"));
        } else {
            Host::Name(raw_host.to_ascii_lowercase())
        };
        // `host:` (empty port) means the default, as in RFC 3986.
        let port = match auth.as_str()[raw_host.len()..].strip_prefix(':') {
            Some(p) if !p.is_empty() => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("invalid port `{p}` in url `{url}`")),
                Ok(p) => p,
            },
            _ if https => 443,
            _ => 80,
        };
        let path = match uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.clone(),
            Some(pq) if pq.as_str().starts_with('?') => format!("/{}", pq.as_str())
                .parse()
                .map_err(|_| format!("invalid path in url `{url}`"))?,
            _ => hyper::http::uri::PathAndQuery::from_static("/"),
        };
        let label = format!(
            "{}://{}{}",
            if https { "https" } else { "http" },
            auth.as_str(),
            path.path()
        );
        Ok(Url {
            https,
            host,
            port,
            authority: auth.as_str().to_owned(),
            target: Uri::from(path),
            label,
        })
    }
}

#[cfg(test)]
mod tests;
