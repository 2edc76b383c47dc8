#![no_main]
//! The terminal queue's high-water mark file (`<queue>.hwm`) as a damaged or
//! hostile disk could leave it: decoding never panics; a slot that decodes
//! re-encodes to the same bytes, and the file's choice is one of its slots.
use libfuzzer_sys::fuzz_target;
use tapstack_terminal::mark::{Mark, SLOT};

fuzz_target!(|data: &[u8]| {
    if let Some(m) = Mark::decode_slot(data) {
        assert_eq!(&m.encode()[..], data);
    }
    if let Ok(m) = Mark::decode_file(data) {
        let (a, b) = data.split_at(SLOT);
        assert!(Mark::decode_slot(a) == Some(m) || Mark::decode_slot(b) == Some(m));
    }
});
