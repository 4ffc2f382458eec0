//! MQTT 3.1.1: the broker's packet decoder on arbitrary bytes (see
//! `verge_fuzz::mqtt` for what is checked).
#![no_main]

use libfuzzer_sys::fuzz_target;
use verge_mqtt::Protocol;

fuzz_target!(|data: &[u8]| verge_fuzz::mqtt(data, Protocol::V311));
