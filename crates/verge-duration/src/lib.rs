//! Human-readable durations in config files and API parameters: a whole
//! number and a unit, `us`, `ms`, `s`, `m`, `h` or `d` (`"500us"`,
//! `"250ms"`, `"10s"`, `"5m"`, `"2h"`, `"7d"`).
//!
//! Three ways to use it: [`parse`] / [`format`]; the [`HumanDuration`]
//! newtype (serde and `FromStr`); or, for plain `Duration` fields,
//! `#[serde(with = "verge_duration")]` and, for `Option<Duration>`,
//! `#[serde(with = "verge_duration::option")]` (`"none"` is `None`).
//! One parser for the whole workspace, so every config key accepts the same
//! spellings and reports the same errors.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Parse `<whole number><unit>`; the error says what is wrong and which
/// units exist.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("duration `{s}` has no unit (use us, ms, s, m, h or d)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration `{s}` does not start with a whole number"))?;
    let per: u64 = match unit {
        "us" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => {
            return Err(format!(
                "duration `{s}` has unknown unit `{unit}` (use us, ms, s, m, h or d)"
            ));
        }
    };
    n.checked_mul(per)
        .map(Duration::from_micros)
        .ok_or_else(|| format!("duration `{s}` is too long"))
}

/// In the largest unit that divides `d` exactly; zero is `"0s"`.
pub fn format(d: Duration) -> String {
    let us = d.as_micros();
    if us == 0 {
        return "0s".into();
    }
    for (per, unit) in [
        (86_400_000_000u128, "d"),
        (3_600_000_000, "h"),
        (60_000_000, "m"),
        (1_000_000, "s"),
        (1_000, "ms"),
    ] {
        if us.is_multiple_of(per) {
            return format!("{}{unit}", us / per);
        }
    }
    format!("{us}us")
}

/// Serialize a `Duration` as a human string (`#[serde(with = "verge_duration")]`).
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// Deserialize a `Duration` from a human string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

/// The same for `Option<Duration>`: `"none"` is `None`.
pub mod option {
    use super::*;

    /// `Some` as a human string, `None` as `"none"`.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format(*d)),
            None => s.serialize_str("none"),
        }
    }

    /// A human string, or `"none"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        if s == "none" {
            return Ok(None);
        }
        parse(&s).map(Some).map_err(serde::de::Error::custom)
    }
}

/// A `Duration` that reads and writes itself as a human string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// The wrapped duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map(HumanDuration)
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_every_unit() {
        for (s, d) in [
            ("500us", Duration::from_micros(500)),
            ("250ms", Duration::from_millis(250)),
            ("10s", Duration::from_secs(10)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("7d", Duration::from_secs(7 * 86_400)),
        ] {
            assert_eq!(parse(s), Ok(d), "{s}");
            assert_eq!(format(d), s);
            let h: HumanDuration = s.parse().expect("valid");
            assert_eq!((h.get(), h.to_string()), (d, s.to_owned()));
        }
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(parse(" 10s "), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (bad, says) in [
            ("", "no unit"),
            ("10", "no unit"),
            ("s", "whole number"),
            ("10x", "unknown unit `x`"),
            ("-1s", "whole number"),
            ("1.5s", "unknown unit `.5s`"),
            ("99999999999999999999d", "whole number"),
            ("999999999999999d", "too long"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
