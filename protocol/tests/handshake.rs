#![allow(clippy::unwrap_used, clippy::expect_used)]
//! In-memory end-to-end taps: terminal state machine ↔ wallet state machine
//! over the loopback links, no IO.

use rand_core::{CryptoRng, OsRng, RngCore};
use std::time::Duration;
use tapstack_protocol::apdu::{Command, LinkLimits, Response, StatusWord};
use tapstack_protocol::codec::Codec;
use tapstack_protocol::crypto::{self, Direction, EphemeralKey, SessionKeys};
use tapstack_protocol::error::{CredentialProblem, Error, Party};
use tapstack_protocol::messages::{
    self, AuthorizeRequest, CertOnAir, Cvm, Fci, WalletBody, WalletResponse, FLAG_EXTENDED_LENGTH,
    INS_AUTHORIZE, VERSION_2,
};
use tapstack_protocol::pki::{self, CertError, CertSpec, Role};
use tapstack_protocol::record::{check_chain, verify_record, TransactionRecord};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::{
    record_check, Amount, Cart, CartItem, Currency, Receipt, Scenario,
};
use tapstack_protocol::terminal::{TapParams, TerminalEvent, TerminalSession};
use tapstack_protocol::testkit::{self, Loopback, Pki, TapRun};
use tapstack_protocol::wallet::{WalletEvent, WalletSession};

fn cny(minor: u64) -> Amount {
    Amount {
        minor,
        currency: Currency::new("CNY").unwrap(),
    }
}

fn pay(minor: u64) -> TapParams {
    TapParams {
        scenario: Scenario::Pay { amount: cny(minor) },
        cvm_limit: 1_000_000,
        send_certificate: true,
    }
}

fn cart() -> Cart {
    Cart {
        currency: Currency::new("CNY").unwrap(),
        items: vec![
            CartItem {
                sku: "TEA-01".into(),
                name: "Jasmine tea".into(),
                qty: 2,
                unit_price: 800,
            },
            CartItem {
                sku: "BUN-07".into(),
                name: "Pork bun".into(),
                qty: 3,
                unit_price: 450,
            },
        ],
    }
}

fn record_of(
    pki: &Pki,
    run: &TapRun,
    seq: u64,
    prev: [u8; 32],
    cart: Option<Cart>,
    order: Option<&str>,
) -> TransactionRecord {
    TransactionRecord::new(
        run.outcome.as_ref().expect("approved"),
        &pki.terminal.cert,
        &pki.terminal.key,
        seq,
        prev,
        pki.now,
        cart,
        order.map(str::to_owned),
    )
}

#[test]
fn pay_tap_one_tap_three_round_trips_and_verifiable_record() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let run = pki.run_tap(&mut t, &mut w, pay(1250), &mut OsRng);
    assert_eq!(run.error, None);
    let outcome = run.outcome.as_ref().expect("approved");
    // SELECT, the timed exchange, AUTHORIZE.
    assert_eq!(run.round_trips(), 3);
    assert_eq!(outcome.atc, 1);
    assert_eq!(w.atc, 1);
    assert_eq!(outcome.cvm, Cvm::None);
    assert_eq!(outcome.wallet.hash(), pki.wallet.cert.hash());
    assert!(run.wallet_events.iter().any(|e| matches!(e, WalletEvent::Authorized { merchant, atc: 1, .. } if merchant == "Tea House #12")));

    // The record verifies as the host would, including the issuer cryptogram.
    let rec = record_of(&pki, &run, 1, [0; 32], None, None);
    let back = TransactionRecord::decode(&rec.to_bytes()).unwrap();
    assert_eq!(back, rec);
    check_chain(None, &rec).unwrap();
    let v = verify_record(&rec, &pki.terminal.cert, &pki.host_trust(), None).unwrap();
    assert_eq!(v.scenario, Scenario::Pay { amount: cny(1250) });
    let ck = pki.issuer_master_key.diversify(v.wallet.serial());
    assert!(ck.check(v.atc, &v.th1, v.cvm as u8, &v.cryptogram.unwrap()));
    let other_issuer_key =
        tapstack_protocol::crypto::IssuerMasterKey([9; 16]).diversify(v.wallet.serial());
    assert!(!other_issuer_key.check(v.atc, &v.th1, v.cvm as u8, &v.cryptogram.unwrap()));
}

#[test]
fn order_tap_binds_cart_and_delivers_receipt() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let scenario = Scenario::order(&cart()).unwrap();
    assert_eq!(scenario.amount(), Some(cny(2950)));
    let params = TapParams {
        scenario,
        cvm_limit: 1_000_000,
        send_certificate: true,
    };
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    let mut run = lb.run(&mut t, &mut w, params, pki.now, &mut OsRng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    let rec = record_of(&pki, &run, 1, [0; 32], Some(cart()), Some("A17"));
    verify_record(&rec, &pki.terminal.cert, &pki.host_trust(), None).unwrap();

    let receipt = Receipt {
        record_check: record_check(&rec.hash()),
        seq: 1,
        order_number: Some("A17".into()),
        cart: Some(cart()),
        slot: None,
    };
    assert!(lb
        .deliver_receipt(&mut run, &mut t, &mut w, &receipt, pki.now, &mut OsRng)
        .unwrap());
    assert!(run.wallet_events.iter().any(|e| matches!(e, WalletEvent::Receipt { receipt: r, .. } if r.order_number.as_deref() == Some("A17"))));
    assert_eq!(run.round_trips(), 4);

    // A record whose cart does not match the signed hash is refused.
    let mut other = cart();
    other.items[1].qty = 1;
    let bad = record_of(&pki, &run, 1, [0; 32], Some(other), Some("A17"));
    assert_eq!(
        verify_record(&bad, &pki.terminal.cert, &pki.host_trust(), None).unwrap_err(),
        Error::ReceiptMismatch
    );
    let none = record_of(&pki, &run, 1, [0; 32], None, None);
    assert_eq!(
        verify_record(&none, &pki.terminal.cert, &pki.host_trust(), None).unwrap_err(),
        Error::ReceiptMismatch
    );
}

#[test]
fn order_receipt_with_wrong_cart_is_refused_by_wallet() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let params = TapParams {
        scenario: Scenario::order(&cart()).unwrap(),
        cvm_limit: 1_000_000,
        send_certificate: true,
    };
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    let mut run = lb.run(&mut t, &mut w, params, pki.now, &mut OsRng);
    let mut other = cart();
    other.items.pop();
    let receipt = Receipt {
        record_check: [1; 4],
        seq: 1,
        order_number: Some("A18".into()),
        cart: Some(other),
        slot: None,
    };
    assert!(!lb
        .deliver_receipt(&mut run, &mut t, &mut w, &receipt, pki.now, &mut OsRng)
        .unwrap());
    assert!(run.wallet_events.iter().any(|e| matches!(
        e,
        WalletEvent::Refused {
            sw: StatusWord::WrongData
        }
    )));
}

#[test]
fn pickup_tap_checks_credential_offline() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    w.credentials.push(pki.credential(
        &pki.wallet.cert,
        "LOCKER-7",
        12,
        "SF1234567890",
        &mut OsRng,
    ));
    let params = TapParams {
        scenario: Scenario::Pickup {
            site: "LOCKER-7".into(),
        },
        cvm_limit: 0,
        send_certificate: true,
    };
    w.arm(pki.now, 60); // a pickup needs the user's presence
    let run = pki.run_tap(&mut t, &mut w, params.clone(), &mut OsRng);
    let outcome = run
        .outcome
        .as_ref()
        .unwrap_or_else(|| panic!("{:?}", run.error));
    let cred = outcome.credential.as_ref().unwrap();
    assert_eq!((cred.slot, cred.parcel.as_str()), (12, "SF1234567890"));
    assert_eq!(outcome.cryptogram, None);
    let rec = record_of(&pki, &run, 1, [0; 32], None, None);
    let v = verify_record(&rec, &pki.terminal.cert, &pki.host_trust(), None).unwrap();
    assert_eq!(v.credential.unwrap().id, cred.id);

    // Revoked credential: refused offline by the kiosk.
    let mut list = RevocationList {
        number: 2,
        ..Default::default()
    };
    list.credentials.insert(cred.id, 0);
    list.sign(&pki.root.cert, &pki.root.key);
    list.verify(&pki.terminal_trust()).unwrap();
    t.revocations = Some(list);
    w.arm(pki.now, 60); // a pickup needs the user's presence
    let run = pki.run_tap(&mut t, &mut w, params.clone(), &mut OsRng);
    assert_eq!(
        run.error,
        Some(Error::Credential(CredentialProblem::Revoked))
    );
    t.revocations = None;

    // A wallet without a credential for this site answers 9106.
    w.arm(pki.now, 60); // a pickup needs the user's presence
    let run = pki.run_tap(
        &mut t,
        &mut w,
        TapParams {
            scenario: Scenario::Pickup {
                site: "LOCKER-8".into(),
            },
            ..params.clone()
        },
        &mut OsRng,
    );
    assert_eq!(
        run.error,
        Some(Error::WalletRefused {
            sw: StatusWord::NoCredential
        })
    );

    // A credential issued to another wallet is refused by the kiosk.
    let other = pki.new_wallet(&mut OsRng);
    let mut w2 = pki.wallet_context_for(&other);
    w2.credentials
        .push(pki.credential(&pki.wallet.cert, "LOCKER-7", 3, "SF1", &mut OsRng));
    w2.arm(pki.now, 60); // a pickup needs the user's presence
    let run = pki.run_tap(&mut t, &mut w2, params.clone(), &mut OsRng);
    assert_eq!(
        run.error,
        Some(Error::Credential(CredentialProblem::WrongRecipient))
    );

    // A credential signed by a key that is not the operator's.
    let mut w3 = pki.wallet_context();
    let mut forged = pki.credential(&pki.wallet.cert, "LOCKER-7", 4, "SF2", &mut OsRng);
    forged.signature = crypto::sign(&pki.acquirer.key, &forged.signed_bytes());
    w3.credentials.push(forged);
    w3.arm(pki.now, 60); // a pickup needs the user's presence
    let run = pki.run_tap(&mut t, &mut w3, params, &mut OsRng);
    assert_eq!(
        run.error,
        Some(Error::Credential(CredentialProblem::BadSignature))
    );
}

#[test]
fn two_tap_confirm_on_phone_flow() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let params = TapParams {
        scenario: Scenario::Pay {
            amount: cny(50_000),
        },
        cvm_limit: 20_000,
        send_certificate: true,
    };

    let first = pki.run_tap(&mut t, &mut w, params.clone(), &mut OsRng);
    assert!(first.outcome.is_none());
    assert_eq!(first.error, None);
    assert!(first
        .terminal_events
        .contains(&TerminalEvent::ConfirmOnPhone));
    assert!(first.wallet_events.iter().any(|e| matches!(e, WalletEvent::ConfirmationRequested { merchant, .. } if merchant == "Tea House #12")));
    assert_eq!(
        w.atc, 0,
        "a tap that asks for confirmation consumes no counter value"
    );

    // Tapping again without confirming asks again.
    let again = pki.run_tap(&mut t, &mut w, params.clone(), &mut OsRng);
    assert!(again
        .terminal_events
        .contains(&TerminalEvent::ConfirmOnPhone));

    let prompt = w.pending_prompt().expect("a prompt on screen");
    assert!(
        !w.confirm_pending(&[0; 32], pki.now),
        "only the shown prompt"
    );
    assert!(w.confirm_pending(&prompt, pki.now));
    // A different amount neither rides on the confirmation nor replaces it.
    let other = pki.run_tap(
        &mut t,
        &mut w,
        TapParams {
            scenario: Scenario::Pay {
                amount: cny(50_001),
            },
            ..params.clone()
        },
        &mut OsRng,
    );
    assert!(other
        .terminal_events
        .contains(&TerminalEvent::ConfirmOnPhone));
    assert_eq!(w.pending_prompt(), Some(prompt));

    let second = pki.run_tap(&mut t, &mut w, params.clone(), &mut OsRng);
    let outcome = second.outcome.expect("approved on second tap");
    assert_eq!(outcome.cvm, Cvm::ConfirmedOnDevice);
    assert_eq!(outcome.atc, 1);

    // The confirmation is used up.
    let third = pki.run_tap(&mut t, &mut w, params.clone(), &mut OsRng);
    assert!(third
        .terminal_events
        .contains(&TerminalEvent::ConfirmOnPhone));

    // Armed (biometric) wallets pay in one tap, once.
    w.arm(pki.now, 30);
    let armed = pki.run_tap(&mut t, &mut w, params.clone(), &mut OsRng);
    assert_eq!(armed.outcome.unwrap().cvm, Cvm::Armed);
    let after = pki.run_tap(&mut t, &mut w, params.clone(), &mut OsRng);
    assert!(after
        .terminal_events
        .contains(&TerminalEvent::ConfirmOnPhone));

    // An expired confirmation does not count.
    let prompt = w.pending_prompt().expect("a prompt on screen");
    assert!(w.confirm_pending(&prompt, pki.now - 1000));
    let late = pki.run_tap(&mut t, &mut w, params.clone(), &mut OsRng);
    assert!(late
        .terminal_events
        .contains(&TerminalEvent::ConfirmOnPhone));

    // A declining user.
    w.decline_all = true;
    let declined = pki.run_tap(&mut t, &mut w, params, &mut OsRng);
    assert_eq!(
        declined.error,
        Some(Error::WalletRefused {
            sw: StatusWord::Declined
        })
    );
}

#[test]
fn terminal_cvm_limit_below_the_wallets_makes_the_wallet_ask() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    w.cvm_limit = u64::MAX; // the phone itself would not ask
    let params = TapParams {
        scenario: Scenario::Pay {
            amount: cny(50_000),
        },
        cvm_limit: 20_000,
        send_certificate: true,
    };
    let first = pki.run_tap(&mut t, &mut w, params.clone(), &mut OsRng);
    assert!(
        first
            .terminal_events
            .contains(&TerminalEvent::ConfirmOnPhone),
        "{:?}",
        first.error
    );
    let prompt = w.pending_prompt().unwrap();
    assert!(w.confirm_pending(&prompt, pki.now));
    let second = pki.run_tap(&mut t, &mut w, params.clone(), &mut OsRng);
    assert_eq!(second.outcome.map(|o| o.cvm), Some(Cvm::ConfirmedOnDevice));
    // Below the terminal's limit the flag is absent and nothing is asked.
    let small = TapParams {
        scenario: Scenario::Pay {
            amount: cny(20_000),
        },
        ..params
    };
    let run = pki.run_tap(&mut t, &mut w, small, &mut OsRng);
    assert_eq!(run.outcome.map(|o| o.cvm), Some(Cvm::None));
}

#[test]
fn repeat_customer_sends_hashes_not_certificates() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let first = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert!(first.outcome.is_some());
    let repeat = pki.run_tap(
        &mut t,
        &mut w,
        TapParams {
            send_certificate: false,
            ..pay(100)
        },
        &mut OsRng,
    );
    assert!(repeat.outcome.is_some(), "{:?}", repeat.error);
    assert_eq!(repeat.round_trips(), 3);
    let saved = first.apdu_bytes() - repeat.apdu_bytes();
    // Both certificates are replaced by 10-byte reference TLVs. The
    // terminal sent only a reference and got no 9102, so a listener knows
    // already that this phone was here before: the wallet's answer is
    // padded to its own class, not to the first encounter's.
    let wire = tapstack_protocol::compact::to_wire(&pki.terminal.cert);
    let wallet_wire = tapstack_protocol::compact::to_wire(&pki.wallet.cert);
    let certs = wire.len() + wallet_wire.len() - 2 * 10;
    assert!(
        saved >= certs - messages::SIZE_CLASS,
        "saved {saved} bytes, certificates minus references are {certs}"
    );
    assert!(first.wire[2].response.len() > repeat.wire[2].response.len());
    let der = &wire[..];
    assert!(!repeat
        .wire
        .iter()
        .any(|x| x.command.windows(der.len()).any(|w| w == der)));
    assert!(first
        .wire
        .iter()
        .any(|x| x.command.windows(der.len()).any(|w| w == der)));
    let rec = record_of(&pki, &repeat, 1, [0; 32], None, None);
    verify_record(&rec, &pki.terminal.cert, &pki.host_trust(), None).unwrap();
}

#[test]
fn a_renewed_wallet_certificate_is_sent_again_to_a_terminal_that_had_the_old_one() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    assert!(pki
        .run_tap(&mut t, &mut w, pay(100), &mut OsRng)
        .outcome
        .is_some());
    // The issuer renews the wallet's certificate for the same key.
    let spec = CertSpec {
        role: Role::Wallet,
        common_name: "wallet",
        not_before: pki.now - 1000,
        not_after: pki.now + 100_000,
        terminal_id: None,
        endorsed_sites: &[],
    };
    w.certificate = pki::issue(
        &spec,
        pki.wallet.key.verifying_key(),
        (&pki.issuer.cert, &pki.issuer.key),
        &mut OsRng,
    )
    .unwrap();
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    let outcome = run
        .outcome
        .as_ref()
        .unwrap_or_else(|| panic!("{:?}", run.error));
    assert_eq!(outcome.wallet.hash(), w.certificate.hash());
    // The new certificate went in the answer: no GET CERTIFICATE.
    assert_eq!(run.round_trips(), 3);
}

#[test]
fn terminal_that_lost_the_wallet_certificate_asks_for_it() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    assert!(pki
        .run_tap(&mut t, &mut w, pay(100), &mut OsRng)
        .outcome
        .is_some());
    t.forget_wallet_certificates();
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    assert_eq!(
        run.round_trips(),
        4,
        "SELECT, timed exchange, AUTHORIZE, GET CERTIFICATE"
    );
}

#[test]
fn wallet_without_terminal_certificate_answers_certificate_needed() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let run = pki.run_tap(
        &mut t,
        &mut w,
        TapParams {
            send_certificate: false,
            ..pay(100)
        },
        &mut OsRng,
    );
    assert!(run.outcome.is_some(), "{:?}", run.error);
    assert_eq!(
        run.round_trips(),
        4,
        "SELECT, timed exchange, AUTHORIZE (reference), AUTHORIZE (certificate)"
    );
    assert_eq!(
        StatusWord::from_u16(u16::from_be_bytes([
            run.wire[2].response[0],
            run.wire[2].response[1]
        ])),
        StatusWord::CertificateNeeded
    );
}

#[test]
fn short_apdus_use_chaining_and_get_response() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    w.extended = false;
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    assert!(run.round_trips() > 2);
    assert!(run
        .wire
        .iter()
        .all(|x| x.command.len() <= 5 + 255 + 1 && x.response.len() <= 258));
    assert!(
        run.wire.iter().any(|x| x.command[0] & 0x10 != 0),
        "chained command expected"
    );
    // A pickup's answer (credential and certificate) is longer than a
    // short Le: it comes in pieces over GET RESPONSE.
    w.credentials.push(pki.credential(
        &pki.wallet.cert,
        "LOCKER-7",
        12,
        "SF1234567890",
        &mut OsRng,
    ));
    w.arm(pki.now, 60);
    let params = TapParams {
        scenario: Scenario::Pickup {
            site: "LOCKER-7".into(),
        },
        cvm_limit: 0,
        send_certificate: true,
    };
    let run = pki.run_tap(&mut t, &mut w, params, &mut OsRng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    assert!(run
        .wire
        .iter()
        .all(|x| x.command.len() <= 5 + 255 + 1 && x.response.len() <= 258));
    assert!(
        run.wire.iter().any(|x| x.command[1] == 0xC0),
        "GET RESPONSE expected"
    );
}

#[test]
fn flipping_any_signed_or_maced_byte_is_rejected() {
    let pki = Pki::generate(&mut OsRng);
    let baseline = {
        let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
        pki.run_tap(&mut t, &mut w, pay(1250), &mut OsRng)
    };
    // Wire exchanges: 0 SELECT, 1 the timed exchange, 2 AUTHORIZE (extended:
    // 7-byte header, 2-byte Le). Flip every bit-0 of every data byte the
    // other side relies on: the FCI, both relay nonces, the AUTHORIZE data,
    // the sealed answer.
    assert_eq!(baseline.wire[1].command[1], messages::INS_RELAY);
    assert_eq!(baseline.wire[2].command[1], messages::INS_AUTHORIZE);
    let len = |ex: usize, command: bool| {
        let w = &baseline.wire[ex];
        if command {
            w.command.len() - if ex == 2 { 9 } else { 6 }
        } else {
            w.response.len() - 2
        }
    };
    // (exchange, command side?, first data byte)
    let targets = [
        (0, false, 0),
        (1, true, 5),
        (1, false, 0),
        (2, true, 7),
        (2, false, 0),
    ];
    let mut rejected = 0;
    let mut total = 0;
    for (ex, command, start) in targets {
        let n = len(ex, command);
        total += n;
        for pos in start..start + n {
            let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
            let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
            let flip = move |i: usize, b: &mut Vec<u8>| {
                if i == ex {
                    b[pos] ^= 0x01;
                }
            };
            if command {
                lb.tamper_command = Some(Box::new(flip));
            } else {
                lb.tamper_response = Some(Box::new(flip));
            }
            let run = lb.run(&mut t, &mut w, pay(1250), pki.now, &mut OsRng);
            assert!(
                run.outcome.is_none(),
                "flip of byte {pos} in exchange {ex} (command: {command}) was accepted"
            );
            assert!(
                run.error.is_some(),
                "flip of byte {pos} in exchange {ex}: no error"
            );
            rejected += 1;
        }
    }
    assert_eq!(rejected, total);
    assert!(total > 48 + 4 + 4 + 270 + 220, "{total}");
}

#[test]
fn record_tampering_is_detected() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let run = pki.run_tap(&mut t, &mut w, pay(1250), &mut OsRng);
    let rec = record_of(&pki, &run, 1, [0; 32], None, None);
    let bytes = rec.to_bytes();
    let trust = pki.host_trust();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        let accepted = TransactionRecord::decode(&bad).ok().and_then(|r| {
            verify_record(&r, &pki.terminal.cert, &trust, None)
                .ok()
                .map(|_| r)
        });
        assert!(accepted.is_none(), "flip at {i} accepted");
    }
    // Another terminal cannot claim the record.
    let other = pki.new_terminal("Other", &mut OsRng);
    assert_eq!(
        verify_record(&rec, &other.cert, &trust, None).unwrap_err(),
        Error::CertificateMismatch {
            party: Party::Terminal
        }
    );
}

#[test]
fn record_chain_continuity() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let mut prev = None;
    let mut records = Vec::new();
    for seq in 1..=3 {
        let run = pki.run_tap(&mut t, &mut w, pay(100 * seq), &mut OsRng);
        let rec = record_of(
            &pki,
            &run,
            seq,
            prev.map(|(_, h)| h).unwrap_or([0; 32]),
            None,
            None,
        );
        check_chain(prev, &rec).unwrap();
        prev = Some((seq, rec.hash()));
        records.push(rec);
    }
    let p1 = Some((1, records[0].hash()));
    assert_eq!(
        check_chain(p1, &records[2]).unwrap_err(),
        Error::Chain {
            what: "gap in sequence numbers"
        }
    );
    assert_eq!(
        check_chain(Some((2, records[1].hash())), &records[1]).unwrap_err(),
        Error::Chain {
            what: "sequence number reused"
        }
    );
    let mut forged = records[1].clone();
    forged.prev_hash = [7; 32];
    assert_eq!(
        check_chain(p1, &forged).unwrap_err(),
        Error::Chain {
            what: "previous-record hash does not match"
        }
    );
    assert!(check_chain(None, &records[1]).is_err());
}

#[test]
fn foreign_expired_and_revoked_certificates() {
    let pki = Pki::generate(&mut OsRng);
    let foreign = Pki::generate(&mut OsRng);

    // Terminal from another PKI: the wallet refuses to talk.
    let mut t = foreign.terminal_context();
    let mut w = pki.wallet_context();
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert_eq!(
        run.error,
        Some(Error::WalletRefused {
            sw: StatusWord::TerminalNotTrusted
        })
    );
    assert_eq!(w.atc, 0);

    // Wallet from another PKI: the terminal refuses the tap.
    let mut t = pki.terminal_context();
    let mut w = foreign.wallet_context();
    w.trust = pki.wallet_trust();
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert!(
        matches!(
            run.error,
            Some(Error::Certificate {
                party: Party::Wallet,
                source: CertError::UnknownIssuer { .. } | CertError::BadSignature
            })
        ),
        "{:?}",
        run.error
    );

    // Expired wallet certificate.
    let key = p256::ecdsa::SigningKey::random(&mut OsRng);
    let spec = CertSpec {
        role: Role::Wallet,
        common_name: "wallet",
        not_before: pki.now - 1000,
        not_after: pki.now - 10,
        terminal_id: None,
        endorsed_sites: &[],
    };
    let cert = pki::issue(
        &spec,
        key.verifying_key(),
        (&pki.issuer.cert, &pki.issuer.key),
        &mut OsRng,
    )
    .unwrap();
    let mut w = pki.wallet_context_for(&tapstack_protocol::testkit::Identity { cert, key });
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert!(
        matches!(
            run.error,
            Some(Error::Certificate {
                party: Party::Wallet,
                source: CertError::Expired { .. }
            })
        ),
        "{:?}",
        run.error
    );

    // A wallet certificate issued by the acquirer (wrong branch).
    let key = p256::ecdsa::SigningKey::random(&mut OsRng);
    let spec = CertSpec {
        role: Role::Wallet,
        common_name: "wallet",
        not_before: pki.now - 1000,
        not_after: pki.now + 1000,
        terminal_id: None,
        endorsed_sites: &[],
    };
    let cert = pki::issue(
        &spec,
        key.verifying_key(),
        (&pki.acquirer.cert, &pki.acquirer.key),
        &mut OsRng,
    )
    .unwrap();
    let mut w = pki.wallet_context_for(&tapstack_protocol::testkit::Identity { cert, key });
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert!(
        matches!(
            run.error,
            Some(Error::Certificate {
                party: Party::Wallet,
                source: CertError::UnknownIssuer { .. } | CertError::IssuerNotHeld
            })
        ),
        "{:?}",
        run.error
    );

    // Revoked wallet, then revoked terminal.
    let mut list = RevocationList {
        number: 3,
        ..Default::default()
    };
    list.certificates.insert(*pki.wallet.cert.hash(), 0);
    list.sign(&pki.root.cert, &pki.root.key);
    t.revocations = Some(list.clone());
    let mut w = pki.wallet_context();
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert_eq!(
        run.error,
        Some(Error::Certificate {
            party: Party::Wallet,
            source: CertError::Revoked
        })
    );
    // A current list that does not name the terminal: the tap goes through.
    let mut list = RevocationList {
        number: 4,
        this_update: pki.now,
        next_update: pki.now + 86_400,
        ..Default::default()
    };
    list.sign(&pki.root.cert, &pki.root.key);
    let mut t = pki.terminal_context();
    w.revocations = Some(list.clone());
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert_eq!(run.error, None);
    // The terminal revoked after now (a scheduled revocation): still accepted.
    list.certificates
        .insert(*pki.terminal.cert.hash(), pki.now + 3_600);
    list.sign(&pki.root.cert, &pki.root.key);
    let mut t = pki.terminal_context();
    w.revocations = Some(list.clone());
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert_eq!(run.error, None);
    // Revoked at or before now: refused.
    list.certificates.insert(*pki.terminal.cert.hash(), pki.now);
    list.sign(&pki.root.cert, &pki.root.key);
    let mut t = pki.terminal_context();
    w.revocations = Some(list.clone());
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert_eq!(
        run.error,
        Some(Error::WalletRefused {
            sw: StatusWord::TerminalNotTrusted
        })
    );
    // A list past next_update + grace, even one that names nobody: the
    // wallet fails closed.
    let mut stale = RevocationList {
        number: 5,
        this_update: pki.now - 10 * 86_400,
        next_update: pki.now - 86_400,
        ..Default::default()
    };
    stale.sign(&pki.root.cert, &pki.root.key);
    let mut t = pki.terminal_context();
    w.revocations = Some(stale);
    w.revocation_grace = 3_600;
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert_eq!(
        run.error,
        Some(Error::WalletRefused {
            sw: StatusWord::TerminalNotTrusted
        })
    );
    // Within the grace it is still relied on.
    w.revocation_grace = 2 * 86_400;
    let mut t = pki.terminal_context();
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert_eq!(run.error, None);
    w.revocations = None;

    // A revocation list signed by someone else does not verify.
    let mut fake = RevocationList {
        number: 5,
        ..Default::default()
    };
    fake.sign(&foreign.root.cert, &foreign.root.key);
    assert!(fake.verify(&pki.terminal_trust()).is_err());
    let mut resigned = RevocationList {
        number: 5,
        ..Default::default()
    };
    resigned.sign(&pki.root.cert, &pki.root.key);
    resigned.number = 6;
    assert_eq!(
        resigned.verify(&pki.terminal_trust()).unwrap_err(),
        CertError::BadSignature
    );
    assert_eq!(
        RevocationList::decode(&resigned.to_bytes()).unwrap(),
        resigned
    );
}

#[test]
fn atc_regression_is_detected() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    assert!(pki
        .run_tap(&mut t, &mut w, pay(100), &mut OsRng)
        .outcome
        .is_some());
    assert!(pki
        .run_tap(&mut t, &mut w, pay(100), &mut OsRng)
        .outcome
        .is_some());
    w.atc = 1; // a cloned or rolled-back wallet
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert_eq!(run.error, Some(Error::AtcRegression { last: 2, got: 2 }));
    w.atc = u32::MAX;
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert_eq!(
        run.error,
        Some(Error::WalletRefused {
            sw: StatusWord::ConditionsNotSatisfied
        })
    );
}

/// A deterministic RNG, to make a terminal reuse its nonce.
struct Repeating(u8);
impl RngCore for Repeating {
    fn next_u32(&mut self) -> u32 {
        u32::from_le_bytes([self.0; 4])
    }
    fn next_u64(&mut self) -> u64 {
        u64::from_le_bytes([self.0; 8])
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        d.fill(self.0)
    }
    fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
        d.fill(self.0);
        Ok(())
    }
}
impl CryptoRng for Repeating {}

#[test]
fn replayed_authorize_is_rejected_and_a_repeating_terminal_rng_does_not_repeat_taps() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());

    // Replay: an AUTHORIZE captured from one session, played into a new one.
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    let captured = run.wire[2].command.clone();
    let mut session = WalletSession::new();
    let select = tapstack_protocol::apdu::CommandView::parse(&run.wire[0].command)
        .unwrap()
        .to_owned();
    assert!(session
        .handle_command(&mut w, &select, pki.now, &mut OsRng)
        .sw
        .is_ok());
    let replay = tapstack_protocol::apdu::CommandView::parse(&captured)
        .unwrap()
        .to_owned();
    // Without this session's timed exchange: refused.
    let resp = session.handle_command(&mut w, &replay, pki.now, &mut OsRng);
    assert_eq!(resp.sw, StatusWord::ConditionsNotSatisfied);
    // After a timed exchange with the nonce the captured one carried: the
    // wallet's nonce is new, so the captured AUTHORIZE is still not this
    // session's.
    let relay = tapstack_protocol::apdu::CommandView::parse(&run.wire[1].command)
        .unwrap()
        .to_owned();
    let answer = session.handle_command(&mut w, &relay, pki.now, &mut OsRng);
    assert!(answer.sw.is_ok());
    assert_ne!(answer.data, run.wire[1].response[..4]);
    let resp = session.handle_command(&mut w, &replay, pki.now, &mut OsRng);
    assert_eq!(resp.sw, StatusWord::ConditionsNotSatisfied);
    assert_eq!(w.atc, 1);

    // A terminal whose RNG repeats (same nonce, same key share twice): the
    // wallet's fresh key share and nonce still make each tap its own.
    let mut terminal_rng = Repeating(0x42);
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    let mut th1s = Vec::new();
    for _ in 0..2 {
        let mut session = TerminalSession::new(pay(100));
        while let Some(cmd) = session.poll_command() {
            let resp = lb.exchange(&mut w, cmd, pki.now, &mut OsRng).unwrap();
            session
                .handle_response(&mut t, resp, Duration::ZERO, pki.now, &mut terminal_rng)
                .unwrap();
            while let Some(ev) = session.poll_event() {
                if let TerminalEvent::Approved(o) = ev {
                    th1s.push(messages::th1(&o.transcript.fci, &o.transcript.auth_body));
                }
            }
        }
    }
    assert_eq!(th1s.len(), 2);
    assert_ne!(th1s[0], th1s[1]);
    assert_eq!(w.atc, 3);
}

#[test]
fn terminal_time_far_from_phone_time_is_refused() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    let mut session = TerminalSession::new(pay(100));
    // SELECT and the timed exchange; the terminal's clock is an hour ahead.
    for _ in 0..2 {
        let cmd = session.poll_command().unwrap();
        let resp = lb.exchange(&mut w, cmd, pki.now, &mut OsRng).unwrap();
        session
            .handle_response(&mut t, resp, Duration::ZERO, pki.now + 3600, &mut OsRng)
            .unwrap();
    }
    let cmd = session.poll_command().unwrap();
    let resp = lb.exchange(&mut w, cmd, pki.now, &mut OsRng).unwrap();
    assert_eq!(resp.sw, StatusWord::TimeSkew);
}

/// A malicious wallet that signs CVM = none, then claims "confirmed on
/// device" in the (correctly MACed) response: the signature catches it.
#[test]
fn relaxed_cvm_outside_the_signature_is_rejected() {
    let pki = Pki::generate(&mut OsRng);
    let mut t = pki.terminal_context();
    let params = TapParams {
        scenario: Scenario::Pay {
            amount: cny(50_000),
        },
        cvm_limit: 20_000,
        send_certificate: true,
    };
    let mut session = TerminalSession::new(params);
    let _select = session.poll_command().unwrap();
    let eph = EphemeralKey::generate(&mut OsRng);
    let fci = Fci {
        versions: vec![VERSION_2],
        scenarios: 7,
        max_command: 4096,
        flags: FLAG_EXTENDED_LENGTH,
        key_share: *eph.public(),
    }
    .to_bytes();
    let auth_cmd: Command =
        testkit::answer_fci_and_relay(&mut session, &mut t, &fci, pki.now, &mut OsRng).unwrap();
    let req = AuthorizeRequest::decode(&auth_cmd.data).unwrap();
    let th1 = messages::th1(
        &fci,
        &req.resolved_body(*pki.terminal.cert.hash(), None)
            .to_bytes(),
    );
    let keys = SessionKeys::derive(&eph.agree(&req.body.key_share).unwrap(), &th1);
    let ck = pki.issuer_master_key.diversify(pki.wallet.cert.serial());
    let signed = WalletBody {
        wallet_cert_hash: *pki.wallet.cert.hash(),
        atc: 1,
        cvm: Cvm::None,
        prompt: None,
        cryptogram: Some(ck.cryptogram(1, &th1, 0)),
        credential: None,
    };
    let th2 = messages::th2(&th1, &req.signature, &signed.to_bytes());
    let signature = crypto::sign(&pki.wallet.key, &th2);
    let claimed = WalletBody {
        cvm: Cvm::ConfirmedOnDevice,
        prompt: Some(messages::prompt_hash(
            pki.terminal.cert.hash(),
            pki.terminal.cert.common_name(),
            &req.body.scenario,
        )),
        ..signed.clone()
    };
    let resp = WalletResponse {
        body: claimed,
        wallet: CertOnAir::Wire(pki.wallet.cert.der().to_vec()),
        signature,
    };
    let sealed = keys.seal(
        Direction::WalletToTerminal,
        0,
        &[INS_AUTHORIZE],
        &messages::pad(&resp.to_bytes(), 0),
    );
    let err = session
        .handle_response(
            &mut t,
            Response::ok(sealed),
            Duration::ZERO,
            pki.now,
            &mut OsRng,
        )
        .unwrap_err();
    assert_eq!(
        err,
        Error::BadSignature {
            party: Party::Wallet
        }
    );

    // And the honest "none" is refused for being above the limit.
    let mut session = TerminalSession::new(TapParams {
        scenario: Scenario::Pay {
            amount: cny(50_000),
        },
        cvm_limit: 20_000,
        send_certificate: true,
    });
    let _ = session.poll_command();
    let eph = EphemeralKey::generate(&mut OsRng);
    let fci = Fci {
        versions: vec![VERSION_2],
        scenarios: 7,
        max_command: 4096,
        flags: FLAG_EXTENDED_LENGTH,
        key_share: *eph.public(),
    }
    .to_bytes();
    let cmd =
        testkit::answer_fci_and_relay(&mut session, &mut t, &fci, pki.now, &mut OsRng).unwrap();
    let req = AuthorizeRequest::decode(&cmd.data).unwrap();
    let th1 = messages::th1(
        &fci,
        &req.resolved_body(*pki.terminal.cert.hash(), None)
            .to_bytes(),
    );
    let keys = SessionKeys::derive(&eph.agree(&req.body.key_share).unwrap(), &th1);
    let body = WalletBody {
        cryptogram: Some(ck.cryptogram(2, &th1, 0)),
        atc: 2,
        ..signed
    };
    let signature = crypto::sign(
        &pki.wallet.key,
        &messages::th2(&th1, &req.signature, &body.to_bytes()),
    );
    let resp = WalletResponse {
        body,
        wallet: CertOnAir::Wire(pki.wallet.cert.der().to_vec()),
        signature,
    };
    let sealed = keys.seal(
        Direction::WalletToTerminal,
        0,
        &[INS_AUTHORIZE],
        &messages::pad(&resp.to_bytes(), 0),
    );
    assert_eq!(
        session
            .handle_response(
                &mut t,
                Response::ok(sealed),
                Duration::ZERO,
                pki.now,
                &mut OsRng
            )
            .unwrap_err(),
        Error::CvmRequired
    );
}

#[test]
fn stray_commands_do_not_disturb_a_session() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    let mut session = TerminalSession::new(pay(100));
    let select = session.poll_command().unwrap();
    let fci = lb.exchange(&mut w, select, pki.now, &mut OsRng).unwrap();
    session
        .handle_response(&mut t, fci, Duration::ZERO, pki.now, &mut OsRng)
        .unwrap();
    let relay = session.poll_command().unwrap();
    let answer = lb.exchange(&mut w, relay, pki.now, &mut OsRng).unwrap();
    session
        .handle_response(&mut t, answer, Duration::ZERO, pki.now, &mut OsRng)
        .unwrap();
    // Between the timed exchange and AUTHORIZE: a CONFIRM, a GET
    // CERTIFICATE and a garbage AUTHORIZE from somewhere else.
    for stray in [
        Command::new(0x80, 0x52, 0, 0, vec![1, 2, 3], None),
        Command::new(0x80, 0x54, 0, 0, vec![], Some(256)),
        Command::new(0x80, 0x50, 2, 0, vec![0xD1, 0x01, 0x01], Some(256)),
    ] {
        let r = lb.exchange(&mut w, stray, pki.now, &mut OsRng).unwrap();
        assert!(!r.sw.is_ok());
    }
    let auth = session.poll_command().unwrap();
    let resp = lb.exchange(&mut w, auth, pki.now, &mut OsRng).unwrap();
    session
        .handle_response(&mut t, resp, Duration::ZERO, pki.now, &mut OsRng)
        .unwrap();
    assert!(matches!(
        session.poll_event(),
        Some(TerminalEvent::Selected { .. })
    ));
    assert!(matches!(
        session.poll_event(),
        Some(TerminalEvent::Approved(_))
    ));
    // A second AUTHORIZE after success is refused and keeps the keys: the
    // receipt still goes through.
    let again = Command::new(0x80, 0x50, 2, 0, vec![0xD1, 0x01, 0x01], Some(256));
    assert_eq!(
        lb.exchange(&mut w, again, pki.now, &mut OsRng).unwrap().sw,
        StatusWord::ConditionsNotSatisfied
    );
    session
        .send_receipt(&Receipt {
            record_check: [0; 4],
            seq: 1,
            order_number: None,
            cart: None,
            slot: None,
        })
        .unwrap();
    let confirm = session.poll_command().unwrap();
    assert!(lb
        .exchange(&mut w, confirm, pki.now, &mut OsRng)
        .unwrap()
        .sw
        .is_ok());
    assert_eq!(w.atc, 1);
}

#[test]
fn out_of_order_and_garbage_commands_get_status_words() {
    let pki = Pki::generate(&mut OsRng);
    let mut w = pki.wallet_context();
    let mut s = WalletSession::new();
    let mut send = |s: &mut WalletSession, bytes: &[u8]| {
        let mut card = tapstack_protocol::apdu::CardLink::new(true);
        match card.handle_command(bytes) {
            tapstack_protocol::apdu::CardInput::Reply(r) => {
                StatusWord::from_u16(u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]]))
            }
            tapstack_protocol::apdu::CardInput::Command(c) => {
                s.handle_command(&mut w, &c, pki.now, &mut OsRng).sw
            }
        }
    };
    // Before SELECT.
    assert_eq!(
        send(&mut s, &[0x80, 0x50, 2, 0, 1, 0xD1]),
        StatusWord::ConditionsNotSatisfied
    );
    assert_eq!(
        send(&mut s, &[0x80, 0x52, 0, 0, 1, 0x00]),
        StatusWord::ConditionsNotSatisfied
    );
    assert_eq!(
        send(&mut s, &[0x80, 0x54, 0, 0, 0]),
        StatusWord::ConditionsNotSatisfied
    );
    // Unknown AID, class, instruction, parameters, malformed lengths.
    assert_eq!(
        send(&mut s, &[0x00, 0xA4, 4, 0, 3, 1, 2, 3, 0]),
        StatusWord::FileNotFound
    );
    assert_eq!(
        send(&mut s, &[0x40, 0xA4, 4, 0, 0]),
        StatusWord::ClaNotSupported
    );
    assert_eq!(
        send(&mut s, &[0x80, 0x99, 0, 0]),
        StatusWord::InsNotSupported
    );
    assert_eq!(
        send(&mut s, &[0x80, 0x50, 1, 0, 1, 0]),
        StatusWord::WrongP1P2
    );
    assert_eq!(send(&mut s, &[0x00, 0xA4, 4]), StatusWord::WrongLength);
    assert_eq!(
        send(&mut s, &[0x00, 0xA4, 4, 0, 9, 1]),
        StatusWord::WrongLength
    );
    // After SELECT: garbage AUTHORIZE data and a stray CONFIRM are refused.
    let mut sel = vec![0x00, 0xA4, 0x04, 0x00, 0x08];
    sel.extend_from_slice(&messages::AID);
    sel.push(0);
    assert_eq!(send(&mut s, &sel), StatusWord::Ok);
    assert_eq!(
        send(&mut s, &[0x80, 0x50, 2, 0, 3, 0xD1, 0x05, 0x01]),
        StatusWord::WrongData
    );
    assert_eq!(
        send(&mut s, &[0x80, 0x52, 0, 0, 1, 0x00]),
        StatusWord::ConditionsNotSatisfied
    );
    assert_eq!(w.atc, 0);

    // The terminal: garbage, truncated and unexpected responses are typed errors.
    let mut t = pki.terminal_context();
    let mut session = TerminalSession::new(pay(100));
    let _ = session.poll_command();
    assert!(matches!(
        session.handle_response(
            &mut t,
            Response::ok(vec![0x6F, 0x05, 1]),
            Duration::ZERO,
            pki.now,
            &mut OsRng,
        ),
        Err(Error::Decode(_))
    ));
    let mut session = TerminalSession::new(pay(100));
    let _ = session.poll_command();
    assert_eq!(
        session
            .handle_response(
                &mut t,
                Response::status(StatusWord::FileNotFound),
                Duration::ZERO,
                pki.now,
                &mut OsRng,
            )
            .unwrap_err(),
        Error::NotAWallet {
            sw: StatusWord::FileNotFound
        }
    );
    assert!(matches!(
        session
            .handle_response(
                &mut t,
                Response::ok(vec![]),
                Duration::ZERO,
                pki.now,
                &mut OsRng
            )
            .unwrap_err(),
        Error::UnexpectedMessage { .. }
    ));
    assert!(session.poll_command().is_none());
}

/// Every signature a record carries has exactly one accepted form: the
/// high-S twin of each (equally valid ECDSA) is refused with a typed error,
/// and what tapstack signs is always low-S.
#[test]
fn high_s_twins_of_record_transcript_and_wallet_signatures_are_refused() {
    use tapstack_protocol::testkit::s_twin;
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let trust = pki.host_trust();
    for _ in 0..4 {
        let run = pki.run_tap(&mut t, &mut w, pay(1250), &mut OsRng);
        let rec = record_of(&pki, &run, 1, [0; 32], None, None);
        verify_record(&rec, &pki.terminal.cert, &trust, None).unwrap();
        for sig in [
            &rec.signature[..],
            &rec.transcript.terminal_sig[..],
            &rec.transcript.wallet_sig[..],
        ] {
            let low = p256::ecdsa::Signature::from_slice(sig).unwrap();
            assert!(crypto::is_low_s(&low));
        }
        let mut twin = rec.clone();
        twin.signature = s_twin(&rec.signature).unwrap();
        assert_eq!(
            verify_record(&twin, &pki.terminal.cert, &trust, None).unwrap_err(),
            Error::HighSSignature {
                party: Party::Terminal
            }
        );
        // Re-signed by the terminal so the outer signature holds: the inner
        // high-S signatures are still refused.
        let resign = |mut r: TransactionRecord| {
            r.signature = crypto::sign(&pki.terminal.key, &r.signed_bytes());
            r
        };
        let mut twin = rec.clone();
        twin.transcript.terminal_sig = s_twin(&rec.transcript.terminal_sig).unwrap();
        assert_eq!(
            verify_record(&resign(twin), &pki.terminal.cert, &trust, None).unwrap_err(),
            Error::HighSSignature {
                party: Party::Terminal
            }
        );
        let mut twin = rec.clone();
        twin.transcript.wallet_sig = s_twin(&rec.transcript.wallet_sig).unwrap();
        assert_eq!(
            verify_record(&resign(twin), &pki.terminal.cert, &trust, None).unwrap_err(),
            Error::HighSSignature {
                party: Party::Wallet
            }
        );
    }
}

/// A certificate whose issuer signature is the high-S twin of a valid one
/// is refused with its own error; the low-S original is accepted.
#[test]
fn high_s_twin_of_a_certificate_signature_is_refused() {
    use der::{Decode as _, Encode as _};
    let pki = Pki::generate(&mut OsRng);
    let trust = pki.host_trust();
    let der = pki.wallet.cert.der();
    let mut x = x509_cert::Certificate::from_der(der).unwrap();
    let sig = p256::ecdsa::Signature::from_der(x.signature.raw_bytes()).unwrap();
    assert!(crypto::is_low_s(&sig));
    let twin_raw = tapstack_protocol::testkit::s_twin(&sig.to_bytes()).unwrap();
    let twin = p256::ecdsa::Signature::from_slice(&twin_raw).unwrap();
    x.signature = der::asn1::BitString::from_bytes(twin.to_der().as_bytes()).unwrap();
    let twin_cert = pki::Certificate::from_der(&x.to_der().unwrap()).unwrap();
    assert_ne!(twin_cert.hash(), pki.wallet.cert.hash());
    trust
        .verify(&pki.wallet.cert, Role::Wallet, pki.now, None)
        .unwrap();
    assert_eq!(
        trust.verify(&twin_cert, Role::Wallet, pki.now, None),
        Err(CertError::HighSSignature)
    );
}

/// The terminal ID travels in the subject's serialNumber: it parses back,
/// a terminal with one still taps, and an unusable ID is refused at
/// issuance (and at parsing, as a malformed certificate).
#[test]
fn terminal_id_in_the_subject_round_trips_and_taps() {
    let mut pki = Pki::generate(&mut OsRng);
    let key = p256::ecdsa::SigningKey::random(&mut OsRng);
    let spec = |id| CertSpec {
        role: Role::Terminal,
        common_name: "Tea House #12",
        not_before: pki.now - 1000,
        not_after: pki.now + 100_000,
        terminal_id: id,
        endorsed_sites: &[],
    };
    let cert = pki::issue(
        &spec(Some("TH-0012")),
        key.verifying_key(),
        (&pki.acquirer.cert, &pki.acquirer.key),
        &mut OsRng,
    )
    .unwrap();
    assert_eq!(cert.terminal_id(), Some("TH-0012"));
    assert_eq!(
        pki::Certificate::from_der(cert.der())
            .unwrap()
            .terminal_id(),
        Some("TH-0012")
    );
    assert_eq!(cert.issuer_name(), pki.terminal.cert.issuer_name());
    assert_eq!(pki.terminal.cert.terminal_id(), None);
    for bad in ["", "a b", "x/y", &"7".repeat(pki::MAX_TERMINAL_ID + 1)] {
        assert!(
            matches!(
                pki::issue(
                    &spec(Some(bad)),
                    key.verifying_key(),
                    (&pki.acquirer.cert, &pki.acquirer.key),
                    &mut OsRng,
                ),
                Err(CertError::Malformed { .. })
            ),
            "{bad:?}"
        );
    }
    // A terminal with an ID taps like any other.
    pki.terminal = tapstack_protocol::testkit::Identity { cert, key };
    let mut t = pki.terminal_context_for(&pki.terminal);
    let mut w = pki.wallet_context();
    let run = pki.run_tap(&mut t, &mut w, pay(100), &mut OsRng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
}
