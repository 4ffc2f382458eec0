//! Topic names and filters: validity, matching and `$share` parsing
//! (sections 4.7 and 4.8 of the 5.0 specification).

/// A valid topic name: non-empty, at most 65,535 bytes, no wildcards, no NUL.
pub fn valid_topic_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= u16::MAX as usize && !s.contains(['+', '#', '\0'])
}

/// A valid topic filter: non-empty, `#` only as the whole last level, `+`
/// only as a whole level, no NUL.
pub fn valid_topic_filter(s: &str) -> bool {
    if s.is_empty() || s.len() > u16::MAX as usize || s.contains('\0') {
        return false;
    }
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return false;
        }
        if level.contains('+') && level != "+" {
            return false;
        }
    }
    true
}

/// Whether `filter` matches `topic`. Topics starting with `$` are not matched
/// by a filter starting with a wildcard.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Split `$share/{group}/{filter}` into `(group, filter)`; `None` if the
/// filter is not a shared subscription.
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix("$share/")?;
    rest.split_once('/')
}

/// Whether a `$share/...` filter is well formed: a non-empty group without
/// wildcards and a valid filter.
pub fn valid_shared(filter: &str) -> bool {
    match parse_shared(filter) {
        Some((group, f)) => {
            !group.is_empty() && !group.contains(['+', '#']) && valid_topic_filter(f)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_topic_name("a/b"));
        assert!(valid_topic_name("/"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name("a/#"));
        assert!(!valid_topic_name("a\0b"));
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "+/b/+", "/+", "a//b", "sport/tennis/#"] {
            assert!(valid_topic_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+/b", "#/a", "a/b+"] {
            assert!(!valid_topic_filter(bad), "{bad}");
        }
    }

    #[test]
    fn matching() {
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/#", "sport/a/b"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("#", "a"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/x"));
        assert!(!matches("a/b", "a/b/c"));
    }

    #[test]
    fn shared() {
        assert_eq!(parse_shared("$share/g/a/+"), Some(("g", "a/+")));
        assert_eq!(parse_shared("a/b"), None);
        assert!(valid_shared("$share/g/#"));
        assert!(!valid_shared("$share//a"));
        assert!(!valid_shared("$share/g"));
        assert!(!valid_shared("$share/g+/a"));
        assert!(!valid_shared("$share/g/a#"));
    }
}
