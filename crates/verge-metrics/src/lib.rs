//! The workspace's one latency histogram and Prometheus text helpers,
//! shared by the rule engine, the function runtime, the drivers and the
//! bench.

mod histogram;

pub use histogram::Histogram;

/// Escape a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
