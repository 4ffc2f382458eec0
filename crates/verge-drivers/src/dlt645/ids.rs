//! The DL/T 645-2007 data identifiers Verge knows (energy, instantaneous
//! values, clock, addresses) and the format of each one's value: parse a
//! point's address, decode the value a meter sends, encode one (for the
//! simulator).
//!
//! A data identifier is written `DI3 DI2 DI1 DI0` as 8 hex digits
//! (`02010100`, phase A voltage) and sent lowest byte first. Values are BCD,
//! lowest byte first; a signed value's sign is the top bit of its most
//! significant byte. Block identifiers (`FF` in a byte), which answer several
//! values at once, are not supported: one point is one value.

use serde_json::Value;

/// A data identifier, `DI3 DI2 DI1 DI0` (so `0x02010100` is phase A voltage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataId(pub u32);

impl DataId {
    /// Parse 8 hex digits (`"02010100"`); the error says why.
    pub fn parse(s: &str) -> Result<DataId, String> {
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "{s:?} is not a DL/T 645 data identifier (8 hex digits, e.g. 00000000 or 02010100)"
            ));
        }
        let id = u32::from_str_radix(s, 16).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(DataId(id))
    }

    /// The four bytes as sent, DI0 first.
    pub fn wire(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }

    /// From the four bytes as sent, DI0 first.
    pub fn from_wire(b: [u8; 4]) -> DataId {
        DataId(u32::from_le_bytes(b))
    }
}

impl std::fmt::Display for DataId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08X}", self.0)
    }
}

/// How a value is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A BCD number of `bytes` bytes with `decimals` digits after the point;
    /// `signed`: the top bit of the last byte is the sign.
    Bcd {
        /// Bytes on the wire.
        bytes: u8,
        /// Digits after the decimal point.
        decimals: u8,
        /// Whether the top bit is a sign.
        signed: bool,
    },
    /// `YYMMDDWW` (week day last), published as `"20YY-MM-DD"`.
    Date,
    /// `hhmmss`, published as `"hh:mm:ss"`.
    Time,
    /// 12 BCD digits (an address or a meter number), published as text.
    Digits,
}

impl Format {
    /// Bytes the value takes.
    pub fn size(self) -> usize {
        match self {
            Format::Bcd { bytes, .. } => usize::from(bytes),
            Format::Date => 4,
            Format::Time => 3,
            Format::Digits => 6,
        }
    }
}

/// What a data identifier is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// What the value measures, e.g. `voltage`.
    pub what: &'static str,
    /// Its unit (empty when it has none).
    pub unit: &'static str,
    /// Its layout.
    pub format: Format,
}

const fn bcd(bytes: u8, decimals: u8, signed: bool) -> Format {
    Format::Bcd {
        bytes,
        decimals,
        signed,
    }
}

const fn info(what: &'static str, unit: &'static str, format: Format) -> Option<Info> {
    Some(Info { what, unit, format })
}

/// The identifier's meaning and format, `None` when Verge does not know it.
pub fn lookup(id: DataId) -> Option<Info> {
    let [di3, di2, di1, di0] = id.0.to_be_bytes();
    match (di3, di2, di1, di0) {
        // energy: DI2 the kind, DI1 the tariff (00 total, 01–3F), DI0 the
        // settlement (00 current, 01–0C the n-th previous); XXXXXX.XX
        (0x00, 0x00..=0x0A, 0x00..=0x3F, 0x00..=0x0C) => {
            let (what, unit, signed) = match di2 {
                0x00 => ("combined active energy", "kWh", true),
                0x01 => ("forward active energy", "kWh", false),
                0x02 => ("reverse active energy", "kWh", false),
                0x03 => ("combined reactive energy 1", "kvarh", true),
                0x04 => ("combined reactive energy 2", "kvarh", true),
                0x05 => ("quadrant I reactive energy", "kvarh", false),
                0x06 => ("quadrant II reactive energy", "kvarh", false),
                0x07 => ("quadrant III reactive energy", "kvarh", false),
                0x08 => ("quadrant IV reactive energy", "kvarh", false),
                0x09 => ("forward apparent energy", "kVAh", false),
                _ => ("reverse apparent energy", "kVAh", false),
            };
            info(what, unit, bcd(4, 2, signed))
        }
        // per-phase forward / reverse active energy (total only)
        (0x00, 0x15 | 0x16 | 0x29 | 0x2A | 0x3D | 0x3E, 0x00, 0x00..=0x0C) => {
            let what = if di2 % 2 == 1 {
                "phase forward active energy"
            } else {
                "phase reverse active energy"
            };
            info(what, "kWh", bcd(4, 2, false))
        }
        (0x02, 0x01, 0x01..=0x03, 0x00) => info("voltage", "V", bcd(2, 1, false)),
        (0x02, 0x02, 0x01..=0x03, 0x00) => info("current", "A", bcd(3, 3, true)),
        (0x02, 0x03, 0x00..=0x03, 0x00) => info("active power", "kW", bcd(3, 4, true)),
        (0x02, 0x04, 0x00..=0x03, 0x00) => info("reactive power", "kvar", bcd(3, 4, true)),
        (0x02, 0x05, 0x00..=0x03, 0x00) => info("apparent power", "kVA", bcd(3, 4, true)),
        (0x02, 0x06, 0x00..=0x03, 0x00) => info("power factor", "", bcd(2, 3, true)),
        (0x02, 0x07, 0x01..=0x03, 0x00) => info("phase angle", "°", bcd(2, 1, false)),
        (0x02, 0x08, 0x01..=0x03, 0x00) => info("voltage distortion", "%", bcd(2, 2, false)),
        (0x02, 0x09, 0x01..=0x03, 0x00) => info("current distortion", "%", bcd(2, 2, false)),
        (0x02, 0x80, 0x00, 0x01) => info("neutral current", "A", bcd(3, 3, true)),
        (0x02, 0x80, 0x00, 0x02) => info("frequency", "Hz", bcd(2, 2, false)),
        (0x02, 0x80, 0x00, 0x03) => info("one-minute average active power", "kW", bcd(3, 4, true)),
        (0x02, 0x80, 0x00, 0x04) => info("active demand", "kW", bcd(3, 4, true)),
        (0x02, 0x80, 0x00, 0x05) => info("reactive demand", "kvar", bcd(3, 4, true)),
        (0x02, 0x80, 0x00, 0x06) => info("apparent demand", "kVA", bcd(3, 4, true)),
        (0x02, 0x80, 0x00, 0x07) => info("meter temperature", "°C", bcd(2, 1, true)),
        (0x02, 0x80, 0x00, 0x08) => info("clock battery voltage", "V", bcd(2, 2, false)),
        (0x02, 0x80, 0x00, 0x09) => info("reading battery voltage", "V", bcd(2, 2, false)),
        (0x02, 0x80, 0x00, 0x0A) => info("battery working time", "min", bcd(4, 0, false)),
        (0x04, 0x00, 0x01, 0x01) => info("date", "", Format::Date),
        (0x04, 0x00, 0x01, 0x02) => info("time", "", Format::Time),
        (0x04, 0x00, 0x04, 0x01) => info("meter address", "", Format::Digits),
        (0x04, 0x00, 0x04, 0x02) => info("meter number", "", Format::Digits),
        _ => None,
    }
}

/// Why a value's bytes cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The meter sent a different number of bytes than the format has.
    #[error("{got} value bytes, expected {expected}")]
    Length {
        /// Bytes received.
        got: usize,
        /// Bytes of the format.
        expected: usize,
    },
    /// A byte is not two BCD digits.
    #[error("byte {0:#04x} is not BCD")]
    NotBcd(u8),
}

fn digits(b: u8) -> Result<u64, ValueError> {
    let (h, l) = (b >> 4, b & 0x0F);
    if h > 9 || l > 9 {
        return Err(ValueError::NotBcd(b));
    }
    Ok(u64::from(h * 10 + l))
}

/// The value in `bytes` (data after the identifier, lowest byte first).
pub fn decode(format: Format, bytes: &[u8]) -> Result<Value, ValueError> {
    if bytes.len() != format.size() {
        return Err(ValueError::Length {
            got: bytes.len(),
            expected: format.size(),
        });
    }
    let mut b = bytes.to_vec();
    let mut negative = false;
    if let Format::Bcd { signed: true, .. } = format
        && let Some(top) = b.last_mut()
    {
        negative = *top & 0x80 != 0;
        *top &= 0x7F;
    }
    let d: Vec<u64> = b.iter().map(|&x| digits(x)).collect::<Result<_, _>>()?;
    Ok(match format {
        Format::Bcd { decimals, .. } => {
            let n = d.iter().rev().fold(0u64, |acc, &x| acc * 100 + x);
            if decimals == 0 {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                Value::from(if negative { -n } else { n })
            } else {
                let v = n as f64 / 10f64.powi(i32::from(decimals));
                Value::from(if negative { -v } else { v })
            }
        }
        Format::Date => Value::from(format!("20{:02}-{:02}-{:02}", d[3], d[2], d[1])),
        Format::Time => Value::from(format!("{:02}:{:02}:{:02}", d[2], d[1], d[0])),
        Format::Digits => Value::from(
            d.iter()
                .rev()
                .map(|x| format!("{x:02}"))
                .collect::<String>(),
        ),
    })
}

fn to_bcd(n: u64) -> u8 {
    // n < 100
    let n = u8::try_from(n % 100).unwrap_or(0);
    ((n / 10) << 4) | (n % 10)
}

/// Encode `v` in `format` (numbers for BCD, text as [`decode`] publishes
/// it for the others); numbers are rounded and clamped to what fits.
pub fn encode(format: Format, v: &Value) -> Result<Vec<u8>, String> {
    match format {
        Format::Bcd {
            bytes,
            decimals,
            signed,
        } => {
            let x = v.as_f64().ok_or_else(|| format!("{v} is not a number"))?;
            let digits = 2 * u32::from(bytes);
            let max = if signed {
                8 * 10u64.pow(digits - 1) - 1
            } else {
                10u64.pow(digits) - 1
            };
            let scaled = (x.abs() * 10f64.powi(i32::from(decimals))).round();
            let mut n = if scaled >= max as f64 {
                max
            } else {
                scaled as u64
            };
            let mut out = Vec::with_capacity(usize::from(bytes));
            for _ in 0..bytes {
                out.push(to_bcd(n % 100));
                n /= 100;
            }
            if signed
                && x < 0.0
                && let Some(top) = out.last_mut()
            {
                *top |= 0x80;
            }
            Ok(out)
        }
        Format::Date | Format::Time | Format::Digits => {
            let s = v.as_str().ok_or_else(|| format!("{v} is not text"))?;
            let mut n: Vec<u64> = s
                .split(['-', ':'])
                .flat_map(|part| {
                    part.as_bytes()
                        .chunks(2)
                        .map(|c| std::str::from_utf8(c).ok().and_then(|c| c.parse().ok()))
                        .collect::<Vec<_>>()
                })
                .collect::<Option<_>>()
                .ok_or_else(|| format!("{s:?} is not digits"))?;
            if format == Format::Date {
                // "20YY-MM-DD": drop the century, add the week day (not kept)
                n.remove(0);
                n.push(0);
            }
            if n.len() != format.size() {
                return Err(format!("{s:?} does not fit the format"));
            }
            // most significant first as written → lowest byte first on the wire
            Ok(n.into_iter().rev().map(to_bcd).collect())
        }
    }
}
