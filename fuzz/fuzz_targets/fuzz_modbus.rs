//! Modbus: what Verge reads out of a device's answers. tokio-modbus parses
//! the frame; Verge maps the parsed response (bits or registers, of any
//! length, or of the wrong function) onto a planned read's points and
//! decodes each point's registers by type, byte order and word order.
//! The input is a point table (checked and coalesced as the driver does)
//! followed by the answers.
//! - mapping and decoding never panic, whatever the answer;
//! - an answer of the wrong size or function fails the read;
//! - a decoded number (integers and floats) encodes back to exactly the
//!   registers it came from, and a register bit is that bit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokio_modbus::Response;
use verge_drivers::modbus::client::fill;
use verge_drivers::modbus::{codec, plan};
use verge_drivers::protocol::{PointError, PointResult};
use verge_drivers::{Access, ByteOrder, DataType, PointConfig};
use verge_fuzz::Choices;

const TYPES: [DataType; 8] = [
    DataType::Bool,
    DataType::U16,
    DataType::I16,
    DataType::U32,
    DataType::I32,
    DataType::F32,
    DataType::F64,
    DataType::String,
];

fn point(c: &mut Choices) -> PointConfig {
    let kind = c.byte();
    let area = ["coil", "di", "ir", "hr"][usize::from(kind & 3)];
    let addr = c.byte();
    let address = if kind & 4 != 0 {
        format!("{area}:{addr}.{}", c.byte() % 17)
    } else {
        format!("{area}:{addr}")
    };
    let t = c.byte();
    let order = |b: bool| if b { ByteOrder::Little } else { ByteOrder::Big };
    PointConfig {
        name: String::new(),
        address,
        data_type: (t & 8 == 0).then(|| TYPES[usize::from(t & 7)]),
        byte_order: order(t & 16 != 0),
        word_order: order(t & 32 != 0),
        length: (t & 64 != 0).then(|| u16::from(c.byte() % 8)),
        scale: (t & 128 != 0).then_some(0.1),
        offset: None,
        unit: None,
        access: Access::R,
        deadband: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Choices::new(data);
    let n = usize::from(c.byte() % 8) + 1;
    let points: Vec<PointConfig> = (0..n).map(|_| point(&mut c)).collect();
    let specs: Vec<(PointConfig, plan::Spec)> = points
        .into_iter()
        .filter_map(|p| plan::spec(&p).ok().map(|s| (p, s)))
        .collect();
    let (points, specs): (Vec<_>, Vec<_>) = specs.into_iter().unzip();
    for read in plan::coalesce(&specs) {
        let mut out: Vec<PointResult> = vec![Err(PointError::new("not read")); specs.len()];
        let how = c.byte();
        // mostly the size asked for; sometimes off by a little
        let len = match how >> 5 {
            0 => usize::from(c.byte()),
            1 => usize::from(read.count).saturating_sub(1),
            2 => usize::from(read.count) + 1,
            _ => usize::from(read.count),
        };
        let words: Vec<u16> = (0..len).map(|_| c.u16()).collect();
        let bits: Vec<bool> = (0..len.div_ceil(8) * 8)
            .map(|i| c.rest.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1))
            .collect();
        let resp = match (how & 7, read.area) {
            (0..=5, plan::Area::Coil) => Response::ReadCoils(bits),
            (0..=5, plan::Area::DiscreteInput) => Response::ReadDiscreteInputs(bits),
            (0..=5, plan::Area::InputRegister) => Response::ReadInputRegisters(words.clone()),
            (0..=5, plan::Area::HoldingRegister) => Response::ReadHoldingRegisters(words.clone()),
            (6, _) => Response::ReadHoldingRegisters(words.clone()),
            _ => Response::ReadCoils(bits),
        };
        let is_bits = matches!(
            resp,
            Response::ReadCoils(_) | Response::ReadDiscreteInputs(_)
        );
        if fill(&specs, &read, resp, &mut out).is_err() {
            continue;
        }
        if is_bits {
            continue;
        }
        assert_eq!(
            words.len(),
            usize::from(read.count),
            "a register answer of the wrong size"
        );
        for &(i, off) in &read.points {
            let s = &specs[i];
            let regs = &words[usize::from(off)..usize::from(off) + usize::from(s.count)];
            let Ok(v) = &out[i] else { continue };
            let _ = points[i].scaled(v.clone());
            match (s.data_type, s.bit) {
                (_, Some(bit)) => {
                    let w = match s.byte_order {
                        ByteOrder::Big => regs[0],
                        ByteOrder::Little => regs[0].swap_bytes(),
                    };
                    assert_eq!(v, &Value::Bool(w >> bit & 1 == 1));
                }
                (DataType::String | DataType::Bool, None) => {}
                (_, None) => {
                    let back = codec::encode(s, v).expect("a decoded number encodes");
                    assert_eq!(back, regs, "{s:?} decoded as {v}");
                }
            }
        }
    }
});
