//! Unit tests of the pure parts: address and type checks, coalescing, and
//! register ↔ value conversion in every type and order (with property
//! tests that encoding then decoding gives the value back).

use proptest::prelude::*;
use serde_json::{Value, json};

use super::codec::{decode, encode, encode_bool, exception_name};
use super::plan::{self, Area, MAX_REGISTERS, Spec};
use crate::config::{ByteOrder, PointConfig};

fn point(v: Value) -> PointConfig {
    let mut v = v;
    v["name"] = json!("p");
    serde_json::from_value(v).expect("point")
}

fn spec(v: Value) -> Result<Spec, String> {
    plan::spec(&point(v))
}

fn ok(v: Value) -> Spec {
    spec(v).expect("valid point")
}

#[test]
fn addresses_and_types_are_checked_with_the_key_named() {
    let s = ok(json!({"address": "hr:10", "type": "f64"}));
    assert_eq!((s.area, s.address, s.count), (Area::HoldingRegister, 10, 4));
    assert_eq!(
        ok(json!({"address": "coil:3"})).data_type,
        crate::DataType::Bool
    );
    assert_eq!(
        ok(json!({"address": "ir:3"})).data_type,
        crate::DataType::U16
    );
    assert_eq!(ok(json!({"address": " HR:7.15 "})).bit, Some(15));
    for (p, want) in [
        (json!({"address": "x:1"}), "address: unknown Modbus table"),
        (json!({"address": "hr"}), "address:"),
        (
            json!({"address": "hr:65536"}),
            "not a number from 0 to 65535",
        ),
        (json!({"address": "hr:-1"}), "not a number"),
        (
            json!({"address": "hr:65535", "type": "u32"}),
            "go past 65535",
        ),
        (json!({"address": "hr:1.16"}), "bit"),
        (json!({"address": "coil:1.2"}), "for `ir` and `hr` only"),
        (json!({"address": "coil:1", "type": "u16"}), "type: a coil"),
        (json!({"address": "di:1", "type": "f32"}), "discrete input"),
        (json!({"address": "hr:1", "type": "bool"}), "needs the bit"),
        (
            json!({"address": "hr:1.3", "type": "u16"}),
            "register bit is bool",
        ),
        (
            json!({"address": "hr:1", "type": "string"}),
            "length: a string",
        ),
        (
            json!({"address": "hr:1", "type": "string", "length": 126}),
            "length: from 1",
        ),
        (json!({"address": "hr:1", "length": 2}), "only for string"),
        (json!({"address": "di:1", "access": "rw"}), "access:"),
        (json!({"address": "ir:1", "access": "rw"}), "access:"),
        (
            json!({"address": "hr:1.0", "access": "rw"}),
            "access: register bits",
        ),
    ] {
        let e = spec(p.clone()).expect_err("invalid");
        assert!(e.contains(want), "{p}: {e}");
    }
}

fn specs(addrs: &[(&str, &str)]) -> Vec<Spec> {
    addrs
        .iter()
        .map(|(a, t)| ok(json!({"address": a, "type": t})))
        .collect()
}

#[test]
fn nearby_points_of_one_table_share_a_read() {
    let s = specs(&[
        ("hr:0", "u16"),
        ("hr:1", "f32"),
        ("hr:11", "u16"), // gap of 8 after hr:1..3: joined
        ("hr:21", "u16"), // gap of 9: a new read
        ("ir:0", "u16"),
        ("coil:0", "bool"),
        ("coil:70", "bool"), // 69 bits apart: a new read
        ("hr:2", "u16"),     // overlaps the f32
    ]);
    let reads = plan::coalesce(&s);
    let shape: Vec<(Area, u16, u16)> = reads.iter().map(|r| (r.area, r.address, r.count)).collect();
    assert_eq!(
        shape,
        vec![
            (Area::Coil, 0, 1),
            (Area::Coil, 70, 1),
            (Area::InputRegister, 0, 1),
            (Area::HoldingRegister, 0, 12),
            (Area::HoldingRegister, 21, 1),
        ]
    );
    assert_eq!(reads[3].points, vec![(0, 0), (1, 1), (7, 2), (2, 11)]);
}

#[test]
fn a_read_never_exceeds_the_protocol_limits() {
    let many: Vec<Spec> = (0..1000u16)
        .map(|i| ok(json!({"address": format!("hr:{}", i * 2), "type": "u32"})))
        .collect();
    let reads = plan::coalesce(&many);
    // 62 two-register values (124 registers) per read: 2,000 registers in 17.
    assert_eq!(reads.len(), 17);
    assert!(reads.iter().all(|r| r.count <= MAX_REGISTERS));
    let bits: Vec<Spec> = (0..5000u16)
        .map(|i| ok(json!({"address": format!("coil:{i}")})))
        .collect();
    let reads = plan::coalesce(&bits);
    assert_eq!(reads.len(), 3);
    assert!(reads.iter().all(|r| r.count <= 2000));
    // Every point is served once, inside its read.
    let served: usize = reads.iter().map(|r| r.points.len()).sum();
    assert_eq!(served, 5000);
}

#[test]
fn a_refused_joined_read_splits_into_one_per_point() {
    let s = specs(&[("hr:0", "u16"), ("hr:4", "i32")]);
    let reads = plan::coalesce(&s);
    assert_eq!(reads.len(), 1);
    let parts = plan::split(&reads[0], &s);
    let shape: Vec<(u16, u16)> = parts.iter().map(|r| (r.address, r.count)).collect();
    assert_eq!(shape, vec![(0, 1), (4, 2)]);
}

fn typed(t: &str, bo: &str, wo: &str) -> Spec {
    let mut v = json!({"address": "hr:0", "type": t, "byte_order": bo, "word_order": wo});
    if t == "string" {
        v["length"] = json!(4);
    }
    ok(v)
}

#[test]
fn registers_decode_by_type_and_order() {
    let be = |t| typed(t, "big", "big");
    assert_eq!(decode(&be("u16"), &[0xFFFE]), Ok(json!(65534)));
    assert_eq!(decode(&be("i16"), &[0xFFFE]), Ok(json!(-2)));
    assert_eq!(decode(&be("u32"), &[0x0001, 0x0002]), Ok(json!(65538)));
    assert_eq!(decode(&be("i32"), &[0xFFFF, 0xFFFF]), Ok(json!(-1)));
    assert_eq!(decode(&be("f32"), &[0x41AC, 0x0000]), Ok(json!(21.5)));
    assert_eq!(decode(&be("f32"), &[0x3DCC, 0xCCCD]), Ok(json!(0.1)));
    assert_eq!(decode(&be("f64"), &[0x4035, 0x8000, 0, 0]), Ok(json!(21.5)));
    assert_eq!(
        decode(&be("string"), &[0x6869, 0x2100, 0, 0]),
        Ok(json!("hi!"))
    );
    // Word order: low word first.
    assert_eq!(
        decode(&typed("u32", "big", "little"), &[0x0002, 0x0001]),
        Ok(json!(65538))
    );
    assert_eq!(
        decode(&typed("f32", "big", "little"), &[0x0000, 0x41AC]),
        Ok(json!(21.5))
    );
    // Byte order: bytes swapped in each register.
    assert_eq!(
        decode(&typed("u16", "little", "big"), &[0x3412]),
        Ok(json!(0x1234))
    );
    assert_eq!(
        decode(&typed("u32", "little", "little"), &[0x0200, 0x0100]),
        Ok(json!(65538))
    );
    assert_eq!(
        decode(&typed("string", "little", "big"), &[0x6968, 0x0021, 0, 0]),
        Ok(json!("hi!"))
    );
    // A register bit.
    let bit = ok(json!({"address": "hr:0.3"}));
    assert_eq!(decode(&bit, &[0b1000]), Ok(json!(true)));
    assert_eq!(decode(&bit, &[0b0111]), Ok(json!(false)));
}

#[test]
fn bad_registers_are_point_errors_not_panics() {
    let nan = decode(&typed("f32", "big", "big"), &[0x7FC0, 0]).expect_err("NaN");
    assert!(nan.message.contains("finite"));
    assert!(decode(&typed("u32", "big", "big"), &[1]).is_err());
    assert!(decode(&typed("f64", "big", "big"), &[]).is_err());
    assert_eq!(
        decode(&typed("string", "big", "big"), &[0xFFFE, 0x4142, 0, 0]),
        Ok(json!("\u{FFFD}\u{FFFD}AB"))
    );
}

#[test]
fn values_to_write_are_checked() {
    let u16s = typed("u16", "big", "big");
    assert_eq!(encode(&u16s, &json!(65535)), Ok(vec![0xFFFF]));
    assert_eq!(encode(&u16s, &json!(214.99999999997)), Ok(vec![215]));
    assert!(encode(&u16s, &json!(65536)).is_err());
    assert!(encode(&u16s, &json!(-1)).is_err());
    assert!(encode(&u16s, &json!("1")).is_err());
    assert!(encode(&typed("string", "big", "big"), &json!("123456789")).is_err());
    assert!(encode(&typed("f32", "big", "big"), &json!("x")).is_err());
    assert_eq!(encode_bool(&json!(1)), Ok(true));
    assert_eq!(encode_bool(&json!(false)), Ok(false));
    assert!(encode_bool(&json!(2)).is_err());
    assert_eq!(
        exception_name(tokio_modbus::ExceptionCode::IllegalDataAddress),
        "illegal data address"
    );
    assert_eq!(
        exception_name(tokio_modbus::ExceptionCode::Custom(0x42)),
        "exception code 0x42"
    );
}

/// Issue 17, drivers 2: an f32 write of 1e40 answered `ok` and wrote
/// +infinity into the device.
#[test]
fn f32_write_out_of_range_is_refused() {
    let f32s = typed("f32", "big", "big");
    for v in [json!(1e40), json!(-3.5e38), json!(f64::MAX)] {
        let e = encode(&f32s, &v).expect_err("refused");
        assert!(e.contains("out of range"), "{e}");
    }
    // The largest f32 itself, and a value that only loses precision.
    let words = encode(&f32s, &json!(3.4e38)).expect("in range");
    assert_eq!(decode(&f32s, &words), Ok(json!(3.4e38)));
    let words = encode(&f32s, &json!(0.1)).expect("in range");
    assert_eq!(decode(&f32s, &words), Ok(json!(0.1)));
}

/// Issue 17, drivers 7: 4.7 written to a u16 gave the device 5 (and
/// `true` gave it 1) while the reply echoed the value asked for.
#[test]
fn lossy_integer_write_is_refused() {
    for t in ["u16", "i16", "u32", "i32"] {
        let s = typed(t, "big", "big");
        let e = encode(&s, &json!(4.7)).expect_err("a fraction");
        assert!(e.contains("not a whole number"), "{t}: {e}");
        let e = encode(&s, &json!(true)).expect_err("a bool");
        assert!(e.contains("not a number"), "{t}: {e}");
        // Whole numbers, also as floats, are written as they are.
        let words = encode(&s, &json!(5.0)).expect("whole");
        assert_eq!(decode(&s, &words), Ok(json!(5)));
    }
    // A fraction is refused at any magnitude, not only where it is large
    // against the number.
    for (t, v) in [("u32", 1_000_000_000.5), ("i32", -2_000_000_000.5)] {
        let s = typed(t, "big", "big");
        let e = encode(&s, &json!(v)).expect_err("a fraction of a large number");
        assert!(e.contains("not a whole number"), "{t}: {e}");
    }
}

fn order() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("big"), Just("little")]
}

proptest! {
    #[test]
    fn integers_round_trip(v in any::<i32>(), bo in order(), wo in order()) {
        let s = typed("i32", bo, wo);
        let words = encode(&s, &json!(v)).expect("encodes");
        prop_assert_eq!(decode(&s, &words), Ok(json!(v)));
    }

    #[test]
    fn doubles_round_trip(v in -1e300f64..1e300, bo in order(), wo in order()) {
        let s = typed("f64", bo, wo);
        let words = encode(&s, &json!(v)).expect("encodes");
        prop_assert_eq!(decode(&s, &words), Ok(json!(v)));
    }

    #[test]
    fn any_registers_decode_without_panic(words in proptest::collection::vec(any::<u16>(), 0..6),
                                          t in prop_oneof![Just("u16"), Just("i32"), Just("f32"), Just("f64"), Just("string")],
                                          bo in order(), wo in order()) {
        let _ = decode(&typed(t, bo, wo), &words);
    }
}

#[test]
fn orders_default_to_big() {
    let s = ok(json!({"address": "hr:0", "type": "u32"}));
    assert_eq!(
        (s.byte_order, s.word_order),
        (ByteOrder::Big, ByteOrder::Big)
    );
}
