#![no_main]
//! Sealed-message padding (v2): `unpad` never panics, accepts only whole
//! 128-byte classes ending in `80 00…`, and `pad` then `unpad` gives the
//! message back at any floor.
use libfuzzer_sys::fuzz_target;
use tapstack_protocol::messages::{pad, unpad, SIZE_CLASS};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = unpad(data) {
        assert_eq!(data.len() % SIZE_CLASS, 0);
        assert!(m.len() < data.len());
        assert_eq!(data[m.len()], 0x80);
        assert!(data[m.len() + 1..].iter().all(|&b| b == 0));
    }
    let floor = usize::from(data.first().copied().unwrap_or(0)) * 8;
    let padded = pad(data, floor);
    assert_eq!(padded.len() % SIZE_CLASS, 0);
    assert!(padded.len() > data.len().max(floor));
    assert_eq!(unpad(&padded).ok(), Some(data));
});
