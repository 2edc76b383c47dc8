#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly
//! `make bench` part 1: the tap protocol's cost per scenario.
//!
//! Prints the modelled air budget table (round trips, APDU bytes, ISO-DEP
//! bytes, ms at 106/212/424 kbit/s) beside EMV contactless, then measures
//! terminal-side and wallet-side CPU per tap with criterion.

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use rand_core::OsRng;
use tapstack_protocol::airtime::{self, AirCost};
use tapstack_protocol::apdu::LinkLimits;
use tapstack_protocol::codec::Codec;
use tapstack_protocol::record::TransactionRecord;
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency, Scenario};
use tapstack_protocol::terminal::{TapParams, TerminalContext, TerminalEvent, TerminalSession};
use tapstack_protocol::testkit::{Loopback, Pki, TapRun};
use tapstack_protocol::wallet::WalletContext;

fn cny(minor: u64) -> Amount {
    Amount {
        minor,
        currency: Currency::new("CNY").unwrap(),
    }
}

fn pay(send_certificate: bool) -> TapParams {
    TapParams {
        scenario: Scenario::Pay { amount: cny(1250) },
        cvm_limit: 1_000_000,
        send_certificate,
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

fn row(name: &str, run: &TapRun) {
    let lens: Vec<(usize, usize)> = run
        .wire
        .iter()
        .map(|w| (w.command.len(), w.response.len()))
        .collect();
    print_row(
        name,
        run.round_trips(),
        run.apdu_bytes(),
        airtime::exchanges(&lens),
    );
    assert!(
        run.outcome.is_some() || run.terminal_events.contains(&TerminalEvent::ConfirmOnPhone),
        "{name}: {:?}",
        run.error
    );
}

fn print_row(name: &str, trips: usize, apdu: usize, air: AirCost) {
    println!(
        "| {name:<38} | {trips:>2} | {apdu:>5} | {:>5} | {:>6.1} | {:>6.1} | {:>6.1} |",
        air.bytes,
        airtime::millis(air, 106),
        airtime::millis(air, 212),
        airtime::millis(air, 424)
    );
}

fn air_table() {
    let mut rng = OsRng;
    let pki = Pki::generate(&mut rng);
    println!("\n## Air budget per tap (ISO-DEP model: 9 bits/byte, PCB+CRC per frame, FSC 256, FDT 1172/fc)\n");
    println!("| scenario                               | RT | APDU  |  air  | ms@106 | ms@212 | ms@424 |");
    println!("|----------------------------------------|----|-------|-------|--------|--------|--------|");

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    row(
        "pay, first encounter",
        &pki.run_tap(&mut t, &mut w, pay(true), &mut rng),
    );
    row(
        "pay, repeat customer (hashes only)",
        &pki.run_tap(&mut t, &mut w, pay(false), &mut rng),
    );

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    w.extended = false;
    row(
        "pay, first encounter, short APDUs only",
        &pki.run_tap(&mut t, &mut w, pay(true), &mut rng),
    );
    row(
        "pay, repeat customer, short APDUs only",
        &pki.run_tap(&mut t, &mut w, pay(false), &mut rng),
    );

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let order = TapParams {
        scenario: Scenario::order(&cart()).unwrap(),
        cvm_limit: 1_000_000,
        send_certificate: true,
    };
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    let mut run = lb.run(&mut t, &mut w, order, pki.now, &mut rng);
    let receipt = tapstack_protocol::scenario::Receipt {
        record_id: [0; 32],
        seq: 1,
        order_number: Some("A17".into()),
        cart: Some(cart()),
        slot: None,
    };
    lb.deliver_receipt(&mut run, &mut t, &mut w, &receipt, pki.now, &mut rng)
        .unwrap();
    row("order (2 items) + receipt, first", &run);

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    w.credentials
        .push(pki.credential(&pki.wallet.cert, "LOCKER-7", 12, "SF1234567890", &mut rng));
    let pickup = TapParams {
        scenario: Scenario::Pickup {
            site: "LOCKER-7".into(),
        },
        cvm_limit: 0,
        send_certificate: true,
    };
    row(
        "pickup, first encounter",
        &pki.run_tap(&mut t, &mut w, pickup, &mut rng),
    );

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let big = TapParams {
        scenario: Scenario::Pay {
            amount: cny(50_000),
        },
        cvm_limit: 20_000,
        send_certificate: true,
    };
    let first = pki.run_tap(&mut t, &mut w, big.clone(), &mut rng);
    row("pay 500.00, two-tap: first tap (9101)", &first);
    let prompt = w.pending_prompt().unwrap_or_default();
    w.confirm_pending(&prompt, pki.now);
    row(
        "pay 500.00, two-tap: second tap",
        &pki.run_tap(
            &mut t,
            &mut w,
            TapParams {
                send_certificate: false,
                ..big
            },
            &mut rng,
        ),
    );

    let emv = airtime::exchanges(&airtime::EMV_TYPICAL);
    let emv_apdu: usize = airtime::EMV_TYPICAL.iter().map(|(c, r)| c + r).sum();
    print_row(
        "EMV contactless (PPSE..GENERATE AC)",
        airtime::EMV_TYPICAL.len(),
        emv_apdu,
        emv,
    );
    println!();
}

/// Run one tap, timing only the terminal's work (session + record).
fn terminal_tap(
    pki: &Pki,
    t: &mut TerminalContext,
    w: &mut WalletContext,
    params: &TapParams,
    seq: u64,
) -> Duration {
    let mut rng = OsRng;
    let mut lb = Loopback::new(LinkLimits::EXTENDED, true);
    let start = Instant::now();
    let mut session = TerminalSession::new(params.clone());
    let mut spent = start.elapsed();
    loop {
        let t0 = Instant::now();
        let cmd = session.poll_command();
        spent += t0.elapsed();
        let Some(cmd) = cmd else { break };
        let resp = lb.exchange(w, cmd, pki.now, &mut rng).unwrap();
        let t0 = Instant::now();
        session.handle_response(t, resp, pki.now, &mut rng).unwrap();
        while let Some(ev) = session.poll_event() {
            if let TerminalEvent::Approved(o) = ev {
                let rec = TransactionRecord::new(
                    &o,
                    &t.certificate,
                    t.signing_key(),
                    seq,
                    [0; 32],
                    pki.now,
                    None,
                    None,
                );
                criterion::black_box(rec.to_bytes());
            }
        }
        spent += t0.elapsed();
    }
    spent
}

/// Run one tap, timing only the wallet's work.
fn wallet_tap(
    pki: &Pki,
    t: &mut TerminalContext,
    w: &mut WalletContext,
    params: &TapParams,
) -> Duration {
    let mut rng = OsRng;
    let mut card = tapstack_protocol::apdu::CardLink::new(true);
    let mut wallet = tapstack_protocol::wallet::WalletSession::new();
    let mut session = TerminalSession::new(params.clone());
    let mut spent = Duration::ZERO;
    while let Some(cmd) = session.poll_command() {
        let t0 = Instant::now();
        let bytes = match card.handle_command(&cmd.to_bytes()) {
            tapstack_protocol::apdu::CardInput::Command(c) => {
                let r = wallet.handle_command(w, &c, pki.now, &mut rng);
                card.respond(r, c.le)
            }
            tapstack_protocol::apdu::CardInput::Reply(r) => r,
        };
        spent += t0.elapsed();
        let resp = tapstack_protocol::apdu::Response::parse(&bytes).unwrap();
        session.handle_response(t, resp, pki.now, &mut rng).unwrap();
    }
    spent
}

fn primitives(c: &mut Criterion) {
    use tapstack_protocol::crypto::{self, EphemeralKey};
    let mut g = c.benchmark_group("P-256 primitives (RustCrypto p256)");
    let key = p256::ecdsa::SigningKey::random(&mut OsRng);
    let sig = crypto::sign(&key, b"transcript hash .................");
    let peer = EphemeralKey::generate(&mut OsRng);
    let mine = EphemeralKey::generate(&mut OsRng);
    g.bench_function("ephemeral key generation", |b| {
        b.iter(|| EphemeralKey::generate(&mut OsRng))
    });
    g.bench_function("ECDSA sign", |b| {
        b.iter(|| crypto::sign(&key, b"transcript hash ................."))
    });
    g.bench_function("ECDSA verify", |b| {
        b.iter(|| {
            crypto::verify(
                key.verifying_key(),
                b"transcript hash .................",
                &sig,
            )
            .unwrap()
        })
    });
    g.bench_function("ECDH", |b| b.iter(|| mine.agree(peer.public()).unwrap()));
    g.finish();
}

fn cpu(c: &mut Criterion) {
    let pki = Pki::generate(&mut OsRng);
    let mut g = c.benchmark_group("terminal CPU per tap");
    for (name, send_cert, forget) in [
        ("pay first encounter", true, true),
        ("pay repeat customer", false, false),
    ] {
        let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
        // Prime the caches for the repeat case.
        pki.run_tap(&mut t, &mut w, pay(true), &mut OsRng);
        let params = pay(send_cert);
        let mut seq = 1;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if forget {
                        t.forget_wallet_certificates();
                        w.forget_terminals();
                    }
                    seq += 1;
                    total += terminal_tap(&pki, &mut t, &mut w, &params, seq);
                }
                total
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("wallet CPU per tap");
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    g.bench_function("pay first encounter", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                t.forget_wallet_certificates();
                w.forget_terminals();
                total += wallet_tap(&pki, &mut t, &mut w, &pay(true));
            }
            total
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = primitives, cpu
}

fn main() {
    air_table();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
