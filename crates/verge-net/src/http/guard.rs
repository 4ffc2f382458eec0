//! What both HTTP APIs check before a handler runs, against browsers used
//! as a weapon: a page on any site can send requests to loopback, and a
//! DNS-rebinding page can even read the answers.
//!
//! - **Host**: a name that is not an IP literal, `localhost` or one of the
//!   configured names is refused (421), so a rebinding domain that now
//!   points at 127.0.0.1 reaches nothing.
//! - **Origin**: a request a browser marks as coming from another origin
//!   is refused (403), unless that origin is configured.
//! - **Content type**: a request with a body that changes state must say
//!   `application/json` (or a binary type a route declares), which a
//!   cross-site form or "simple" request cannot send (415).
//! - **Headers**: every answer carries `X-Content-Type-Options`,
//!   `X-Frame-Options`, a `Content-Security-Policy` allowing only the
//!   server's own scripts and styles, and `Referrer-Policy`.
//!
//! [`bearer`] reads an `Authorization: Bearer` credential, the scheme in
//! any case (RFC 9110 §11.1).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::error_response;

/// The content types a state-changing request may carry a body in.
const BODY_TYPES: &[&str] = &[
    "application/json",
    "application/wasm",
    "application/octet-stream",
    "application/gzip",
];

/// The policy of the console and of every API answer: only the server's
/// own scripts, styles and images; no frames, forms or plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Which `Host` and `Origin` values an API answers.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Host names (without port, lower case) allowed besides IP literals
    /// and `localhost`.
    hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`, lower case) allowed besides the
    /// request's own.
    origins: Vec<String>,
}

impl Guard {
    /// A guard allowing `hosts` (names, `name:port` or URLs; the host part
    /// is kept) and `origins` (`scheme://host[:port]`) besides the
    /// defaults. `*` in `hosts` allows any host.
    pub fn new<H: AsRef<str>, O: AsRef<str>>(hosts: &[H], origins: &[O]) -> Guard {
        Guard {
            hosts: hosts
                .iter()
                .filter_map(|h| crate::host_of(h.as_ref()))
                .map(str::to_ascii_lowercase)
                .collect(),
            origins: origins
                .iter()
                .map(|o| o.as_ref().trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether `host` (a `Host` header's value) is one this API answers.
    pub fn host_allowed(&self, host: &str) -> bool {
        let Some(name) = crate::host_of(host) else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        name.parse::<std::net::IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.hosts.iter().any(|h| h == "*" || *h == name)
    }

    /// Why `headers` (of a request with `method`) are refused, if they are.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if let Some(host) = host
            && !self.host_allowed(host)
        {
            return Err((
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this server does not answer for the host `{host}`; \
                     add it to the configured allowed hosts"
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
            let own = host.is_some_and(|h| {
                let h = h.to_ascii_lowercase();
                origin == format!("http://{h}") || origin == format!("https://{h}")
            });
            if !own && !self.origins.contains(&origin) {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("requests from the origin `{origin}` are not accepted"),
                ));
            }
        }
        let changes_state = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if changes_state && has_body(headers) {
            let ty = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let essence = ty.split(';').next().unwrap_or("").trim();
            if !BODY_TYPES.iter().any(|t| essence.eq_ignore_ascii_case(t)) {
                return Err((
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "a {method} body must be `application/json` (or the binary type the \
                         endpoint takes), not `{ty}`"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Whether a request's headers announce a body.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|n| n.trim() != "0")
}

/// The middleware: refuses what [`Guard::check`] refuses with the APIs'
/// JSON error body, and adds the security headers to every answer.
pub async fn guard(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let mut res = match guard.check(req.method(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err((status, message)) => {
            let code = match status {
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                StatusCode::MISDIRECTED_REQUEST => "unknown_host",
                _ => "forbidden_origin",
            };
            error_response(status, code, &message, None)
        }
    };
    let h = res.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.entry(name).or_insert(HeaderValue::from_static(value));
    }
    res
}

/// The credential of `Authorization: Bearer <credential>`, the scheme in
/// any case; `None` when missing, empty or another scheme.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, cred) = value.trim_start().split_once(' ')?;
    let cred = cred.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !cred.is_empty()).then_some(cred)
}

/// Compare secrets in time that depends only on their lengths.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a free-text field (a description, a name) is refused: longer than
/// `max` bytes, or holding a control character other than a tab or a line
/// break.
pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.len() > max {
        return Err(format!(
            "`{field}` is {} bytes; at most {max} are accepted",
            value.len()
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(format!(
            "`{field}` holds the control character U+{:04X}",
            c as u32
        ));
    }
    Ok(())
}

/// Longest description accepted by either API, in bytes.
pub const MAX_DESCRIPTION: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn dns_rebinding_host_is_refused_and_ip_literals_pass() {
        let g = Guard::new(&["cloud.example.com"], &[] as &[&str]);
        for ok in [
            "127.0.0.1:8081",
            "localhost:8081",
            "[::1]:8080",
            "10.1.2.3",
            "Cloud.Example.com:443",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:8081",
            "127.0.0.1.nip.io",
            "",
            "localhost.evil.com",
        ] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
        let (status, _) = g
            .check(&Method::GET, &headers(&[("host", "rebind.evil:8081")]))
            .expect_err("refused");
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
        assert!(Guard::new(&["*"], &[] as &[&str]).host_allowed("any.name"));
    }

    #[test]
    fn cross_origin_requests_are_refused() {
        let g = Guard::new(&[] as &[&str], &["https://console.example"]);
        let own = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(g.check(&Method::DELETE, &own).is_ok());
        let other = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:9999"),
        ]);
        assert_eq!(
            g.check(&Method::POST, &other).expect_err("refused").0,
            StatusCode::FORBIDDEN
        );
        let null = headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]);
        assert!(g.check(&Method::GET, &null).is_err());
        let listed = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://console.example"),
        ]);
        assert!(g.check(&Method::POST, &listed).is_ok());
    }

    #[test]
    fn text_plain_bodies_cannot_change_state() {
        let g = Guard::default();
        let plain = headers(&[("content-type", "text/plain"), ("content-length", "12")]);
        assert_eq!(
            g.check(&Method::POST, &plain).expect_err("refused").0,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert!(g.check(&Method::GET, &plain).is_ok());
        let json = headers(&[
            ("content-type", "Application/JSON; charset=utf-8"),
            ("content-length", "2"),
        ]);
        assert!(g.check(&Method::PUT, &json).is_ok());
        let wasm = headers(&[
            ("content-type", "application/wasm"),
            ("content-length", "8"),
        ]);
        assert!(g.check(&Method::PUT, &wasm).is_ok());
        let empty = headers(&[("content-length", "0")]);
        assert!(g.check(&Method::POST, &empty).is_ok());
        let chunked = headers(&[("transfer-encoding", "chunked")]);
        assert!(g.check(&Method::POST, &chunked).is_err());
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "BEARER  abc ")])),
            Some("abc")
        );
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(bearer(&headers(&[("authorization", "Bearer ")])), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn free_text_limits() {
        assert!(check_text("description", "a\tb\nc", 16).is_ok());
        assert!(check_text("description", &"x".repeat(17), 16).is_err());
        let nul = check_text("description", "a\0b", 16).expect_err("nul");
        assert!(nul.contains("U+0000"), "{nul}");
    }
}
