//! DL/T 645-2007: the meter frame decoder and the value formats, on bytes
//! as a meter (or anything on the serial line) sends them.
//! - decoding never panics and never claims more bytes than it was given;
//! - a decoded frame re-encodes to a frame that decodes to it;
//! - a stream decoder sees the same: every shorter prefix of the bytes a
//!   frame used is `Incomplete`, so a frame is never taken early;
//! - the data after a known identifier decodes as its format, and a
//!   decoded value encodes to bytes that decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verge_drivers::dlt645::codec::{DecodeError, decode, encode};
use verge_drivers::dlt645::ids::{self, DataId};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((frame, used)) = decode(rest) {
        assert!(used > 0 && used <= rest.len());
        for cut in (used.saturating_sub(16)..used).chain([0, used / 2]) {
            assert_eq!(
                decode(&rest[..cut]),
                Err(DecodeError::Incomplete),
                "prefix {cut}"
            );
        }
        rest = &rest[used..];
        let again = encode(&frame, 0).expect("a decoded frame fits");
        assert_eq!(decode(&again), Ok((frame.clone(), again.len())));
        // the data after an identifier, read as that identifier's value
        if let Some((di, value)) = frame.data.split_first_chunk::<4>()
            && let Some(info) = ids::lookup(DataId::from_wire(*di))
            && let Ok(v) = ids::decode(info.format, value)
        {
            let bytes = ids::encode(info.format, &v).expect("a decoded value encodes");
            assert_eq!(
                ids::decode(info.format, &bytes).as_ref(),
                Ok(&v),
                "{info:?}"
            );
        }
    }
});
