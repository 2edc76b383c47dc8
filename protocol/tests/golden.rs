#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Golden file of the signed revocation list (`revocations.tlv`), which
//! terminals, phones and the host keep on disk and pass around: a list
//! signed by an older release must still decode, verify and re-encode to
//! the same bytes. Regenerate only on purpose:
//! `TAPTEST_BLESS=1 cargo test -p tapstack-protocol --test golden`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rand_core::OsRng;
use tapstack_protocol::codec::Codec;
use tapstack_protocol::pki::{Certificate, TrustStore};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::testkit::Pki;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn expected_entries() -> (BTreeMap<[u8; 32], u64>, BTreeMap<[u8; 16], u64>) {
    let certificates = BTreeMap::from([([0xA1; 32], 1_767_323_045), ([0xB2; 32], 1_780_000_000)]);
    let credentials = BTreeMap::from([([0xC3; 16], 1_790_000_000)]);
    (certificates, credentials)
}

#[test]
fn the_revocation_list_format_is_pinned() {
    if std::env::var_os("TAPTEST_BLESS").is_some() {
        let pki = Pki::generate(&mut OsRng);
        let (certificates, credentials) = expected_entries();
        let mut list = RevocationList {
            number: 42,
            this_update: 1_780_000_000,
            next_update: 1_780_604_800,
            certificates,
            credentials,
            ..RevocationList::default()
        };
        list.sign(&pki.root.cert, &pki.root.key);
        std::fs::write(golden("revocations.tlv"), list.to_bytes()).unwrap();
        std::fs::write(golden("revocations-root.pem"), pki.root.cert.to_pem()).unwrap();
    }
    let bytes = std::fs::read(golden("revocations.tlv")).unwrap();
    let root =
        Certificate::from_pem(&std::fs::read_to_string(golden("revocations-root.pem")).unwrap())
            .unwrap();
    let list = RevocationList::decode(&bytes).unwrap();
    let (certificates, credentials) = expected_entries();
    assert_eq!(
        (list.number, list.this_update, list.next_update),
        (42, 1_780_000_000, 1_780_604_800)
    );
    assert_eq!(list.certificates, certificates);
    assert_eq!(list.credentials, credentials);
    assert_eq!(&list.signer, root.hash());
    let mut trust = TrustStore::new();
    trust.add_root(root).unwrap();
    list.verify(&trust).expect("an old list still verifies");
    assert_eq!(list.to_bytes(), bytes, "re-encodes to the same bytes");
}
