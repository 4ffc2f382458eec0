//! A tiny HTTP/1 JSON client for the cloud API: `http://` and `https://`
//! URLs, one connection per request, a time limit over the whole exchange
//! and an optional `Authorization: Bearer` header. Used by the agent and by
//! `verge ctl`.
//!
//! Design notes:
//! - The connection and TLS are `verge_net::client`'s and
//!   `verge_net::tls`'s (shared with the rules' webhook action); this
//!   module builds the request and words the errors. One connection per
//!   request, not a kept one: the agent sends a long poll and a heartbeat
//!   every few seconds, so keeping it would save next to nothing and would
//!   keep idle sockets to the cloud open.
//! - The server is verified against Mozilla's root certificates, or only
//!   against the CA file set with [`set_ca_file`]. That setting is
//!   process-wide rather than a client value threaded through every call:
//!   a process talks to one cloud, and the agent and `verge ctl` keep
//!   calling [`request`] as they did.
//! - Bodies are read up to [`MAX_BODY`]: a desired state carries function
//!   modules (each at most 16 MiB, base64 encoded).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue, USER_AGENT};
use hyper::{Method, Request};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tokio_rustls::rustls::ClientConfig;
use verge_net::client::{BodyEnd, ClientError, Endpoint, Url, lower};
use verge_net::tls::TlsError;

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
    let config = verge_net::tls::http_client_config(path).map_err(|e| match e {
        TlsError::Setup(_) => HttpError::Tls(e.to_string()),
        _ => HttpError::Tls(format!("ca file {e}")),
    })?;
    Ok(TlsSettings {
        ca_file: path.map(Path::to_path_buf),
        config,
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
    let body = match body {
        Some(v) => Some((
            Bytes::from(
                serde_json::to_vec(v).map_err(|e| HttpError::Transport(format!("body: {e}")))?,
            ),
            "application/json",
        )),
        None => None,
    };
    request_raw(method, url, bearer, body, timeout).await
}

/// [`request`] with a body of any type: its bytes and its content type
/// (e.g. a component's archive as `application/gzip`).
pub async fn request_raw(
    method: &str,
    url: &str,
    bearer: Option<&str>,
    body: Option<(Bytes, &'static str)>,
    timeout: Duration,
) -> Result<(u16, Bytes), HttpError> {
    let bad_url = || HttpError::InvalidUrl(url.to_owned());
    let target = Url::parse(url).map_err(|_| bad_url())?;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| HttpError::Transport(format!("invalid method `{method}`")))?;
    let (payload, content_type) = match body {
        Some((bytes, kind)) => (bytes, Some(HeaderValue::from_static(kind))),
        None => (Bytes::new(), None),
    };
    let host = HeaderValue::from_str(&target.authority).map_err(|_| bad_url())?;
    let authorization = match bearer {
        Some(token) => {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                HttpError::Transport("the bearer token is not printable ascii".into())
            })?;
            value.set_sensitive(true);
            Some(value)
        }
        None => None,
    };
    let tls = current_tls()?;
    let endpoint = Endpoint::new(target, tls.config)
        .map_err(|e| HttpError::InvalidUrl(format!("{url}: {e}")))?;
    let make = || {
        let mut req = Request::new(Full::new(payload.clone()));
        *req.method_mut() = method.clone();
        *req.uri_mut() = endpoint.url().target.clone();
        let headers = req.headers_mut();
        headers.insert(HOST, host.clone());
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("verge/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(kind) = &content_type {
            headers.insert(CONTENT_TYPE, kind.clone());
        }
        if let Some(value) = &authorization {
            headers.insert(AUTHORIZATION, value.clone());
        }
        req
    };
    let authority = &endpoint.url().authority;
    let reply = endpoint
        .send(make, Instant::now() + timeout, MAX_BODY)
        .await
        .map_err(|e| match e {
            ClientError::TimedOut => HttpError::Timeout(timeout),
            ClientError::Resolve { error: io, .. } | ClientError::Connect(io) => {
                HttpError::Transport(format!("cannot connect to {authority}: {}", lower(&io)))
            }
            ClientError::NoAddress { .. } => HttpError::Transport(format!(
                "cannot connect to {authority}: could not resolve to any address"
            )),
            ClientError::Tls(io) => {
                let trusted = match &tls.ca_file {
                    Some(p) => format!("the CA file {}", p.display()),
                    None => "Mozilla's root certificates (no CA file set)".to_owned(),
                };
                HttpError::Transport(format!(
                    "tls handshake with {authority} failed: {} (verifying against {trusted})",
                    lower(&io)
                ))
            }
            ClientError::Http(e) => transport(&e),
        })?;
    match reply.end {
        BodyEnd::Complete => Ok((reply.status.as_u16(), reply.body)),
        BodyEnd::TooLong => Err(HttpError::Transport(
            "reading the answer: length limit exceeded".into(),
        )),
        BodyEnd::Failed(e) => Err(HttpError::Transport(format!(
            "reading the answer: {}",
            lower(&e)
        ))),
        BodyEnd::TimedOut => Err(HttpError::Timeout(timeout)),
    }
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

fn transport(e: &hyper::Error) -> HttpError {
    let mut message = e.to_string();
    if let Some(source) = std::error::Error::source(e) {
        message = format!("{message}: {source}");
    }
    HttpError::Transport(lower(&message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_and_without_port_and_path() {
        let t = Url::parse("http://127.0.0.1:8080/api/x?y=1").expect("url");
        assert_eq!(t.host, verge_net::client::Host::Ip([127, 0, 0, 1].into()));
        assert_eq!((t.port, t.authority.as_str()), (8080, "127.0.0.1:8080"));
        assert_eq!(
            (t.https, t.target.to_string().as_str()),
            (false, "/api/x?y=1")
        );
        let t = Url::parse("http://cloud.local").expect("url");
        assert_eq!((t.port, t.target.to_string().as_str()), (80, "/"));
        let t = Url::parse("http://[::1]:9/a").expect("url");
        assert_eq!((t.host.to_string().as_str(), t.port), ("::1", 9));
        let t = Url::parse("https://cloud.example.com/api").expect("url");
        assert_eq!((t.port, t.https), (443, true));
        let t = Url::parse("HTTPS://[::1]:8443").expect("url");
        assert_eq!(
            (t.host.to_string().as_str(), t.port, t.https),
            ("::1", 8443, true)
        );
        assert!(Url::parse("ftp://x/").is_err());
        assert!(Url::parse("http://x:notaport/").is_err());
        assert!(Url::parse("http:///x").is_err());
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
