//! Fuzz the DL/T 645 frame decoder and value formats: arbitrary bytes never
//! panic, and whatever decodes re-encodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use verge_drivers::dlt645::codec::{decode, encode};
use verge_drivers::dlt645::ids::{self, DataId};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((frame, used)) = decode(rest) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
        let again = encode(&frame, 0).expect("a decoded frame fits");
        assert_eq!(decode(&again), Ok((frame.clone(), again.len())));
        // the data after an identifier, read as that identifier's value
        if let Some((di, value)) = frame.data.split_first_chunk::<4>()
            && let Some(info) = ids::lookup(DataId::from_wire(*di))
        {
            let _ = ids::decode(info.format, value);
        }
    }
});
