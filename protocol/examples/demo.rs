#![allow(clippy::expect_used)] // a demo: fixed valid inputs
//! `make demo` (until the terminal application lands): a pay, an order, a
//! pickup and a two-tap payment run in memory between the terminal and the
//! wallet state machines, each queued as a signed, chained record and then
//! re-verified as the host will.

use rand_core::OsRng;
use tapstack_protocol::airtime;
use tapstack_protocol::apdu::LinkLimits;
use tapstack_protocol::record::{check_chain, verify_record, TransactionRecord};
use tapstack_protocol::scenario::{
    record_check, Amount, Cart, CartItem, Currency, Receipt, Scenario,
};
use tapstack_protocol::terminal::{TapParams, TerminalEvent};
use tapstack_protocol::testkit::{Loopback, Pki, TapRun};

fn main() {
    let mut rng = OsRng;
    let pki = Pki::generate(&mut rng);
    let cny = Currency::new("CNY").expect("valid code");
    println!(
        "tapstack demo: terminal \"{}\" and one phone wallet, in memory",
        pki.terminal.cert.common_name()
    );
    println!("(the emulator and reader drivers bring the same taps to PC/SC and libnfc)\n");

    let (mut terminal, mut wallet) = (pki.terminal_context(), pki.wallet_context());
    wallet.credentials.push(pki.credential(
        &pki.wallet.cert,
        "LOCKER-7",
        12,
        "SF1234567890",
        &mut rng,
    ));
    let cart = Cart {
        currency: cny,
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
    };
    let amount = |s: &str| Amount::parse(s, cny).expect("valid amount");
    let taps: Vec<(String, Scenario, Option<Cart>)> = vec![
        (
            "pay 12.50 CNY".into(),
            Scenario::Pay {
                amount: amount("12.50"),
            },
            None,
        ),
        (
            "order 2 items".into(),
            Scenario::order(&cart).expect("valid cart"),
            Some(cart.clone()),
        ),
        (
            "pickup at LOCKER-7".into(),
            Scenario::Pickup {
                site: "LOCKER-7".into(),
            },
            None,
        ),
        (
            "pay 500.00 CNY".into(),
            Scenario::Pay {
                amount: amount("500.00"),
            },
            None,
        ),
    ];

    let mut queue: Vec<TransactionRecord> = Vec::new();
    for (label, scenario, cart) in taps {
        let params = TapParams {
            scenario,
            cvm_limit: 20_000,
            send_certificate: true,
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
            let mut run = lb.run(
                &mut terminal,
                &mut wallet,
                params.clone(),
                pki.now,
                &mut rng,
            );
            if run.terminal_events.contains(&TerminalEvent::ConfirmOnPhone) {
                println!(
                    "{label:<22} tap {tries}: confirm on your phone, then tap again  [{}]",
                    air(&run)
                );
                let prompt = wallet.pending_prompt().unwrap_or_default();
                wallet.confirm_pending(&prompt, pki.now);
                continue;
            }
            let Some(outcome) = run.outcome.clone() else {
                println!(
                    "{label:<22} declined: {}",
                    run.error.map(|e| e.to_string()).unwrap_or_default()
                );
                break;
            };
            let prev = queue.last().map(|r| r.hash()).unwrap_or([0; 32]);
            let seq = queue.len() as u64 + 1;
            let order_number = cart.as_ref().map(|_| format!("A{}", 16 + seq));
            let record = TransactionRecord::new(
                &outcome,
                &terminal.certificate,
                terminal.signing_key(),
                seq,
                prev,
                pki.now,
                cart.clone(),
                order_number.clone(),
            );
            let receipt = Receipt {
                record_check: record_check(&record.hash()),
                seq,
                order_number,
                cart: cart.clone(),
                slot: outcome.credential.as_ref().map(|c| c.slot),
            };
            queue.push(record);
            let delivered = lb
                .deliver_receipt(
                    &mut run,
                    &mut terminal,
                    &mut wallet,
                    &receipt,
                    pki.now,
                    &mut rng,
                )
                .unwrap_or(false);
            let detail = match (&outcome.credential, &receipt.order_number) {
                (Some(c), _) => format!("open slot {} for parcel {}", c.slot, c.parcel),
                (None, Some(n)) => format!("order {n}"),
                _ => String::new(),
            };
            println!(
                "{label:<22} tap {tries}: approved — queued #{seq}, ATC {}, CVM {:?} {detail}  [{}]{}",
                outcome.atc,
                outcome.cvm,
                air(&run),
                if delivered { ", receipt shown on phone" } else { "" }
            );
            break;
        }
    }

    println!("\nhost-side verification of the queue:");
    let trust = pki.host_trust();
    let mut prev = None;
    for r in &queue {
        let chain = check_chain(prev, r);
        let v = verify_record(r, &pki.terminal.cert, &trust, None);
        let cryptogram = v.as_ref().ok().and_then(|v| {
            let key = pki.issuer_master_key.diversify(v.wallet.serial());
            v.cryptogram
                .map(|c| key.check(v.atc, &v.th1, v.cvm as u8, &c))
        });
        println!(
            "  #{} {:<7} chain {} signatures {} cryptogram {}",
            r.seq,
            v.as_ref().map_or("?", |v| v.scenario.kind().as_str()),
            if chain.is_ok() { "ok" } else { "BROKEN" },
            if v.is_ok() { "ok" } else { "BAD" },
            match cryptogram {
                Some(true) => "ok",
                Some(false) => "BAD",
                None => "n/a",
            }
        );
        prev = Some((r.seq, r.hash()));
    }
}

fn air(run: &TapRun) -> String {
    let lens: Vec<(usize, usize)> = run
        .wire
        .iter()
        .map(|w| (w.command.len(), w.response.len()))
        .collect();
    let cost = airtime::exchanges(&lens);
    format!(
        "{} round trips, {} bytes on air, {:.0} ms at 106 kbit/s",
        run.round_trips(),
        cost.bytes,
        airtime::millis(cost, 106)
    )
}
