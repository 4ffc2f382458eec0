//! The host of a `Host` header value, a `host:port` or a URL.

/// The host part of `value`, a `Host` header value, a `host:port` or a
/// URL: `[::1]:8080` gives `::1`, `http://user@name:80/x` gives `name`.
/// `None` when empty.
pub fn host_of(value: &str) -> Option<&str> {
    let v = value.trim();
    let v = v.split_once("://").map_or(v, |(_, rest)| rest);
    let v = v.split(['/', '?', '#']).next().unwrap_or("");
    let v = v.rsplit_once('@').map_or(v, |(_, h)| h);
    let name = if let Some(rest) = v.strip_prefix('[') {
        rest.split_once(']').map(|(h, _)| h)?
    } else if v.matches(':').count() > 1 {
        v // a bare IPv6 address
    } else {
        v.split(':').next().unwrap_or("")
    };
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_of_headers_and_urls() {
        assert_eq!(host_of("127.0.0.1:8081"), Some("127.0.0.1"));
        assert_eq!(host_of("[::1]:8080"), Some("::1"));
        assert_eq!(host_of("::1"), Some("::1"));
        assert_eq!(
            host_of("https://u:p@Hooks.Example.com:8443/a?b"),
            Some("Hooks.Example.com")
        );
        assert_eq!(host_of("http://x.example"), Some("x.example"));
        assert_eq!(host_of(""), None);
        assert_eq!(host_of("http:///path"), None);
    }
}
