#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: fail loudly
//! Issue 10's air budget, as docs/protocol.md §1 and docs/BENCHMARKS.md §1
//! state it, checked on real taps (bytes, and the ISO-DEP model's
//! deterministic milliseconds — not a timing measurement): a first-encounter
//! pay tap with a 23-byte merchant name stays within 700 bytes and 70 ms at
//! frame size 64 (symmetric and as a PN532 asks) and 256, receipt included;
//! a repeat customer whose terminal sends references stays within 40 ms.

use rand_core::OsRng;
use tapstack_protocol::airtime::{self, Link};
use tapstack_protocol::apdu::LinkLimits;
use tapstack_protocol::scenario::{Amount, Currency, Receipt, Scenario};
use tapstack_protocol::terminal::{TapParams, TerminalContext};
use tapstack_protocol::testkit::{Loopback, Pki, TapRun};
use tapstack_protocol::wallet::WalletContext;

/// The longest merchant name the 700-byte line holds for (docs/protocol.md §1).
const MERCHANT: &str = "Jasmine Tea House, 123X";

fn pay(send_certificate: bool) -> TapParams {
    TapParams {
        scenario: Scenario::Pay {
            amount: Amount {
                minor: 1250,
                currency: Currency::new("CNY").unwrap(),
            },
        },
        cvm_limit: 1_000_000,
        send_certificate,
    }
}

/// One approved tap with its receipt (sequence number 1234, as the bench).
fn tap(pki: &Pki, t: &mut TerminalContext, w: &mut WalletContext, params: TapParams) -> TapRun {
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    let mut run = lb.run(t, w, params, pki.now, &mut OsRng);
    assert!(run.outcome.is_some(), "{:?}", run.error);
    let receipt = Receipt {
        record_check: [7; 4],
        seq: 1234,
        order_number: None,
        cart: None,
        slot: None,
    };
    assert!(lb
        .deliver_receipt(&mut run, t, w, &receipt, pki.now, &mut OsRng)
        .unwrap());
    run
}

fn air(run: &TapRun, link: &Link) -> (usize, f64) {
    let lens: Vec<(usize, usize)> = run
        .wire
        .iter()
        .map(|x| (x.command.len(), x.response.len()))
        .collect();
    let cost = link.exchanges(&lens);
    (cost.bytes, airtime::millis(cost, 106))
}

#[test]
fn a_first_pay_tap_fits_700_bytes_and_70_ms_and_a_repeat_40_ms() {
    assert_eq!(MERCHANT.len(), 23);
    let pki = Pki::generate(&mut OsRng);
    let shop = pki.new_terminal(MERCHANT, &mut OsRng);
    let mut t = pki.terminal_context_for(&shop);
    let mut w = pki.wallet_context();
    let first = tap(&pki, &mut t, &mut w, pay(true));
    let links = [
        ("FS 256", Link::symmetric(256).unwrap()),
        ("FS 64", Link::symmetric(64).unwrap()),
        ("PN532", Link::pn532()),
    ];
    for (name, link) in &links {
        let (bytes, ms) = air(&first, link);
        assert!(bytes <= 700, "{name}: first encounter {bytes} B on air");
        assert!(ms <= 70.0, "{name}: first encounter {ms:.1} ms");
    }
    let repeat = tap(&pki, &mut t, &mut w, pay(false));
    for (name, link) in &links {
        let (bytes, ms) = air(&repeat, link);
        assert!(ms <= 40.0, "{name}: repeat customer {bytes} B, {ms:.1} ms");
    }
}
