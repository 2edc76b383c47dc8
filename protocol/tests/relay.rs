#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: fail loudly
//! Relay resistance: the timed exchange after SELECT, judged by the
//! terminal, bound by the wallet. The loopback's relay really sleeps.

use std::time::Duration;

use rand_core::OsRng;
use tapstack_protocol::apdu::{CommandView, LinkLimits, StatusWord};
use tapstack_protocol::codec::Codec;
use tapstack_protocol::error::Error;
use tapstack_protocol::messages::{AuthBody, INS_RELAY};
use tapstack_protocol::record::verify_record;
use tapstack_protocol::scenario::{Amount, Currency, Scenario};
use tapstack_protocol::terminal::{TapParams, DEFAULT_RELAY_ATTEMPTS};
use tapstack_protocol::testkit::{Loopback, Pki, TapRun};
use tapstack_protocol::wallet::{WalletSession, RELAY_ANSWERS};

fn pay(minor: u64) -> TapParams {
    TapParams {
        scenario: Scenario::Pay {
            amount: Amount {
                minor,
                currency: Currency::new("CNY").unwrap(),
            },
        },
        cvm_limit: 1_000_000,
        send_certificate: true,
    }
}

fn timed_exchanges(run: &TapRun) -> usize {
    run.wire
        .iter()
        .filter(|x| x.command[1] == INS_RELAY)
        .count()
}

#[test]
fn an_honest_tap_is_approved_and_signs_what_it_measured() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let run = pki.run_tap(&mut t, &mut w, pay(1250), &mut OsRng);
    let outcome = run.outcome.as_ref().expect("approved");
    assert_eq!(timed_exchanges(&run), 1);
    let body = AuthBody::decode(&outcome.transcript.auth_body).unwrap();
    // The nonces on the wire are the ones signed.
    assert_eq!(run.wire[1].command[5..9], body.relay.terminal_nonce);
    assert_eq!(run.wire[1].response[..4], body.relay.wallet_nonce);
    assert!(Duration::from_micros(body.relay.micros.into()) <= t.relay.bound());
    // And the host sees them in the verified record.
    let rec = tapstack_protocol::record::TransactionRecord::new(
        outcome,
        &pki.terminal.cert,
        &pki.terminal.key,
        1,
        [0; 32],
        pki.now,
        None,
        None,
    );
    let v = verify_record(&rec, &pki.terminal.cert, &pki.host_trust(), None).unwrap();
    assert_eq!(v.relay, body.relay);
}

#[test]
fn a_relayed_tap_is_declined_after_the_retries() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    lb.relay = Duration::from_millis(20);
    let run = lb.run(&mut t, &mut w, pay(1250), pki.now, &mut OsRng);
    match run.error {
        Some(Error::Relayed { micros, bound }) => {
            assert!(micros >= 20_000, "{micros}");
            assert_eq!(u128::from(bound), t.relay.bound().as_micros());
        }
        other => panic!("{other:?}"),
    }
    assert!(run.outcome.is_none());
    assert_eq!(timed_exchanges(&run), usize::from(DEFAULT_RELAY_ATTEMPTS));
    // Nothing was authorized: no AUTHORIZE went out, the counter is where
    // it was.
    assert!(run.wire.iter().all(|x| x.command[1] != 0x50));
    assert_eq!(w.atc, 0);

    // A scenario allowed more time (a terminal configured so) passes.
    t.relay.allowance = Duration::from_millis(200);
    let run = lb.run(&mut t, &mut w, pay(1250), pki.now, &mut OsRng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
}

#[test]
fn one_slow_answer_is_retried() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    // The first timed exchange (exchange number 1) is held up once.
    lb.tamper_response = Some(Box::new(|n, _| {
        if n == 1 {
            std::thread::sleep(Duration::from_millis(30));
        }
    }));
    let run = lb.run(&mut t, &mut w, pay(1250), pki.now, &mut OsRng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    assert_eq!(timed_exchanges(&run), 2);
    // The signed nonces are the second exchange's.
    let body = AuthBody::decode(&run.outcome.unwrap().transcript.auth_body).unwrap();
    assert_eq!(run.wire[2].response[..4], body.relay.wallet_nonce);
    assert_ne!(run.wire[1].response[..4], body.relay.wallet_nonce);
}

#[test]
fn the_wallet_answers_a_bounded_number_of_timed_exchanges() {
    let pki = Pki::generate(&mut OsRng);
    let mut w = pki.wallet_context();
    let mut s = WalletSession::new();
    let mut sel = vec![0x00, 0xA4, 0x04, 0x00, 0x08];
    sel.extend_from_slice(&tapstack_protocol::messages::AID);
    sel.push(0);
    let cmd = |b: &[u8]| CommandView::parse(b).unwrap().to_owned();
    let relay = cmd(&[0x80, INS_RELAY, 0, 0, 4, 1, 2, 3, 4, 0]);
    // Before SELECT: refused.
    assert_eq!(
        s.handle_command(&mut w, &relay, pki.now, &mut OsRng).sw,
        StatusWord::ConditionsNotSatisfied
    );
    assert!(s
        .handle_command(&mut w, &cmd(&sel), pki.now, &mut OsRng)
        .sw
        .is_ok());
    let mut seen = Vec::new();
    for _ in 0..RELAY_ANSWERS {
        let r = s.handle_command(&mut w, &relay, pki.now, &mut OsRng);
        assert!(r.sw.is_ok());
        assert_eq!(r.data.len(), 4);
        assert!(!seen.contains(&r.data), "a nonce is never repeated");
        seen.push(r.data);
    }
    assert_eq!(
        s.handle_command(&mut w, &relay, pki.now, &mut OsRng).sw,
        StatusWord::ConditionsNotSatisfied
    );
    // A wrong-length nonce is a length error.
    let mut s = WalletSession::new();
    s.handle_command(&mut w, &cmd(&sel), pki.now, &mut OsRng);
    assert_eq!(
        s.handle_command(
            &mut w,
            &cmd(&[0x80, INS_RELAY, 0, 0, 2, 1, 2, 0]),
            pki.now,
            &mut OsRng
        )
        .sw,
        StatusWord::WrongLength
    );
}

#[test]
fn an_authorize_bound_to_another_exchange_is_refused() {
    let pki = Pki::generate(&mut OsRng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    // Flip a bit of the wallet's timed answer on the way: the terminal
    // signs the nonce it saw, which is not the one the wallet sent.
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    lb.tamper_response = Some(Box::new(|n, r| {
        if n == 1 {
            r[0] ^= 1;
        }
    }));
    let run = lb.run(&mut t, &mut w, pay(1250), pki.now, &mut OsRng);
    assert_eq!(
        run.error,
        Some(Error::WalletRefused {
            sw: StatusWord::ConditionsNotSatisfied
        })
    );
    assert_eq!(w.atc, 0);
}
