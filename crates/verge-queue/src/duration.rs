//! Human durations in config (`"500us"`, `"5ms"`, `"2s"`, `"1m"`, `"1h"`,
//! `"7d"`): a serde `with` module for `Duration` and, in [`option`], for
//! `Option<Duration>`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parse `<integer><unit>` with unit `us`, `ms`, `s`, `m`, `h` or `d`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit (us, ms, s, m, h, d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` must start with a whole number"))?;
    let per: u64 = match unit {
        "us" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (us, ms, s, m, h, d)")),
    };
    n.checked_mul(per)
        .map(Duration::from_micros)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// The largest unit that divides `d` exactly.
pub fn format(d: Duration) -> String {
    let us = d.as_micros();
    for (per, unit) in [
        (86_400_000_000u128, "d"),
        (3_600_000_000, "h"),
        (60_000_000, "m"),
        (1_000_000, "s"),
        (1_000, "ms"),
    ] {
        if us > 0 && us.is_multiple_of(per) {
            return format!("{}{unit}", us / per);
        }
    }
    format!("{us}us")
}

/// Serialize as a human string.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// Deserialize from a human string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

/// The same for `Option<Duration>` (absent or `"none"` is `None`).
pub mod option {
    use super::*;

    /// Serialize `Some` as a human string, `None` as `"none"`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format(*d)),
            None => s.serialize_str("none"),
        }
    }

    /// Deserialize a human string, `"none"` being `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        if s == "none" {
            return Ok(None);
        }
        parse(&s).map(Some).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        for (s, d) in [
            ("500us", Duration::from_micros(500)),
            ("5ms", Duration::from_millis(5)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1h", Duration::from_secs(3600)),
            ("7d", Duration::from_secs(7 * 86_400)),
        ] {
            assert_eq!(parse(s), Ok(d), "{s}");
            assert_eq!(format(d), s);
        }
        assert_eq!(format(Duration::ZERO), "0us");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        for bad in ["", "5", "ms", "5x", "-1s", "1.5s", "99999999999999999999d"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
