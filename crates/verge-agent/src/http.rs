//! A tiny HTTP/1 JSON client for the cloud API: `http://` and `https://`
//! URLs, one connection per request, a time limit over the whole exchange
//! and an optional `Authorization: Bearer` header. Used by the agent and by
//! `verge ctl`.
//!
//! Design notes:
//! - hyper's low-level connection (`client::conn::http1`) as in the rules'
//!   webhook action, not a pooled client: the agent sends a long poll and a
//!   heartbeat every few seconds, so a pool would save next to nothing and
//!   would keep idle sockets to the cloud open.
//! - TLS with rustls (ring provider). The server is verified against
//!   Mozilla's root certificates, or only against the CA file set with
//!   [`set_ca_file`]. That setting is process-wide rather than a `Client`
//!   value threaded through every call: a process talks to one cloud, and
//!   the agent and `verge ctl` keep calling [`request`] as they did.
//! - Bodies are read up to [`MAX_BODY`]: a desired state carries function
//!   modules (each at most 16 MiB, base64 encoded).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// Largest response body read.
pub const MAX_BODY: usize = 256 << 20;

/// Why a request did not get an answer, or got an error answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not an `http(s)://host[:port][/path]` URL.
    #[error("invalid url `{0}`")]
    InvalidUrl(String),
    /// The CA file cannot be used.
    #[error("{0}")]
    Tls(String),
    /// Anything before the answer failed (DNS, connect, send, read).
    #[error("{0}")]
    Transport(String),
    /// No complete answer within the time limit.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer was not 2xx; `code`/`message` come from the cloud's
    /// `{"error": {"code", "message"}}` body when it has one.
    #[error("{status} {code}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The error code (`unauthorized`, `not_found`, …), or `http_error`
        /// when the body is not a cloud error.
        code: String,
        /// The error message, or the start of the body.
        message: String,
    },
    /// A 2xx answer whose body is not the JSON expected.
    #[error("invalid answer: {0}")]
    InvalidBody(String),
}

impl HttpError {
    /// The HTTP status, for a [`HttpError::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The process-wide TLS settings: the CA file (if any) and the client
/// config built from it; `None` until first needed or set.
static TLS: RwLock<Option<TlsSettings>> = RwLock::new(None);

#[derive(Clone)]
struct TlsSettings {
    /// The CA file the server is verified against; `None` = Mozilla's
    /// roots.
    ca_file: Option<PathBuf>,
    /// The client config made from it.
    config: Arc<ClientConfig>,
}

/// Verify `https://` servers against the PEM certificates in `path` only
/// (`None`: Mozilla's root certificates, the default), for every later
/// request of this process. The file is read now; an unreadable file or
/// one without a certificate is an error and changes nothing.
pub fn set_ca_file(path: Option<&Path>) -> Result<(), HttpError> {
    let settings = tls_settings(path)?;
    let mut slot = TLS.write().unwrap_or_else(|p| p.into_inner());
    *slot = Some(settings);
    Ok(())
}

/// The CA file set with [`set_ca_file`], if any.
pub fn ca_file() -> Option<PathBuf> {
    TLS.read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|t| t.ca_file.clone())
}

fn tls_settings(path: Option<&Path>) -> Result<TlsSettings, HttpError> {
    let mut roots = RootCertStore::empty();
    match path {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| {
                HttpError::Tls(format!("ca file {}: {e}", path.display()))
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(&e))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad(&e))?;
            if certs.is_empty() {
                return Err(bad(&"holds no certificate"));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(&e))?;
            }
        }
        None => roots.roots = webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(format!("tls setup failed: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsSettings {
        ca_file: path.map(Path::to_path_buf),
        config: Arc::new(config),
    })
}

/// The current TLS settings, made with Mozilla's roots on first use.
fn current_tls() -> Result<TlsSettings, HttpError> {
    if let Some(t) = TLS.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return Ok(t.clone());
    }
    let mut slot = TLS.write().unwrap_or_else(|p| p.into_inner());
    match slot.as_ref() {
        Some(t) => Ok(t.clone()),
        None => {
            let t = tls_settings(None)?;
            *slot = Some(t.clone());
            Ok(t)
        }
    }
}

/// Send one request and read the whole answer within `timeout`. `bearer`
/// is the token without the `Bearer ` prefix; `body` is sent as JSON.
/// Returns the status and the body whatever the status is; see
/// [`check`] to turn a non-2xx answer into an error.
pub async fn request(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, Bytes), HttpError> {
    let target = Target::parse(url)?;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| HttpError::Transport(format!("invalid method `{method}`")))?;
    let payload = match body {
        Some(v) => Bytes::from(
            serde_json::to_vec(v).map_err(|e| HttpError::Transport(format!("body: {e}")))?,
        ),
        None => Bytes::new(),
    };
    let mut req = Request::new(Full::new(payload));
    *req.method_mut() = method;
    *req.uri_mut() = target
        .path
        .parse()
        .map_err(|_| HttpError::InvalidUrl(url.to_owned()))?;
    let headers = req.headers_mut();
    headers.insert(
        HOST,
        HeaderValue::from_str(&target.authority)
            .map_err(|_| HttpError::InvalidUrl(url.to_owned()))?,
    );
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("verge/", env!("CARGO_PKG_VERSION"))),
    );
    if body.is_some() {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(token) = bearer {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| HttpError::Transport("the bearer token is not printable ascii".into()))?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    tokio::time::timeout(timeout, exchange(&target, req))
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

/// `Ok(body)` for a 2xx answer, else the error the answer describes
/// (Display: `<status> <code>: <message>`).
pub fn check(status: u16, body: Bytes) -> Result<Bytes, HttpError> {
    if (200..300).contains(&status) {
        return Ok(body);
    }
    Err(status_error(status, &body))
}

/// The error a non-2xx answer describes: the cloud's `{"error": {"code",
/// "message"}}` when the body is one, else `http_error` and the start of
/// the body.
pub fn status_error(status: u16, body: &[u8]) -> HttpError {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Wrapper>(body) {
        Ok(w) => HttpError::Status {
            status,
            code: w.error.code,
            message: w.error.message,
        },
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
            let text: String = text
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            HttpError::Status {
                status,
                code: "http_error".into(),
                message: if text.trim().is_empty() {
                    "no details".into()
                } else {
                    text.trim().to_owned()
                },
            }
        }
    }
}

/// A request whose 2xx answer is JSON of type `T`; `None` for 204 (or
/// any empty 2xx body).
pub async fn json<T: DeserializeOwned>(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Option<T>, HttpError> {
    let (status, bytes) = request(method, url, bearer, body, timeout).await?;
    let bytes = check(status, bytes)?;
    if status == 204 || bytes.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| HttpError::InvalidBody(e.to_string()))
}

async fn exchange(target: &Target, req: Request<Full<Bytes>>) -> Result<(u16, Bytes), HttpError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| {
            HttpError::Transport(format!(
                "cannot connect to {}: {}",
                target.authority,
                lower(&e.to_string())
            ))
        })?;
    let _ = tcp.set_nodelay(true);
    if !target.tls {
        return send(tcp, req).await;
    }
    let tls = current_tls()?;
    let name = match target.host.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => ServerName::try_from(target.host.clone()).map_err(|_| {
            HttpError::InvalidUrl(format!("{}: not a valid server name", target.host))
        })?,
    };
    let stream = TlsConnector::from(tls.config)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let trusted = match &tls.ca_file {
                Some(p) => format!("the CA file {}", p.display()),
                None => "Mozilla's root certificates (no CA file set)".to_owned(),
            };
            HttpError::Transport(format!(
                "tls handshake with {} failed: {} (verifying against {trusted})",
                target.authority,
                lower(&e.to_string())
            ))
        })?;
    send(stream, req).await
}

/// One HTTP/1 exchange over an open connection.
async fn send<S>(io: S, req: Request<Full<Bytes>>) -> Result<(u16, Bytes), HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| transport(&e))?;
    let conn = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "cloud connection ended");
        }
    });
    let result = async {
        let response = sender.send_request(req).await.map_err(|e| transport(&e))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                HttpError::Transport(format!("reading the answer: {}", lower(&e.to_string())))
            })?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    // One request per connection: close it now rather than when the server
    // does.
    drop(sender);
    conn.abort();
    result
}

fn transport(e: &hyper::Error) -> HttpError {
    let mut message = e.to_string();
    if let Some(source) = std::error::Error::source(e) {
        message = format!("{message}: {source}");
    }
    HttpError::Transport(lower(&message))
}

fn lower(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Where a request goes.
#[derive(Debug, PartialEq)]
struct Target {
    /// Host name or IP (IPv6 without brackets), for connecting.
    host: String,
    /// TCP port.
    port: u16,
    /// `host[:port]` as written, for the `Host` header.
    authority: String,
    /// `https://`.
    tls: bool,
    /// Path and query, at least `/`.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, HttpError> {
        let bad = || HttpError::InvalidUrl(url.to_owned());
        let (tls, rest) = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            _ => return Err(bad()),
        };
        let default_port = if tls { 443 } else { 80 };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let path = if path.is_empty() {
            "/".to_owned()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => default_port,
                None => return Err(bad()),
            };
            (host.to_owned(), port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Target {
            host,
            port,
            authority: authority.to_owned(),
            tls,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_and_without_port_and_path() {
        let t = Target::parse("http://127.0.0.1:8080/api/x?y=1").expect("url");
        assert_eq!(
            t,
            Target {
                host: "127.0.0.1".into(),
                port: 8080,
                authority: "127.0.0.1:8080".into(),
                tls: false,
                path: "/api/x?y=1".into(),
            }
        );
        let t = Target::parse("http://cloud.local").expect("url");
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let t = Target::parse("http://[::1]:9/a").expect("url");
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        let t = Target::parse("https://cloud.example.com/api").expect("url");
        assert_eq!((t.port, t.tls), (443, true));
        let t = Target::parse("HTTPS://[::1]:8443").expect("url");
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 8443, true));
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("http://x:notaport/").is_err());
        assert!(Target::parse("http:///x").is_err());
    }

    #[test]
    fn error_answers_show_status_code_and_message() {
        let e = status_error(
            404,
            br#"{"error":{"code":"not_found","message":"no node `edge-9`"}}"#,
        );
        assert_eq!(e.to_string(), "404 not_found: no node `edge-9`");
        assert_eq!(e.status(), Some(404));
        let e = status_error(502, b"Bad Gateway\n");
        assert_eq!(e.to_string(), "502 http_error: Bad Gateway");
        assert!(check(204, Bytes::new()).is_ok());
    }

    #[test]
    fn a_bad_ca_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let Err(e) = tls_settings(Some(&empty)) else {
            panic!("a file without a certificate was accepted")
        };
        assert!(
            e.to_string().contains("empty.pem: holds no certificate"),
            "{e}"
        );
        let Err(e) = tls_settings(Some(&dir.path().join("missing.pem"))) else {
            panic!("a missing file was accepted")
        };
        assert!(e.to_string().contains("missing.pem"), "{e}");
        assert!(tls_settings(None).is_ok());
    }
}
