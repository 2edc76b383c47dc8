#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Protocol v2: user presence, kiosk endorsement, confirmations bound to
//! the prompt, and padded sealed responses — in memory, no IO.

use rand_core::OsRng;
use std::time::Duration;
use tapstack_protocol::apdu::{Command, Response, StatusWord};
use tapstack_protocol::codec::Codec;
use tapstack_protocol::crypto::{self, Direction, EphemeralKey, SessionKeys};
use tapstack_protocol::error::{Error, Party};
use tapstack_protocol::messages::{
    self, AuthBody, AuthorizeRequest, CertOnAir, Cvm, Fci, WalletBody, WalletResponse,
    FLAG_EXTENDED_LENGTH, INS_AUTHORIZE, VERSION_2,
};
use tapstack_protocol::pki::{self, CertSpec, Role};
use tapstack_protocol::record::{verify_record, TransactionRecord};
use tapstack_protocol::scenario::{Amount, Currency, PickupCredential, Scenario};
use tapstack_protocol::terminal::{
    TapOutcome, TapParams, TerminalContext, TerminalEvent, TerminalSession,
};
use tapstack_protocol::testkit::{self, Identity, Pki, TapRun};
use tapstack_protocol::wallet::{WalletContext, WalletEvent};

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

fn pickup(site: &str) -> TapParams {
    TapParams {
        scenario: Scenario::Pickup { site: site.into() },
        cvm_limit: 1_000_000,
        send_certificate: true,
    }
}

fn asked_to_confirm(run: &TapRun) -> bool {
    run.outcome.is_none()
        && run.error.is_none()
        && run.terminal_events.contains(&TerminalEvent::ConfirmOnPhone)
}

fn refused(run: &TapRun) -> Option<StatusWord> {
    match run.error {
        Some(Error::WalletRefused { sw }) => Some(sw),
        _ => None,
    }
}

/// Every byte string the wallet sent during the run, responses only.
fn contains(run: &TapRun, needle: &[u8]) -> bool {
    run.wire
        .iter()
        .any(|w| w.response.windows(needle.len()).any(|x| x == needle))
}

fn record(pki: &Pki, terminal: &Identity, outcome: &TapOutcome) -> TransactionRecord {
    TransactionRecord::new(
        outcome,
        &terminal.cert,
        &terminal.key,
        1,
        [0; 32],
        pki.now,
        None,
        None,
    )
}

fn with_parcel(pki: &Pki, w: &mut WalletContext, site: &str, parcel: &str) -> PickupCredential {
    let c = pki.credential(&pki.wallet.cert, site, 12, parcel, &mut OsRng);
    w.credentials.push(c.clone());
    c
}

/// Confirm whatever the phone's screen shows (what the user does).
fn user_confirms(w: &mut WalletContext, now: u64) {
    let prompt = w.pending_prompt().expect("a prompt on screen");
    assert!(w.confirm_pending(&prompt, now));
}

#[test]
fn coffee_shop_terminal_asking_for_a_pickup_gets_9104_and_no_credential_bytes() {
    let pki = Pki::generate(&mut OsRng);
    let mut w = pki.wallet_context();
    let cred = with_parcel(&pki, &mut w, "LOCKER-7", "PARCEL-SECRET-1");
    w.arm(pki.now, 600); // even an armed phone releases nothing here

    // An acquirer-certified terminal that merely names the site.
    let shop = pki.new_terminal("Coffee Shop", &mut OsRng);
    let mut t = pki.terminal_context_for(&shop);
    let run = pki.run_tap(&mut t, &mut w, pickup("LOCKER-7"), &mut OsRng);
    assert_eq!(refused(&run), Some(StatusWord::TerminalNotTrusted));
    assert!(!contains(&run, b"PARCEL-SECRET-1") && !contains(&run, &cred.id));
    // After the FCI and the timed exchange: status words only.
    assert!(run.wire.iter().skip(2).all(|x| x.response.len() == 2));

    // An endorsement for another site, or of another key, is no better.
    let other_site = pki.endorse(&shop.cert, &["LOCKER-9"], &mut OsRng);
    t.endorsement = Some(other_site);
    let run = pki.run_tap(&mut t, &mut w, pickup("LOCKER-7"), &mut OsRng);
    assert_eq!(refused(&run), Some(StatusWord::TerminalNotTrusted));
    t.endorsement = Some(pki.kiosk.clone()); // the real kiosk's, another key
    let run = pki.run_tap(&mut t, &mut w, pickup("LOCKER-7"), &mut OsRng);
    assert_eq!(refused(&run), Some(StatusWord::TerminalNotTrusted));

    // An endorsement by an operator that did not sign the credential.
    let op2_key = p256::ecdsa::SigningKey::random(&mut OsRng);
    let op2 = pki::issue(
        &CertSpec {
            role: Role::Operator,
            common_name: "other lockers",
            not_before: pki.now - 10,
            not_after: pki.now + 10_000,
            terminal_id: None,
            endorsed_sites: &[],
        },
        op2_key.verifying_key(),
        (&pki.root.cert, &pki.root.key),
        &mut OsRng,
    )
    .unwrap();
    w.trust.add_intermediate(op2.clone()).unwrap();
    let sites = vec!["LOCKER-7".to_string()];
    let foreign = pki::issue(
        &CertSpec {
            role: Role::Kiosk,
            common_name: "Coffee Shop",
            not_before: pki.now - 10,
            not_after: pki.now + 10_000,
            terminal_id: None,
            endorsed_sites: &sites,
        },
        shop.cert.public_key(),
        (&op2, &op2_key),
        &mut OsRng,
    )
    .unwrap();
    t.endorsement = Some(foreign);
    let run = pki.run_tap(&mut t, &mut w, pickup("LOCKER-7"), &mut OsRng);
    assert_eq!(refused(&run), Some(StatusWord::TerminalNotTrusted));
    assert!(!contains(&run, b"PARCEL-SECRET-1"));
    assert_eq!(w.atc, 0);

    // The endorsed kiosk gets it (armed phone: one tap).
    let mut kiosk = pki.terminal_context();
    let run = pki.run_tap(&mut kiosk, &mut w, pickup("LOCKER-7"), &mut OsRng);
    let outcome = run.outcome.expect("approved at the endorsed kiosk");
    assert_eq!(outcome.credential.unwrap().parcel, "PARCEL-SECRET-1");
}

#[test]
fn an_unendorsed_terminal_cannot_learn_whether_the_wallet_holds_a_credential() {
    let pki = Pki::generate(&mut OsRng);
    let mut w = pki.wallet_context();
    let shop = pki.new_terminal("Coffee Shop", &mut OsRng);
    let mut t = pki.terminal_context_for(&shop);
    let run = pki.run_tap(&mut t, &mut w, pickup("LOCKER-7"), &mut OsRng);
    assert_eq!(refused(&run), Some(StatusWord::TerminalNotTrusted));
    // The endorsed kiosk is told "no credential".
    let mut kiosk = pki.terminal_context();
    let run = pki.run_tap(&mut kiosk, &mut w, pickup("LOCKER-7"), &mut OsRng);
    assert_eq!(refused(&run), Some(StatusWord::NoCredential));
}

#[test]
fn pickup_asks_for_presence_by_default_then_approves_after_confirmation() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    with_parcel(&pki, &mut w, "LOCKER-7", "SF1");
    let first = pki.run_tap(&mut t, &mut w, pickup("LOCKER-7"), &mut OsRng);
    assert!(asked_to_confirm(&first), "{:?}", first.error);
    assert!(!contains(&first, b"SF1"));
    assert!(first.wallet_events.iter().any(|e| matches!(
        e,
        WalletEvent::ConfirmationRequested { merchant, scenario: Scenario::Pickup { site }, .. }
            if merchant == "Tea House #12" && site == "LOCKER-7"
    )));
    user_confirms(&mut w, pki.now);
    let second = pki.run_tap(&mut t, &mut w, pickup("LOCKER-7"), &mut OsRng);
    let outcome = second.outcome.expect("approved after confirmation");
    assert_eq!(outcome.cvm, Cvm::ConfirmedOnDevice);
    let want = messages::prompt_hash(
        pki.terminal.cert.hash(),
        "Tea House #12",
        &Scenario::Pickup {
            site: "LOCKER-7".into(),
        },
    );
    assert_eq!(outcome.prompt, Some(want));
    let v = verify_record(
        &record(&pki, &pki.terminal, &outcome),
        &pki.terminal.cert,
        &pki.host_trust(),
        None,
    )
    .unwrap();
    assert_eq!(v.prompt, Some(want));
    assert_eq!(v.cvm, Cvm::ConfirmedOnDevice);
}

#[test]
fn pickup_with_d3_asks_even_for_a_relaxed_credential() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let mut c = pki.credential(&pki.wallet.cert, "LOCKER-7", 3, "LETTER-1", &mut OsRng);
    c.low_value_class = Some("letter".into());
    c.sign(&pki.operator.cert, &pki.operator.key);
    w.credentials.push(c);
    // Relaxed by the operator: one tap, CVM none, and the host agrees.
    let run = pki.run_tap(&mut t, &mut w, pickup("LOCKER-7"), &mut OsRng);
    let o = run.outcome.expect("a relaxed credential needs no presence");
    assert_eq!(o.cvm, Cvm::None);
    verify_record(
        &record(&pki, &pki.terminal, &o),
        &pki.terminal.cert,
        &pki.host_trust(),
        None,
    )
    .unwrap();
    // The kiosk asks for presence (D3): honoured.
    t.require_presence = true;
    let run = pki.run_tap(&mut t, &mut w, pickup("LOCKER-7"), &mut OsRng);
    assert!(asked_to_confirm(&run), "{:?}", run.error);
    user_confirms(&mut w, pki.now);
    let run = pki.run_tap(&mut t, &mut w, pickup("LOCKER-7"), &mut OsRng);
    assert_eq!(run.outcome.unwrap().cvm, Cvm::ConfirmedOnDevice);
}

#[test]
fn d3_is_honoured_for_amount_zero_and_small_amounts() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    for minor in [0, 1, 100] {
        // Without D3, below the phone's limit: silent.
        t.require_presence = false;
        let run = pki.run_tap(&mut t, &mut w, pay(minor), &mut OsRng);
        assert_eq!(run.outcome.map(|o| o.cvm), Some(Cvm::None));
        t.require_presence = true;
        let run = pki.run_tap(&mut t, &mut w, pay(minor), &mut OsRng);
        assert!(asked_to_confirm(&run), "amount {minor}: {:?}", run.error);
        user_confirms(&mut w, pki.now);
        let run = pki.run_tap(&mut t, &mut w, pay(minor), &mut OsRng);
        assert_eq!(run.outcome.map(|o| o.cvm), Some(Cvm::ConfirmedOnDevice));
    }
}

#[test]
fn a_rogue_authorize_never_replaces_the_prompt_on_screen() {
    let pki = Pki::generate(&mut OsRng);
    let (mut shop, mut w) = (pki.terminal_context(), pki.wallet_context());
    let rogue_id = pki.new_terminal("Tea House #12", &mut OsRng); // same name, other cert
    let mut rogue = pki.terminal_context_for(&rogue_id);
    let (p500, p999) = (pay(50_000), pay(99_999));
    let (p500, p999) = (
        TapParams {
            cvm_limit: 10_000,
            ..p500
        },
        TapParams {
            cvm_limit: 10_000,
            ..p999
        },
    );

    let first = pki.run_tap(&mut shop, &mut w, p500.clone(), &mut OsRng);
    assert!(asked_to_confirm(&first));
    let shown = w.pending_prompt().unwrap();
    let shop_prompt =
        messages::prompt_hash(pki.terminal.cert.hash(), "Tea House #12", &p500.scenario);
    assert_eq!(shown, shop_prompt);

    // The rogue taps while the shop's prompt is on screen: 9101, and the
    // screen still shows the shop's 500.00 (no new prompt for the rogue).
    let r = pki.run_tap(&mut rogue, &mut w, p999.clone(), &mut OsRng);
    assert!(asked_to_confirm(&r));
    assert!(!r
        .wallet_events
        .iter()
        .any(|e| matches!(e, WalletEvent::ConfirmationRequested { .. })));
    assert_eq!(w.pending_prompt(), Some(shop_prompt));

    // The user confirms what they saw; the rogue stays 9101.
    let rogue_prompt = messages::prompt_hash(rogue_id.cert.hash(), "Tea House #12", &p999.scenario);
    assert!(!w.confirm_pending(&rogue_prompt, pki.now));
    assert!(w.confirm_pending(&shop_prompt, pki.now));
    for _ in 0..3 {
        let r = pki.run_tap(&mut rogue, &mut w, p999.clone(), &mut OsRng);
        assert!(asked_to_confirm(&r), "rogue approved: {:?}", r.outcome);
    }
    assert_eq!(w.atc, 0);
    // The shop's 500.00 goes through, bound to the prompt.
    let ok = pki.run_tap(&mut shop, &mut w, p500.clone(), &mut OsRng);
    let outcome = ok.outcome.expect("the shop's tap is approved");
    assert_eq!(outcome.cvm, Cvm::ConfirmedOnDevice);
    assert_eq!(outcome.prompt, Some(shop_prompt));
    assert_eq!(outcome.scenario, p500.scenario);
    // And only once.
    let again = pki.run_tap(&mut shop, &mut w, p500, &mut OsRng);
    assert!(asked_to_confirm(&again));
    // Once the user dismisses it, the next prompt may show.
    w.dismiss_pending();
    let r = pki.run_tap(&mut rogue, &mut w, p999, &mut OsRng);
    assert!(asked_to_confirm(&r));
    assert_eq!(w.pending_prompt(), Some(rogue_prompt));
}

/// Length of the sealed AUTHORIZE response (data, without the status word).
fn sealed_len(run: &TapRun) -> usize {
    run.wire[2].response.len() - 2
}

#[test]
fn sealed_responses_have_equal_lengths_first_vs_repeat_and_across_wallets() {
    let pki = Pki::generate(&mut OsRng);
    let mut t = pki.terminal_context();
    let mut w = pki.wallet_context();
    let first = pki.run_tap(&mut t, &mut w, pay(1250), &mut OsRng);
    assert!(first.outcome.is_some());
    let repeat = pki.run_tap(&mut t, &mut w, pay(1250), &mut OsRng);
    assert!(repeat.outcome.is_some());
    assert_eq!(sealed_len(&first), sealed_len(&repeat));
    assert_eq!(sealed_len(&first) % messages::SIZE_CLASS, crypto::MAC_LEN);

    // Other wallets (whatever their profile is called), first and repeat.
    for _ in 0..4 {
        let other = pki.new_wallet(&mut OsRng);
        let mut w2 = pki.wallet_context_for(&other);
        let a = pki.run_tap(&mut t, &mut w2, pay(1250), &mut OsRng);
        let b = pki.run_tap(&mut t, &mut w2, pay(1250), &mut OsRng);
        assert_eq!(sealed_len(&a), sealed_len(&first));
        assert_eq!(sealed_len(&b), sealed_len(&first));
    }

    // Pickups too (after a confirmation), first and repeat.
    let mut t2 = pki.terminal_context();
    let mut lens = Vec::new();
    for parcel in ["SF1", "SF1234567890"] {
        w.credentials.clear();
        with_parcel(&pki, &mut w, "LOCKER-7", parcel);
        w.arm(pki.now, 60);
        let run = pki.run_tap(&mut t2, &mut w, pickup("LOCKER-7"), &mut OsRng);
        assert!(run.outcome.is_some(), "{:?}", run.error);
        lens.push(sealed_len(&run));
    }
    assert_eq!(lens[0], lens[1]);
}

#[test]
fn wallet_certificates_are_pseudonymous() {
    let pki = Pki::generate(&mut OsRng);
    let key = p256::ecdsa::SigningKey::random(&mut OsRng);
    let named = CertSpec {
        role: Role::Wallet,
        common_name: "alice",
        not_before: pki.now,
        not_after: pki.now + 10,
        terminal_id: None,
        endorsed_sites: &[],
    };
    assert!(pki::issue(
        &named,
        key.verifying_key(),
        (&pki.issuer.cert, &pki.issuer.key),
        &mut OsRng
    )
    .is_err());
    assert_eq!(pki.wallet.cert.common_name(), pki::WALLET_CN);
    assert!(
        pki.new_wallet(&mut OsRng)
            .cert
            .der()
            .len()
            .abs_diff(pki.wallet.cert.der().len())
            <= 2,
        "wallet certificates differ only in DER signature length"
    );
}

#[test]
fn kiosk_certificates_need_sites_and_only_kiosks_have_them() {
    let pki = Pki::generate(&mut OsRng);
    assert_eq!(pki.kiosk.role(), Role::Kiosk);
    assert!(pki.kiosk.endorses_site("LOCKER-7"));
    assert!(!pki.kiosk.endorses_site("LOCKER-9"));
    let key = p256::ecdsa::SigningKey::random(&mut OsRng);
    let sites = vec!["LOCKER-7".to_string()];
    let base = CertSpec {
        role: Role::Kiosk,
        common_name: "k",
        not_before: pki.now,
        not_after: pki.now + 10,
        terminal_id: None,
        endorsed_sites: &[],
    };
    let op = (&pki.operator.cert, &pki.operator.key);
    assert!(pki::issue(&base, key.verifying_key(), op, &mut OsRng).is_err());
    let terminal_with_sites = CertSpec {
        role: Role::Terminal,
        endorsed_sites: &sites,
        ..base.clone()
    };
    assert!(pki::issue(
        &terminal_with_sites,
        key.verifying_key(),
        (&pki.acquirer.cert, &pki.acquirer.key),
        &mut OsRng
    )
    .is_err());
    let bad_site = vec![String::new()];
    let empty_site = CertSpec {
        endorsed_sites: &bad_site,
        ..base.clone()
    };
    assert!(pki::issue(&empty_site, key.verifying_key(), op, &mut OsRng).is_err());
    // A kiosk certificate issued by the acquirer does not chain.
    let by_acquirer = pki::issue(
        &CertSpec {
            endorsed_sites: &sites,
            ..base
        },
        key.verifying_key(),
        (&pki.acquirer.cert, &pki.acquirer.key),
        &mut OsRng,
    )
    .unwrap();
    assert!(pki
        .host_trust()
        .verify(&by_acquirer, Role::Kiosk, pki.now, None)
        .is_err());
    pki.host_trust()
        .verify(&pki.kiosk, Role::Kiosk, pki.now, None)
        .unwrap();
}

/// A terminal session driven up to the wallet's answer by a forging
/// wallet: `forge` edits the body the wallet signs.
fn forged_answer(
    pki: &Pki,
    t: &mut TerminalContext,
    params: TapParams,
    forge: impl FnOnce(&mut WalletBody, &AuthBody, &[u8; 32]),
) -> Error {
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
    let cmd: Command =
        testkit::answer_fci_and_relay(&mut session, t, &fci, pki.now, &mut OsRng).unwrap();
    let req = AuthorizeRequest::decode(&cmd.data).unwrap();
    let resolved = pki.resolved_body(&req, &t.certificate);
    let th1 = messages::th1(&fci, &resolved.to_bytes());
    let keys = SessionKeys::derive(&eph.agree(&req.body.key_share).unwrap(), &th1);
    let ck = pki.issuer_master_key.diversify(pki.wallet.cert.serial());
    let mut body = WalletBody {
        wallet_cert_hash: *pki.wallet.cert.hash(),
        atc: 7,
        cvm: Cvm::None,
        prompt: None,
        cryptogram: req
            .body
            .scenario
            .amount()
            .map(|_| ck.cryptogram(7, &th1, 0)),
        credential: None,
    };
    forge(&mut body, &resolved, &th1);
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
    session
        .handle_response(t, Response::ok(sealed), Duration::ZERO, pki.now, &mut OsRng)
        .unwrap_err()
}

#[test]
fn the_terminal_rejects_signed_answers_that_skip_presence_or_name_another_prompt() {
    let pki = Pki::generate(&mut OsRng);
    let mut t = pki.terminal_context();
    let big = TapParams {
        cvm_limit: 10_000,
        ..pay(50_000)
    };
    // Confirmed, but for another prompt (the rogue's 999.99).
    let other = messages::prompt_hash(
        pki.terminal.cert.hash(),
        "Tea House #12",
        &Scenario::Pay {
            amount: cny(99_999),
        },
    );
    let err = forged_answer(&pki, &mut t, big.clone(), |b, _, _| {
        b.cvm = Cvm::ConfirmedOnDevice;
        b.prompt = Some(other);
    });
    assert_eq!(err, Error::PromptMismatch);
    // D3 sent, CVM none signed.
    let err = forged_answer(&pki, &mut t, big, |_, _, _| {});
    assert_eq!(err, Error::CvmRequired);
    t.require_presence = true;
    let err = forged_answer(&pki, &mut t, pay(0), |_, a, _| assert!(a.cvm_required));
    assert_eq!(err, Error::CvmRequired);
    // A pickup credential that requires presence, released with CVM none.
    t.require_presence = false;
    let cred = pki.credential(&pki.wallet.cert, "LOCKER-7", 1, "SF9", &mut OsRng);
    let err = forged_answer(&pki, &mut t, pickup("LOCKER-7"), |b, a, _| {
        assert!(a.endorsement.is_some() && !a.cvm_required);
        b.credential = Some(cred);
    });
    assert_eq!(err, Error::CvmRequired);
}

/// Re-sign a record after editing its transcript, so that only the
/// transcript checks can catch the edit.
fn resign(pki: &Pki, mut r: TransactionRecord) -> TransactionRecord {
    r.signature = crypto::sign(&pki.terminal.key, &r.signed_bytes());
    r
}

#[test]
fn flipping_each_new_signed_field_is_rejected_at_the_host() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    with_parcel(&pki, &mut w, "LOCKER-7", "SF1");
    t.require_presence = true;
    assert!(asked_to_confirm(&pki.run_tap(
        &mut t,
        &mut w,
        pickup("LOCKER-7"),
        &mut OsRng
    )));
    user_confirms(&mut w, pki.now);
    let run = pki.run_tap(&mut t, &mut w, pickup("LOCKER-7"), &mut OsRng);
    let good = record(&pki, &pki.terminal, run.outcome.as_ref().unwrap());
    let trust = pki.host_trust();
    verify_record(&good, &pki.terminal.cert, &trust, None).unwrap();

    let auth = AuthBody::decode(&good.transcript.auth_body).unwrap();
    let body = WalletBody::decode(&good.transcript.wallet_body).unwrap();
    let with_auth = |f: &dyn Fn(&mut AuthBody)| {
        let mut a = auth.clone();
        f(&mut a);
        let mut r = good.clone();
        r.transcript.auth_body = a.to_bytes();
        resign(&pki, r)
    };
    let with_body = |f: &dyn Fn(&mut WalletBody)| {
        let mut b = body.clone();
        f(&mut b);
        let mut r = good.clone();
        r.transcript.wallet_body = b.to_bytes();
        resign(&pki, r)
    };
    let terminal_sig = Error::BadSignature {
        party: Party::Terminal,
    };
    let wallet_sig = Error::BadSignature {
        party: Party::Wallet,
    };
    let cases: Vec<(&str, TransactionRecord, Error)> = vec![
        (
            "D3 dropped",
            with_auth(&|a| a.cvm_required = false),
            terminal_sig.clone(),
        ),
        (
            "endorsement dropped",
            with_auth(&|a| a.endorsement = None),
            terminal_sig.clone(),
        ),
        (
            "relay: measured time lowered",
            with_auth(&|a| a.relay.micros = a.relay.micros.wrapping_sub(1)),
            terminal_sig.clone(),
        ),
        (
            "relay: terminal nonce flipped",
            with_auth(&|a| a.relay.terminal_nonce[0] ^= 1),
            terminal_sig.clone(),
        ),
        (
            "relay: wallet nonce flipped",
            with_auth(&|a| a.relay.wallet_nonce[3] ^= 1),
            terminal_sig.clone(),
        ),
        (
            "endorsement byte flipped",
            with_auth(&|a| {
                if let Some(e) = a.endorsement.as_mut() {
                    let i = e.len() / 2;
                    e[i] ^= 1;
                }
            }),
            terminal_sig,
        ),
        (
            "prompt hash flipped",
            with_body(&|b| {
                if let Some(p) = b.prompt.as_mut() {
                    p[0] ^= 1;
                }
            }),
            wallet_sig.clone(),
        ),
        (
            "CVM lowered",
            with_body(&|b| {
                b.cvm = Cvm::Armed;
                b.prompt = None;
            }),
            wallet_sig.clone(),
        ),
        (
            "credential relaxed",
            with_body(&|b| {
                if let Some(c) = b.credential.as_mut() {
                    c.low_value_class = Some("letter".into());
                }
            }),
            wallet_sig,
        ),
    ];
    for (what, rec, want) in cases {
        // Still decodes after a round trip through the wire format.
        let rec = TransactionRecord::decode(&rec.to_bytes()).unwrap();
        let err = verify_record(&rec, &pki.terminal.cert, &trust, None).unwrap_err();
        assert_eq!(err, want, "{what}");
    }
}

#[test]
fn the_host_refuses_a_pickup_record_from_an_unendorsed_terminal() {
    // A terminal that somehow got a credential (a wallet that skipped the
    // check) cannot have the pickup accepted upstream.
    let pki = Pki::generate(&mut OsRng);
    let shop = pki.new_terminal("Coffee Shop", &mut OsRng);
    let mut t = pki.terminal_context_for(&shop);
    let mut w = pki.wallet_context();
    with_parcel(&pki, &mut w, "LOCKER-7", "SF1");
    // The shop borrows the real kiosk's endorsement: the wallet refuses…
    t.endorsement = Some(pki.kiosk.clone());
    let run = pki.run_tap(&mut t, &mut w, pickup("LOCKER-7"), &mut OsRng);
    assert_eq!(refused(&run), Some(StatusWord::TerminalNotTrusted));
    // …and an honest pickup record re-signed as the shop's fails at the host.
    let (mut k, mut w) = (pki.terminal_context(), pki.wallet_context());
    with_parcel(&pki, &mut w, "LOCKER-7", "SF1");
    w.arm(pki.now, 60);
    let run = pki.run_tap(&mut k, &mut w, pickup("LOCKER-7"), &mut OsRng);
    let rec = record(&pki, &shop, run.outcome.as_ref().unwrap());
    assert!(verify_record(&rec, &shop.cert, &pki.host_trust(), None).is_err());
}
