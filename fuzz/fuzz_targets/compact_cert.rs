#![no_main]
//! Compact certificates off the air: never a panic; whatever rebuilds to
//! DER re-encodes (decode → DER → encode) and rebuilds to the same DER.
//! The input is tried as it is and as an XOR mask over a valid compact
//! certificate (so the fuzzer starts inside the format).
use libfuzzer_sys::fuzz_target;
use tapstack_protocol::compact;

fn property(bytes: &[u8]) {
    let pki = tapstack_fuzz::pki();
    let cas = [&pki.root.cert, &pki.issuer.cert, &pki.acquirer.cert];
    let resolve = |r: &[u8; compact::ISSUER_REF_LEN]| {
        cas.iter()
            .find(|c| compact::issuer_ref(c.subject_name()) == *r)
            .map(|c| c.subject_name().to_vec())
    };
    if let Ok(der) = compact::decompress(bytes, resolve) {
        let again = compact::compress(&der).expect("a decoded certificate re-encodes");
        assert_eq!(
            compact::decompress(&again, resolve).ok().as_deref(),
            Some(&der[..])
        );
    }
    let _ = compact::from_wire(bytes, cas);
}

fuzz_target!(|data: &[u8]| {
    property(data);
    let mut masked = compact::to_wire(&tapstack_fuzz::pki().terminal.cert);
    for (i, b) in data.iter().enumerate() {
        match masked.get_mut(i) {
            Some(m) => *m ^= b,
            None => masked.push(*b),
        }
    }
    property(&masked);
});
