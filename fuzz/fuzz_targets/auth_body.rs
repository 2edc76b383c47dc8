#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tapstack_fuzz::roundtrip::<tapstack_protocol::messages::AuthBody>(data));
