//! Civil (proleptic Gregorian, UTC) date arithmetic for the time functions; no external date crate.

/// Milliseconds per day.
const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of the civil date `y-m-d` (month 1–12, day 1–31).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    // Shift the year to start in March so the leap day is the last day of the year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400; // 0..=399
    let mp = i64::from((m + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // 0..=365
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // 0..=146096
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day count since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // 0..=365
    let mp = (5 * doy + 2) / 153; // 0..=11, March = 0
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The broken-down UTC time of a millisecond timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub milli: u32,
    /// Day of the year, 1–366.
    pub yday: u32,
    /// ISO weekday, Monday = 1 … Sunday = 7.
    pub weekday: u32,
}

/// Breaks a millisecond Unix timestamp into UTC fields.
pub(crate) fn civil(ms: i64) -> Civil {
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS);
    let (year, month, day) = civil_from_days(days);
    let yday = (days - days_from_civil(year, 1, 1) + 1) as u32;
    // 1970-01-01 was a Thursday (4).
    let weekday = ((days + 3).rem_euclid(7) + 1) as u32;
    Civil {
        year,
        month,
        day,
        hour: (rem / 3_600_000) as u32,
        minute: (rem / 60_000 % 60) as u32,
        second: (rem / 1000 % 60) as u32,
        milli: (rem % 1000) as u32,
        yday,
        weekday,
    }
}

/// Formats a timestamp with `%Y %m %d %H %M %S %f`(milliseconds) `%j %u %s %%`;
/// any other character is copied.
pub(crate) fn format(ms: i64, fmt: &str) -> String {
    let c = civil(ms);
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars();
    while let Some(ch) = chars.next() {
        if ch != '%' {
            out.push(ch);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&format!("{:04}", c.year)),
            Some('m') => out.push_str(&format!("{:02}", c.month)),
            Some('d') => out.push_str(&format!("{:02}", c.day)),
            Some('H') => out.push_str(&format!("{:02}", c.hour)),
            Some('M') => out.push_str(&format!("{:02}", c.minute)),
            Some('S') => out.push_str(&format!("{:02}", c.second)),
            Some('f') => out.push_str(&format!("{:03}", c.milli)),
            Some('j') => out.push_str(&format!("{:03}", c.yday)),
            Some('u') => out.push_str(&c.weekday.to_string()),
            Some('s') => out.push_str(&ms.div_euclid(1000).to_string()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// A FLOAT number of milliseconds as whole milliseconds (rounded down), or
/// `None` when it is outside the INT range.
pub(crate) fn float_ms(f: f64) -> Option<i64> {
    crate::functions::math::float_to_int(f.floor()).ok()
}

/// Parses an RFC 3339 / ISO 8601 timestamp (`2024-02-29T12:30:00.250Z`,
/// `2024-02-29 12:30:00+02:00`, `2024-02-29T12:30Z`, `2024-02-29`) to
/// milliseconds; no zone means UTC. The grammar is in docs/rules.md.
pub(crate) fn parse(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let year = num(0, 4)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    let month = u32::try_from(num(5, 2)?).ok()?;
    let day = u32::try_from(num(8, 2)?).ok()?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut ms = days_from_civil(year, month, day) * DAY_MS;
    if b.len() == 10 {
        return Some(ms);
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(13) != Some(&b':') {
        return None;
    }
    let (h, mi) = (num(11, 2)?, num(14, 2)?);
    // Seconds may be left out (`10:00Z`, as ISO 8601 allows).
    let (sec, mut i) = if b.get(16) == Some(&b':') {
        (num(17, 2)?, 19)
    } else {
        (0, 16)
    };
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    ms += h * 3_600_000 + mi * 60_000 + sec * 1000;
    if i == 19 && b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Milliseconds: first three fraction digits, padded.
        let frac = &b[start..i];
        let mut milli = 0i64;
        for k in 0..3 {
            milli = milli * 10 + frac.get(k).map_or(0, |d| i64::from(d - b'0'));
        }
        ms += milli;
    }
    match b.get(i) {
        None => Some(ms),
        Some(b'Z' | b'z') if i + 1 == b.len() => Some(ms),
        Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3_600_000 + om * 60_000;
            Some(if *sign == b'+' { ms - off } else { ms + off })
        }
        _ => None,
    }
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_day_over_eight_centuries() {
        for z in -200_000..200_000 {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z, "{y}-{m}-{d}");
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        let c = civil(1_709_209_845_123); // 2024-02-29T12:30:45.123Z, a Thursday
        assert_eq!(
            (c.year, c.month, c.day, c.hour, c.minute, c.second, c.milli),
            (2024, 2, 29, 12, 30, 45, 123)
        );
        assert_eq!((c.yday, c.weekday), (60, 4));
        assert_eq!(
            format(-1, "%Y-%m-%dT%H:%M:%S.%fZ"),
            "1969-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse("2024-02-29T12:30:45.123Z"), Some(1_709_209_845_123));
        assert_eq!(
            parse("2024-02-29 14:30:45.1234+02:00"),
            Some(1_709_209_845_123)
        );
        assert_eq!(parse("1970-01-02"), Some(DAY_MS));
        assert_eq!(parse("2023-02-29"), None);
        assert_eq!(parse("2024-02-29T25:00:00Z"), None);
        assert_eq!(parse("garbage"), None);
    }

    #[test]
    fn parse_time_rejects_offsets_of_a_day_or_more() {
        assert_eq!(parse("2024-01-01T00:00:00+99:99"), None);
        assert_eq!(parse("2024-01-01T00:00:00+24:00"), None);
        assert_eq!(parse("2024-01-01T00:00:00-05:60"), None);
        assert_eq!(
            parse("2024-01-01T00:00:00+23:59"),
            Some(1_704_067_200_000 - 86_340_000)
        );
    }
}
