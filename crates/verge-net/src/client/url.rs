//! Checked `http://` and `https://` URLs: where to connect, what to send
//! as `host` and request target, and a label without the query string
//! (which often carries a token) for messages.

use std::net::IpAddr;

use hyper::Uri;

use super::error::lower;

/// Why a URL was refused; the message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidUrl(pub String);

/// The URL's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A name (lower case) to resolve at each connect.
    Name(String),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// A checked URL.
#[derive(Debug, Clone)]
pub struct Url {
    /// `https://`.
    pub https: bool,
    /// Where to connect.
    pub host: Host,
    /// TCP port (80 or 443 unless the URL names one).
    pub port: u16,
    /// `host[:port]` as written, for the `host` header.
    pub authority: String,
    /// Request target in origin form (`/path?query`).
    pub target: Uri,
    /// `scheme://authority/path` (no query), for messages.
    pub label: String,
}

impl Url {
    /// Check `url`: scheme `http` or `https`, a host, an optional port
    /// (1 to 65535), no user info.
    pub fn parse(url: &str) -> Result<Url, InvalidUrl> {
        Url::check(url).map_err(InvalidUrl)
    }

    fn check(url: &str) -> Result<Url, String> {
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
mod tests {
    use super::*;

    fn url_error(url: &str) -> String {
        match Url::parse(url) {
            Ok(_) => panic!("`{url}` was accepted"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn urls_default_ports_paths_and_hosts() {
        let u = Url::parse("http://example.com").expect("url");
        assert_eq!(u.port, 80);
        assert_eq!(u.target, "/");
        assert_eq!(u.authority, "example.com");
        assert!(matches!(u.host, Host::Name(ref n) if n == "example.com"));

        let u = Url::parse("HTTPS://Example.COM/a/b?token=s3cret&x=1").expect("url");
        assert!(u.https);
        assert_eq!(u.port, 443);
        assert_eq!(u.target, "/a/b?token=s3cret&x=1");
        assert!(matches!(u.host, Host::Name(ref n) if n == "example.com"));
        assert_eq!(u.label, "https://Example.COM/a/b", "no query in messages");

        let u = Url::parse("http://[::1]:8080/x").expect("url");
        assert_eq!(u.port, 8080);
        assert_eq!(u.authority, "[::1]:8080");
        assert!(matches!(u.host, Host::Ip(ip) if ip == IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])));

        let u = Url::parse("http://h:/").expect("url");
        assert_eq!(u.port, 80);

        let u = Url::parse("http://10.1.2.3?q=1").expect("url");
        assert_eq!(u.target, "/?q=1");
        assert!(matches!(u.host, Host::Ip(ip) if ip == IpAddr::from([10, 1, 2, 3])));
    }

    #[test]
    fn bad_urls_name_the_problem() {
        assert!(url_error("ftp://example.com/x").contains("unsupported scheme `ftp`"));
        assert!(url_error("example.com/x").contains("must start with http://"));
        assert!(url_error("http:///x").contains("has no host"));
        assert!(url_error("http://:80/x").contains("has no host"));
        assert!(url_error("http://host:0/").contains("invalid port `0`"));
        assert!(url_error("http://host:99999/").contains("invalid port `99999`"));
        assert!(url_error("http://a b/").contains("invalid url"));
        let e = url_error("http://user:pw@host/");
        assert!(e.contains("user info"), "{e}");
        assert!(!e.contains("pw"), "{e}");
    }
}
