//! The protocol's checks with the ring backend (`fastverify::Ring`) must give
//! exactly RustCrypto's `verify_record` result — the same `Ok` value or the same error — on
//! valid records of every scenario and on hundreds of mutations, each
//! re-signed by the terminal so the check reaches past the record signature.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rand_core::{OsRng, RngCore};
use tapstack_host::fastverify::Ring;
use tapstack_protocol::crypto;
use tapstack_protocol::pki::TrustStore as FastTrust;
use tapstack_protocol::record::{check_record_signature, verify_contents, verify_contents_known};
use tapstack_protocol::record::{verify_record, TransactionRecord};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency, Scenario};
use tapstack_protocol::terminal::TapParams;
use tapstack_protocol::testkit::Pki;

fn cart() -> Cart {
    Cart {
        currency: Currency::new("CNY").unwrap(),
        items: vec![CartItem {
            sku: "TEA-01".into(),
            name: "Jasmine tea".into(),
            qty: 2,
            unit_price: 800,
        }],
    }
}

fn records(pki: &Pki) -> Vec<TransactionRecord> {
    let mut rng = OsRng;
    let mut terminal = pki.terminal_context();
    let mut wallet = pki.wallet_context();
    let cred = pki.credential(&pki.wallet.cert, "LOCKER-7", 1, "P-1", &mut rng);
    wallet.credentials.push(cred);
    let cny = Currency::new("CNY").unwrap();
    let scenarios = [
        (
            Scenario::Pay {
                amount: Amount {
                    minor: 1250,
                    currency: cny,
                },
            },
            None,
        ),
        (Scenario::order(&cart()).unwrap(), Some(cart())),
        (
            Scenario::Pickup {
                site: "LOCKER-7".into(),
            },
            None,
        ),
    ];
    let mut prev = [0; 32];
    scenarios
        .into_iter()
        .enumerate()
        .map(|(i, (scenario, cart))| {
            // A pickup needs the user's presence: the phone is armed.
            wallet.arm(pki.now, 60);
            let run = pki.run_tap(
                &mut terminal,
                &mut wallet,
                TapParams {
                    scenario,
                    cvm_limit: 1_000_000,
                    send_certificate: true,
                },
                &mut rng,
            );
            let o = run.outcome.unwrap_or_else(|| panic!("{:?}", run.error));
            let r = TransactionRecord::new(
                &o,
                &pki.terminal.cert,
                &pki.terminal.key,
                i as u64 + 1,
                prev,
                pki.now,
                cart,
                None,
            );
            prev = r.hash();
            r
        })
        .collect()
}

fn same(
    pki: &Pki,
    fast: &FastTrust,
    r: &TransactionRecord,
    revs: Option<&RevocationList>,
    what: &str,
) -> bool {
    let reference = verify_record(r, &pki.terminal.cert, &pki.host_trust(), revs);
    let ring = check_record_signature(r, &pki.terminal.cert, &Ring)
        .and_then(|()| verify_contents(r, &pki.terminal.cert, fast, revs, false, &Ring));
    assert_eq!(ring, reference, "{what}");
    // With the terminal certificate's signature known (later records of a batch).
    if reference.is_ok() || !matches!(reference, Err(tapstack_protocol::Error::Certificate { .. }))
    {
        let known = check_record_signature(r, &pki.terminal.cert, &Ring)
            .and_then(|()| verify_contents(r, &pki.terminal.cert, fast, revs, true, &Ring));
        assert_eq!(known, reference, "{what} (terminal known)");
    }
    // The host's cache of verified wallet certificates (`Ingestor`): the
    // genuine wallet certificate known, a mutated one (another hash) not —
    // validity, chain and revocation still decide as the reference does.
    let genuine = *pki.wallet.cert.hash();
    let cached = check_record_signature(r, &pki.terminal.cert, &Ring).and_then(|()| {
        verify_contents_known(
            r,
            &pki.terminal.cert,
            fast,
            revs,
            false,
            &|h| *h == genuine,
            &Ring,
        )
    });
    assert_eq!(cached, reference, "{what} (wallet certificate cached)");
    reference.is_ok()
}

#[test]
fn ring_path_equals_verify_record_on_valid_and_mutated_records() {
    let pki = Pki::generate(&mut OsRng);
    let fast = pki.host_trust();
    let mut oks = 0;
    let mut errs = std::collections::BTreeSet::new();
    for r in records(&pki) {
        assert!(same(&pki, &fast, &r, None, "valid"));
        // Flip bits inside each signed part, re-sign the record as the terminal.
        for part in 0..7 {
            let len = match part {
                0 => r.transcript.fci.len(),
                1 => r.transcript.auth_body.len(),
                2 => 64,
                3 => r.transcript.wallet_body.len(),
                4 => 64,
                5 => r.wallet_certificate.len(),
                _ => r.cart.as_ref().map_or(0, |_| 1),
            };
            for i in (0..len).step_by(3) {
                let mut m = r.clone();
                let bit = 1u8 << (OsRng.next_u32() % 8);
                match part {
                    0 => m.transcript.fci[i] ^= bit,
                    1 => m.transcript.auth_body[i] ^= bit,
                    2 => m.transcript.terminal_sig[i] ^= bit,
                    3 => m.transcript.wallet_body[i] ^= bit,
                    4 => m.transcript.wallet_sig[i] ^= bit,
                    5 => m.wallet_certificate[i] ^= bit,
                    _ => m.cart = None,
                }
                m.signature = crypto::sign(&pki.terminal.key, &m.signed_bytes());
                if same(&pki, &fast, &m, None, &format!("part {part} byte {i}")) {
                    oks += 1;
                } else {
                    errs.insert(
                        format!(
                            "{:?}",
                            verify_record(&m, &pki.terminal.cert, &pki.host_trust(), None)
                                .unwrap_err()
                        )
                        .chars()
                        .take(40)
                        .collect::<String>(),
                    );
                }
            }
        }
        // Unsigned tampering: the record signature itself.
        let mut m = r.clone();
        m.signature[5] ^= 1;
        assert!(!same(&pki, &fast, &m, None, "record signature"));
    }
    // Mutations reach many different checks, not just one.
    assert!(errs.len() >= 6, "{errs:?}");
    let _ = oks;
}

#[test]
fn ring_path_equals_verify_record_on_revocation_and_time() {
    let pki = Pki::generate(&mut OsRng);
    let fast = pki.host_trust();
    let recs = records(&pki);
    let revoke = |hash: [u8; 32]| {
        let mut l = RevocationList::default();
        l.certificates.insert(hash, 0);
        l
    };
    for r in &recs {
        for (what, list) in [
            ("terminal", revoke(*pki.terminal.cert.hash())),
            ("wallet", revoke(*pki.wallet.cert.hash())),
            ("issuer", revoke(*pki.issuer.cert.hash())),
            ("acquirer", revoke(*pki.acquirer.cert.hash())),
            ("operator", revoke(*pki.operator.cert.hash())),
            ("root", revoke(*pki.root.cert.hash())),
        ] {
            same(&pki, &fast, r, Some(&list), what);
        }
        let mut creds = RevocationList::default();
        creds.credentials.insert([0; 16], 0);
        same(&pki, &fast, r, Some(&creds), "unrelated credential");
    }
    // A pickup whose credential is revoked.
    let pickup = &recs[2];
    let body =
        tapstack_protocol::messages::WalletBody::decode(&pickup.transcript.wallet_body).unwrap();
    let mut l = RevocationList::default();
    l.credentials.insert(body.credential.unwrap().id, 0);
    assert!(!same(&pki, &fast, pickup, Some(&l), "revoked credential"));

    // Another PKI's trust store: unknown issuers everywhere.
    let other = Pki::generate(&mut OsRng);
    let other_fast = other.host_trust();
    for r in &recs {
        let reference = verify_record(r, &pki.terminal.cert, &other.host_trust(), None);
        assert_eq!(
            check_record_signature(r, &pki.terminal.cert, &Ring).and_then(|()| verify_contents(
                r,
                &pki.terminal.cert,
                &other_fast,
                None,
                false,
                &Ring
            )),
            reference
        );
        assert!(reference.is_err());
    }
}

use tapstack_protocol::Codec;
