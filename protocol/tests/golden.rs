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

fn hex_line(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<String>() + "\n"
}

/// The certificates a host needs to re-verify the golden records: the
/// root, the issuer (wallets), the acquirer (terminals), the operator
/// (pickup credentials) and the terminal itself, as PEM, in that order.
const RECORD_PKI: [&str; 5] = ["root", "issuer", "acquirer", "operator", "terminal"];

fn record_trust() -> (TrustStore, Certificate) {
    let pem = |n: &str| {
        Certificate::from_pem(
            &std::fs::read_to_string(golden(&format!("records-{n}.pem"))).unwrap(),
        )
        .unwrap()
    };
    let mut trust = TrustStore::new();
    trust.add_root(pem("root")).unwrap();
    for n in &RECORD_PKI[1..4] {
        trust.add_intermediate(pem(n)).unwrap();
    }
    (trust, pem("terminal"))
}

/// Golden transaction records (`E6`, protocol v2): what a terminal's queue
/// holds and uploads, and what the host stores. A pay record (first
/// encounter) and a pickup record (kiosk endorsement, credential), each
/// chained to the previous. Records written by an older release must still
/// decode, re-encode to the same bytes and verify at the host.
#[test]
fn the_transaction_record_format_is_pinned() {
    use tapstack_protocol::record::{check_chain, verify_record, TransactionRecord};
    use tapstack_protocol::scenario::{Amount, Currency, Scenario};
    use tapstack_protocol::terminal::TapParams;

    if std::env::var_os("TAPTEST_BLESS").is_some() {
        let pki = Pki::generate(&mut OsRng);
        let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
        let pay = TapParams {
            scenario: Scenario::Pay {
                amount: Amount {
                    minor: 1250,
                    currency: Currency::new("CNY").unwrap(),
                },
            },
            cvm_limit: 1_000_000,
            send_certificate: true,
        };
        w.credentials.push(pki.credential(
            &pki.wallet.cert,
            "LOCKER-7",
            12,
            "SF1234567890",
            &mut OsRng,
        ));
        let pickup = TapParams {
            scenario: Scenario::Pickup {
                site: "LOCKER-7".into(),
            },
            cvm_limit: 0,
            send_certificate: true,
        };
        let mut prev = [0u8; 32];
        for (seq, (name, params)) in [("pay", pay), ("pickup", pickup)].into_iter().enumerate() {
            w.arm(pki.now, 60);
            let run = pki.run_tap(&mut t, &mut w, params, &mut OsRng);
            let outcome = run.outcome.unwrap_or_else(|| panic!("{:?}", run.error));
            let rec = TransactionRecord::new(
                &outcome,
                &pki.terminal.cert,
                &pki.terminal.key,
                seq as u64 + 1,
                prev,
                pki.now,
                None,
                None,
            );
            prev = rec.hash();
            std::fs::write(golden(&format!("record-{name}.tlv")), rec.to_bytes()).unwrap();
        }
        // The issuer master key (demo PKI only): the host checks cryptograms.
        std::fs::write(
            golden("records-issuer-master.hex"),
            hex_line(&pki.issuer_master_key.0),
        )
        .unwrap();
        let certs = [
            &pki.root,
            &pki.issuer,
            &pki.acquirer,
            &pki.operator,
            &pki.terminal,
        ];
        for (n, id) in RECORD_PKI.iter().zip(certs) {
            std::fs::write(golden(&format!("records-{n}.pem")), id.cert.to_pem()).unwrap();
        }
    }
    let (trust, terminal) = record_trust();
    let mut prev = None;
    for (name, seq) in [("pay", 1u64), ("pickup", 2)] {
        let bytes = std::fs::read(golden(&format!("record-{name}.tlv"))).unwrap();
        let rec = TransactionRecord::decode(&bytes).unwrap();
        assert_eq!(
            rec.to_bytes(),
            bytes,
            "{name}: re-encodes to the same bytes"
        );
        assert_eq!(rec.seq, seq);
        check_chain(prev, &rec).unwrap();
        let v = verify_record(&rec, &terminal, &trust, None)
            .unwrap_or_else(|e| panic!("{name}: an old record no longer verifies: {e}"));
        match (name, &v.scenario) {
            ("pay", Scenario::Pay { amount }) => {
                assert_eq!(
                    (amount.minor, amount.currency.to_string().as_str()),
                    (1250, "CNY")
                );
                assert!(v.cryptogram.is_some() && v.credential.is_none());
            }
            ("pickup", Scenario::Pickup { site }) => {
                assert_eq!(site, "LOCKER-7");
                let c = v
                    .credential
                    .as_ref()
                    .expect("a pickup record holds its credential");
                assert_eq!((c.slot, c.parcel.as_str()), (12, "SF1234567890"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(v.time, 1_780_000_000);
        prev = Some((rec.seq, rec.hash()));
    }
}
