//! The `webhook` action: POSTs each row's JSON to an `http://` or `https://`
//! URL over one kept-alive connection.
//!
//! One attempt per row; the runner in front of every action retries what
//! this module classifies as transient (no connection, timeout, DNS failure,
//! HTTP 5xx, 429, 408) and gives up at once on the rest (other 4xx, 3xx,
//! invalid responses, TLS certificate errors).
//!
//! Design notes:
//! - The connection, TLS (Mozilla's roots), keep-alive and the one resend
//!   on a reused connection that died are `verge_net::client`'s; this
//!   module checks the settings, builds the request and classifies the
//!   answer.
//! - Error messages show the URL without its query string, which often
//!   carries a token; configured header values never appear in messages.

use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use tokio::time::Instant;
use tokio_rustls::rustls::RootCertStore;
use verge_broker::duration::HumanDuration;
use verge_net::client::{BodyEnd, ClientError, Endpoint, Url};

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

/// POSTs rows to one URL (`type = "webhook"`).
pub struct Webhook {
    /// The URL's origin, with the kept-alive connection.
    endpoint: Endpoint,
    /// `host`, `content-type`, `user-agent` and the configured headers.
    headers: HeaderMap,
    /// Limit for one delivery, connect included.
    timeout: HumanDuration,
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
        let url = Url::parse(&c.url).map_err(|e| e.0)?;
        if c.timeout.get().is_zero() {
            return Err("timeout must be more than 0s".into());
        }
        let tls = match roots {
            Some(roots) => verge_net::tls::http_client_config_with(roots),
            None => verge_net::tls::http_client_config(None),
        }
        .map_err(|e| e.to_string())?;
        let authority = url.authority.clone();
        let endpoint = Endpoint::new(url, tls).map_err(|e| e.0)?.keep_alive(true);

        let mut headers = HeaderMap::new();
        let host = HeaderValue::from_str(&authority)
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
            endpoint,
            headers,
            timeout: c.timeout,
        })
    }

    /// One delivery: response head within the time limit, then the body
    /// drained within what is left of it.
    async fn attempt(&self, out: &Output) -> Result<(), ActionError> {
        let rule = HeaderValue::from_str(&out.rule).map_err(|_| {
            ActionError::permanent(format!("rule id `{}` cannot be sent as a header", out.rule))
        })?;
        let request = || {
            let mut request = Request::new(Full::new(out.json.clone()));
            *request.method_mut() = Method::POST;
            *request.uri_mut() = self.endpoint.url().target.clone();
            let mut headers = self.headers.clone();
            headers.insert(RULE_HEADER, rule.clone());
            *request.headers_mut() = headers;
            request
        };
        let deadline = Instant::now() + self.timeout.get();
        let reply = match self.endpoint.send(request, deadline, MAX_DRAIN).await {
            Ok(reply) => reply,
            Err(ClientError::TimedOut) => {
                return Err(ActionError::transient(format!(
                    "timed out after {}",
                    self.timeout
                )));
            }
            Err(e) => {
                return Err(ActionError {
                    retry: e.retry(),
                    message: e.to_string(),
                });
            }
        };
        // A body not read to its end (too long, cut, late) does not change
        // the row's fate: the status is known.
        let snippet = match reply.end {
            BodyEnd::TimedOut => String::new(),
            _ if reply.status.is_success() => String::new(),
            _ => snippet(&reply.body[..reply.body.len().min(MAX_SNIPPET)]),
        };
        classify(reply.status, &snippet)
    }
}

impl Action for Webhook {
    fn deliver<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async move {
            self.attempt(out).await.map_err(|e| ActionError {
                retry: e.retry,
                message: format!("POST {}: {}", self.endpoint.url().label, e.message),
            })
        })
    }
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

#[cfg(test)]
mod tests;
