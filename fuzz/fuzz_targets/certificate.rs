#![no_main]
use libfuzzer_sys::fuzz_target;
use tapstack_protocol::pki::{Certificate, Role};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Certificate::from_der(data) {
        assert_eq!(c.der(), data);
        let pki = tapstack_fuzz::pki();
        let _ = pki.host_trust().verify(&c, Role::Wallet, pki.now, None);
        let _ = pki.host_trust().verify(&c, Role::Terminal, pki.now, None);
        // Kiosk endorsements: sites only on kiosks, and a verified kiosk
        // chains to the operator.
        assert!(c.endorsed_sites().is_empty() == (c.role() != Role::Kiosk));
        if pki.host_trust().verify(&c, Role::Kiosk, pki.now, None).is_ok() {
            assert!(c.is_signed_by(&pki.operator.cert));
        }
        for s in c.endorsed_sites() {
            assert!(c.endorses_site(s));
        }
    }
});
