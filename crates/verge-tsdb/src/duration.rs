//! Human durations in the store's config and queries: "250ms", "10s",
//! "5m", "1h", "7d"; a serde helper for `#[serde(with = "duration")]`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parse a whole number followed by a unit (`ms`, `s`, `m`, `h`, `d`).
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration `{s}` has no unit (use ms, s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration `{s}` does not start with a whole number"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "duration `{s}` has unknown unit `{unit}` (use ms, s, m, h or d)"
            ));
        }
    }
    .ok_or_else(|| format!("duration `{s}` is too long"))?;
    Ok(Duration::from_millis(ms))
}

/// Format with the largest unit that divides the duration exactly.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms != 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    if ms == 0 {
        "0s".to_owned()
    } else {
        format!("{ms}ms")
    }
}

/// Serialize a [`Duration`] as a human string.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// Deserialize a [`Duration`] from a human string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in ["250ms", "10s", "5m", "1h", "7d", "0s", "90m"] {
            assert_eq!(format(parse(s).expect(s)), s);
        }
        assert_eq!(parse("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(format(Duration::from_secs(60)), "1m");
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(parse("10").expect_err("no unit").contains("no unit"));
        assert!(parse("10y").expect_err("unit").contains("unknown unit"));
        assert!(parse("s").expect_err("number").contains("whole number"));
        assert!(
            parse("99999999999999999d")
                .expect_err("long")
                .contains("too long")
        );
    }
}
