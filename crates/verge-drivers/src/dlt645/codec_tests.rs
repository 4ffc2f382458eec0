//! Golden vectors (written out by hand from the standard's frame layout)
//! and property tests for the DL/T 645 codec and value formats.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::{Value, json};

use super::codec::{self, Address, DecodeError, Frame, control, decode, encode};
use super::ids::{self, DataId, Format, lookup};

/// Read phase A voltage (02010100) from meter 123456789012.
const READ_VOLTAGE: [u8; 16] = [
    0x68, // start
    0x12, 0x90, 0x78, 0x56, 0x34, 0x12, // address 12 34 56 78 90 12, lowest byte first
    0x68, // start again
    0x11, // control: read data, master → meter
    0x04, // length: the identifier's 4 bytes
    0x33, 0x34, 0x34, 0x35, // DI0..DI3 = 00 01 01 02, each +33h
    0x6B, // checksum: sum of 68..35 mod 256
    0x16, // end
];

/// Its answer: 220.1 V.
const VOLTAGE_ANSWER: [u8; 18] = [
    0x68, 0x12, 0x90, 0x78, 0x56, 0x34, 0x12, 0x68, // start, address, start
    0x91, // control: read answered, meter → master, nothing follows
    0x06, // length: identifier + 2 value bytes
    0x33, 0x34, 0x34, 0x35, // identifier 02010100, +33h
    0x34, 0x55, // 01 22 (+33h): BCD 2201 lowest byte first = 220.1 V
    0x76, // checksum
    0x16, // end
];

/// Read combined active energy (00000000) from any meter, after the usual
/// four-byte FEh preamble.
const READ_ENERGY_WILDCARD: [u8; 20] = [
    0xFE, 0xFE, 0xFE, 0xFE, // preamble
    0x68, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0x68, // start, wildcard address, start
    0x11, 0x04, // read data, 4 bytes
    0x33, 0x33, 0x33, 0x33, // identifier 00000000, +33h
    0xAD, // checksum
    0x16, // end
];

/// Meter 000000000001 answers 12345.67 kWh.
const ENERGY_ANSWER: [u8; 20] = [
    0x68, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x68, // address 000000000001
    0x91, 0x08, // read answered, 8 bytes
    0x33, 0x33, 0x33, 0x33, // identifier 00000000
    0x9A, 0x78, 0x56, 0x34, // 67 45 23 01 (+33h): 012345.67 kWh
    0xD2, // checksum
    0x16, // end
];

/// Meter 000000000001 refuses: error byte 02h, no data requested.
const ERROR_ANSWER: [u8; 13] = [
    0x68, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x68, // address 000000000001
    0xD1, 0x01, // read refused, 1 byte
    0x35, // 02 + 33h: bit 1, no data requested
    0xD8, // checksum
    0x16, // end
];

/// Phase A current 02020100 = -1.234 A: sign in the top bit.
const NEGATIVE_CURRENT_ANSWER: [u8; 19] = [
    0x68, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x68, // address 000000000001
    0x91, 0x07, // read answered, 7 bytes
    0x33, 0x34, 0x35, 0x35, // identifier 02020100
    0x67, 0x45, 0xB3, // 34 12 80 (+33h): 001.234 with the sign bit set
    0x99, // checksum
    0x16, // end
];

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

#[test]
fn golden_requests_encode() {
    let voltage = Frame {
        address: addr("123456789012"),
        control: control::READ,
        data: DataId(0x0201_0100).wire().to_vec(),
    };
    assert_eq!(encode(&voltage, 0).unwrap(), READ_VOLTAGE);
    let energy = Frame {
        address: Address::WILDCARD,
        control: control::READ,
        data: DataId(0).wire().to_vec(),
    };
    assert_eq!(encode(&energy, 4).unwrap(), READ_ENERGY_WILDCARD);
}

#[test]
fn golden_answers_decode() {
    let (f, used) = decode(&VOLTAGE_ANSWER).unwrap();
    assert_eq!(used, VOLTAGE_ANSWER.len());
    assert_eq!(f.address.to_string(), "123456789012");
    assert_eq!(f.control, control::READ_OK);
    assert_eq!(f.data, [0x00, 0x01, 0x01, 0x02, 0x01, 0x22]);
    let v = lookup(DataId(0x0201_0100)).unwrap();
    assert_eq!(ids::decode(v.format, &f.data[4..]).unwrap(), json!(220.1));

    let (f, _) = decode(&ENERGY_ANSWER).unwrap();
    let e = lookup(DataId(0)).unwrap();
    assert_eq!(
        ids::decode(e.format, &f.data[4..]).unwrap(),
        json!(12345.67)
    );

    let (f, _) = decode(&NEGATIVE_CURRENT_ANSWER).unwrap();
    let c = lookup(DataId(0x0202_0100)).unwrap();
    assert_eq!(ids::decode(c.format, &f.data[4..]).unwrap(), json!(-1.234));

    let (f, _) = decode(&ERROR_ANSWER).unwrap();
    assert_eq!(f.control, control::READ_ERROR);
    assert_eq!(codec::error_names(f.data[0]), "no data requested");
}

#[test]
fn preamble_is_skipped_and_counted() {
    let (f, used) = decode(&READ_ENERGY_WILDCARD).unwrap();
    assert_eq!(used, READ_ENERGY_WILDCARD.len());
    assert_eq!(f.address, Address::WILDCARD);
}

#[test]
fn bad_checksum_and_end_are_errors() {
    let mut b = VOLTAGE_ANSWER;
    b[16] ^= 1;
    assert!(matches!(decode(&b), Err(DecodeError::Checksum { .. })));
    let mut b = VOLTAGE_ANSWER;
    b[17] = 0x17;
    assert_eq!(decode(&b), Err(DecodeError::End(0x17)));
}

#[test]
fn error_bits_are_named() {
    assert_eq!(codec::error_names(0x01), "other error");
    assert_eq!(codec::error_names(0x04), "password error or unauthorized");
    assert_eq!(
        codec::error_names(0x48),
        "baud rate cannot be changed, tariffs exceeded"
    );
    assert_eq!(codec::error_names(0), "error with no reason given");
}

#[test]
fn addresses() {
    assert_eq!(addr("000000000001").0, [1, 0, 0, 0, 0, 0]);
    assert_eq!(addr("AAAAAAAAAAAA"), Address::WILDCARD);
    assert!(Address::WILDCARD.matches(&addr("123456789012")));
    assert!(!addr("000000000001").matches(&addr("000000000002")));
    for bad in [
        "",
        "12345678901",
        "1234567890123",
        "12345678901x",
        "A23456789012",
    ] {
        assert!(Address::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn identifiers() {
    for known in [
        "00000000", "00010000", "00020000", "0001010C", "02010300", "02030000", "02800002",
        "04000101",
    ] {
        assert!(lookup(DataId::parse(known).unwrap()).is_some(), "{known}");
    }
    for unknown in [
        "0001FF00", "02010000", "02010400", "0201FF00", "FFFFFFFF", "0000000D",
    ] {
        assert!(
            lookup(DataId::parse(unknown).unwrap()).is_none(),
            "{unknown}"
        );
    }
    assert!(DataId::parse("0201010").is_err());
    assert!(DataId::parse("0201010g").is_err());
    assert_eq!(DataId(0x0201_0100).wire(), [0x00, 0x01, 0x01, 0x02]);
}

#[test]
fn value_formats() {
    let pf = lookup(DataId(0x0206_0000)).unwrap().format;
    assert_eq!(ids::decode(pf, &[0x50, 0x89]).unwrap(), json!(-0.95));
    let hz = lookup(DataId(0x0280_0002)).unwrap().format;
    assert_eq!(ids::decode(hz, &[0x01, 0x50]).unwrap(), json!(50.01));
    let minutes = lookup(DataId(0x0280_000A)).unwrap().format;
    assert_eq!(
        ids::decode(minutes, &[0x21, 0x43, 0, 0]).unwrap(),
        json!(4321)
    );
    assert_eq!(
        ids::decode(Format::Date, &[0x03, 0x31, 0x12, 0x25]).unwrap(),
        json!("2025-12-31")
    );
    assert_eq!(
        ids::decode(Format::Time, &[0x59, 0x30, 0x23]).unwrap(),
        json!("23:30:59")
    );
    assert_eq!(
        ids::decode(Format::Digits, &[0x12, 0x90, 0x78, 0x56, 0x34, 0x12]).unwrap(),
        json!("123456789012")
    );
    assert!(matches!(
        ids::decode(hz, &[0x0A, 0x50]),
        Err(ids::ValueError::NotBcd(0x0A))
    ));
    assert!(matches!(
        ids::decode(hz, &[0x01]),
        Err(ids::ValueError::Length {
            got: 1,
            expected: 2
        })
    ));
    for f in [Format::Date, Format::Time, Format::Digits] {
        let text = ids::decode(f, &vec![0x11; f.size()]).unwrap();
        let mut expected = vec![0x11; f.size()];
        if f == Format::Date {
            expected[0] = 0; // the week day is not published, so not kept
        }
        assert_eq!(ids::encode(f, &text).unwrap(), expected);
    }
    // too large: clamped to what fits, sign kept
    let volts = lookup(DataId(0x0201_0100)).unwrap().format;
    assert_eq!(ids::encode(volts, &json!(12345.6)).unwrap(), [0x99, 0x99]);
    let amps = lookup(DataId(0x0202_0100)).unwrap().format;
    assert_eq!(
        ids::encode(amps, &json!(-1000.0)).unwrap(),
        [0x99, 0x99, 0xF9]
    );
}

fn any_frame() -> impl Strategy<Value = Frame> {
    (
        any::<[u8; 6]>(),
        any::<u8>(),
        proptest::collection::vec(any::<u8>(), 0..=255),
    )
        .prop_map(|(a, control, data)| Frame {
            address: Address(a),
            control,
            data,
        })
}

proptest! {
    #[test]
    fn round_trip(frame in any_frame(), preamble in 0usize..6) {
        let bytes = encode(&frame, preamble).unwrap();
        prop_assert_eq!(decode(&bytes), Ok((frame, bytes.len())));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok((f, used)) = decode(&bytes) {
            prop_assert!(used <= bytes.len());
            prop_assert!(f.data.len() <= codec::MAX_DATA);
        }
    }

    #[test]
    fn strict_prefixes_are_incomplete(frame in any_frame(), preamble in 0usize..4) {
        let bytes = encode(&frame, preamble).unwrap();
        for n in 0..bytes.len() {
            prop_assert_eq!(decode(&bytes[..n]), Err(DecodeError::Incomplete), "prefix of {}", n);
        }
    }

    #[test]
    fn garbage_before_a_frame_is_skipped(
        garbage in proptest::collection::vec(any::<u8>().prop_filter("no start byte", |b| *b != codec::START), 0..300),
        frame in any_frame(),
    ) {
        let mut bytes = garbage.clone();
        bytes.extend(encode(&frame, 0).unwrap());
        let trailing = [0x68u8, 0x01];
        bytes.extend_from_slice(&trailing);
        prop_assert_eq!(decode(&bytes), Ok((frame, bytes.len() - trailing.len())));
    }

    #[test]
    fn a_bad_checksum_is_an_error(frame in any_frame(), flip in 1u8..=255) {
        let mut bytes = encode(&frame, 0).unwrap();
        let cs = bytes.len() - 2;
        bytes[cs] ^= flip;
        let is_checksum_error = matches!(decode(&bytes), Err(DecodeError::Checksum { .. }));
        prop_assert!(is_checksum_error);
    }

    #[test]
    fn bcd_values_round_trip(id in prop::sample::select(vec![0x0000_0000u32, 0x0001_0000, 0x0201_0100, 0x0202_0200, 0x0203_0000, 0x0206_0300, 0x0280_0002, 0x0280_0007]), raw in any::<i64>()) {
        let info = lookup(DataId(id)).unwrap();
        let Format::Bcd { bytes, decimals, signed } = info.format else { unreachable!() };
        let digits = 2 * u32::from(bytes);
        let max = if signed { 8 * 10i64.pow(digits - 1) - 1 } else { 10i64.pow(digits) - 1 };
        let n = raw.rem_euclid(max + 1) * if signed && raw < 0 { -1 } else { 1 };
        let v = n as f64 / 10f64.powi(i32::from(decimals));
        let encoded = ids::encode(info.format, &json!(v)).unwrap();
        prop_assert_eq!(encoded.len(), usize::from(bytes));
        let back = ids::decode(info.format, &encoded).unwrap();
        prop_assert_eq!(back.as_f64(), Some(if n == 0 { 0.0 } else { v }));
        let _: Value = back;
    }
}
