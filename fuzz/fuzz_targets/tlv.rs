#![no_main]
use libfuzzer_sys::fuzz_target;
use tapstack_protocol::tlv;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = tlv::parse_exact(data) {
        let mut out = Vec::new();
        tlv::write(&mut out, t.tag, t.value);
        assert_eq!(out, data);
    }
    let mut r = tlv::Reader::new(data);
    let mut n = 0;
    while let Ok(Some(_)) = r.any() {
        n += 1;
        assert!(n <= data.len());
    }
});
