#![no_main]
//! Compact certificates off the air: never a panic; whatever rebuilds to
//! DER re-encodes (decode → DER → encode) and rebuilds to the same DER.
use libfuzzer_sys::fuzz_target;
use tapstack_protocol::compact;

fuzz_target!(|data: &[u8]| {
    let pki = tapstack_fuzz::pki();
    let cas = [&pki.root.cert, &pki.issuer.cert, &pki.acquirer.cert];
    let resolve = |r: &[u8; compact::ISSUER_REF_LEN]| {
        cas.iter()
            .find(|c| compact::issuer_ref(c.subject_name()) == *r)
            .map(|c| c.subject_name().to_vec())
    };
    if let Ok(der) = compact::decompress(data, resolve) {
        let again = compact::compress(&der).expect("a decoded certificate re-encodes");
        assert_eq!(compact::decompress(&again, resolve).ok().as_deref(), Some(&der[..]));
    }
    let _ = compact::from_wire(data, cas);
});
