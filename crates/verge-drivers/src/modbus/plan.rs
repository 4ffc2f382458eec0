//! A device's point table turned into Modbus requests, once, when the
//! driver is built: every address and type checked, then the points of
//! each table coalesced into as few reads as the protocol allows.
//!
//! Addresses are `coil:N`, `di:N`, `ir:N`, `hr:N` (N from 0 to 65535) and
//! `ir:N.B` / `hr:N.B` for bit B (0 = least significant, up to 15) of a
//! register. Coils and discrete inputs are `bool` (the default there);
//! register points are numbers or strings (`u16` by default), and a `bool`
//! in a register is only allowed through the `.B` bit form, so that a
//! register is never silently read as "non-zero". Register bits are
//! read-only: writing one would need a read-modify-write the device cannot
//! make atomic.
//!
//! Coalescing joins points of the same table whose registers lie at most
//! [`MAX_GAP_REGISTERS`] (bits: [`MAX_GAP_BITS`]) apart, up to 125
//! registers or 2,000 bits per request. A joined request that the device
//! refuses with "illegal data address" (a hole in its map inside the gap)
//! is split into one request per point for good, by the client.

use crate::config::{Access, ByteOrder, DataType, DeviceConfig, PointConfig};

/// Most registers one read may ask for (FC 3 and 4).
pub const MAX_REGISTERS: u16 = 125;
/// Most bits one read may ask for (FC 1 and 2).
pub const MAX_BITS: u16 = 2000;
/// Unused registers a read may span to join two points.
pub const MAX_GAP_REGISTERS: u16 = 8;
/// Unused bits a read may span to join two points.
pub const MAX_GAP_BITS: u16 = 64;

/// A Modbus data table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Area {
    /// Coils: read FC 1, written FC 5 / 15.
    Coil,
    /// Discrete inputs: read FC 2, read-only.
    DiscreteInput,
    /// Input registers: read FC 4, read-only.
    InputRegister,
    /// Holding registers: read FC 3, written FC 6 / 16.
    HoldingRegister,
}

impl Area {
    /// Whether the table holds bits rather than registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Area::Coil | Area::DiscreteInput)
    }

    /// Whether the protocol can write it at all.
    pub fn writable(self) -> bool {
        matches!(self, Area::Coil | Area::HoldingRegister)
    }

    fn max_span(self) -> u16 {
        if self.is_bits() {
            MAX_BITS
        } else {
            MAX_REGISTERS
        }
    }

    fn max_gap(self) -> u16 {
        if self.is_bits() {
            MAX_GAP_BITS
        } else {
            MAX_GAP_REGISTERS
        }
    }
}

/// One point, checked and resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Its table.
    pub area: Area,
    /// First register (or bit).
    pub address: u16,
    /// Registers (or bits: 1) it spans.
    pub count: u16,
    /// Raw type.
    pub data_type: DataType,
    /// Bit within the register, for `hr:N.B` / `ir:N.B`.
    pub bit: Option<u8>,
    /// Bytes within a register.
    pub byte_order: ByteOrder,
    /// Registers within a value.
    pub word_order: ByteOrder,
}

impl Spec {
    /// One past its last register (or bit), as u32 so it cannot overflow.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }
}

/// One read request and the points it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Table.
    pub area: Area,
    /// First register (or bit).
    pub address: u16,
    /// Registers (or bits).
    pub count: u16,
    /// The points: (index in the point table, offset in the response).
    pub points: Vec<(usize, u16)>,
}

/// A device's unit id, resolved points and read requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    /// Modbus unit (slave) id.
    pub unit: u8,
    /// Every point, in table order.
    pub specs: Vec<Spec>,
    /// The reads, ordered by table and address.
    pub reads: Vec<Read>,
}

/// Check a device's points and plan its reads; the error names the field,
/// relative to the device (`points[3].address: …`).
pub fn device(d: &DeviceConfig) -> Result<DevicePlan, String> {
    if d.meter.is_some() {
        return Err("meter: Modbus devices have a `unit`, not a meter address".into());
    }
    let mut specs = Vec::with_capacity(d.points.len());
    for (j, p) in d.points.iter().enumerate() {
        specs.push(spec(p).map_err(|e| format!("points[{j}].{e}"))?);
    }
    let reads = coalesce(&specs);
    Ok(DevicePlan {
        unit: d.unit.unwrap_or(1),
        specs,
        reads,
    })
}

/// Parse and check one point; the error starts with the key.
pub fn spec(p: &PointConfig) -> Result<Spec, String> {
    let addr = p.address.trim();
    let (area, rest) = addr
        .split_once(':')
        .ok_or_else(|| format!("address: {addr:?} is not `coil:N`, `di:N`, `ir:N` or `hr:N`"))?;
    let area = match area.trim().to_ascii_lowercase().as_str() {
        "coil" => Area::Coil,
        "di" => Area::DiscreteInput,
        "ir" => Area::InputRegister,
        "hr" => Area::HoldingRegister,
        other => {
            return Err(format!(
                "address: unknown Modbus table {other:?} (coil, di, ir or hr)"
            ));
        }
    };
    let (number, bit) = match rest.split_once('.') {
        Some((n, b)) => (n, Some(b)),
        None => (rest, None),
    };
    let address: u16 = number
        .trim()
        .parse()
        .map_err(|_| format!("address: {number:?} is not a number from 0 to 65535"))?;
    let bit = match bit {
        None => None,
        Some(_) if area.is_bits() => {
            return Err("address: `.B` (a bit of a register) is for `ir` and `hr` only".into());
        }
        Some(b) => match b.trim().parse::<u8>() {
            Ok(b) if b < 16 => Some(b),
            _ => return Err(format!("address: bit {b:?} is not from 0 to 15")),
        },
    };
    let data_type = match (p.data_type, area.is_bits() || bit.is_some()) {
        (None, true) => DataType::Bool,
        (None, false) => DataType::U16,
        (Some(t), _) => t,
    };
    if area.is_bits() && data_type != DataType::Bool {
        return Err(format!(
            "type: a {} holds one bit, so its type is bool, not {data_type:?}",
            if area == Area::Coil {
                "coil"
            } else {
                "discrete input"
            }
        ));
    }
    if bit.is_some() && data_type != DataType::Bool {
        return Err(format!("type: a register bit is bool, not {data_type:?}"));
    }
    if !area.is_bits() && bit.is_none() && data_type == DataType::Bool {
        return Err(format!(
            "type: bool in a register needs the bit, e.g. `{}.0`, or use a coil",
            addr
        ));
    }
    if p.access == Access::Rw && !area.writable() {
        return Err("access: discrete inputs and input registers are read-only".into());
    }
    if p.access == Access::Rw && bit.is_some() {
        return Err(
            "access: register bits are read-only (use a coil or the whole register)".into(),
        );
    }
    let count = match (data_type, p.length) {
        (DataType::String, None) => {
            return Err("length: a string point needs `length` (registers)".into());
        }
        (DataType::String, Some(n)) if n == 0 || n > MAX_REGISTERS => {
            return Err(format!("length: from 1 to {MAX_REGISTERS} registers"));
        }
        (DataType::String, Some(n)) => n,
        (_, Some(_)) => return Err("length: only for string points".into()),
        (_, None) if area.is_bits() || bit.is_some() => 1,
        (t, None) => t.registers(0),
    };
    let s = Spec {
        area,
        address,
        count,
        data_type,
        bit,
        byte_order: p.byte_order,
        word_order: p.word_order,
    };
    if s.end() > 65536 {
        return Err(format!(
            "address: {count} registers from {address} go past 65535"
        ));
    }
    Ok(s)
}

/// Join the points into as few reads as the limits allow: per table, by
/// address, a point joins the current read when it starts at most
/// `max_gap` after the read's end and the read stays within its limit.
pub fn coalesce(specs: &[Spec]) -> Vec<Read> {
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by_key(|&i| (specs[i].area, specs[i].address, i));
    let mut reads: Vec<Read> = Vec::new();
    for i in order {
        let s = &specs[i];
        if let Some(r) = reads.last_mut()
            && r.area == s.area
        {
            let start = u32::from(r.address);
            let end = start + u32::from(r.count);
            let new_end = end.max(s.end());
            let near = u32::from(s.address) <= end + u32::from(s.area.max_gap());
            if near && new_end - start <= u32::from(s.area.max_span()) {
                // Fits: `new_end - start` is at most max_span, so u16.
                r.count = u16::try_from(new_end - start).unwrap_or(r.count);
                r.points.push((i, s.address - r.address));
                continue;
            }
        }
        reads.push(Read {
            area: s.area,
            address: s.address,
            count: s.count,
            points: vec![(i, 0)],
        });
    }
    reads
}

/// One read per point of `read` (after the device refused the joined one).
pub fn split(read: &Read, specs: &[Spec]) -> Vec<Read> {
    read.points
        .iter()
        .map(|&(i, _)| Read {
            area: specs[i].area,
            address: specs[i].address,
            count: specs[i].count,
            points: vec![(i, 0)],
        })
        .collect()
}
