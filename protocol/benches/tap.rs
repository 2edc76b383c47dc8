#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly
//! `make bench` part 1: the tap protocol's cost per scenario.
//!
//! Prints the modelled air budget table (round trips, APDU bytes, ISO-DEP
//! bytes, ms at 106/212/424 kbit/s) beside EMV contactless, then measures
//! terminal-side and wallet-side CPU per tap with criterion.

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use rand_core::OsRng;
use tapstack_protocol::airtime::{self, Link};
use tapstack_protocol::apdu::LinkLimits;
use tapstack_protocol::codec::Codec;
use tapstack_protocol::record::TransactionRecord;
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency, Receipt, Scenario};
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

/// The links the table prices every tap on: FSC = FSD = 256, 128 and 64,
/// and what a PN532 under libnfc asks for (FSD 64 with a CID).
fn links() -> [(&'static str, Link); 4] {
    let sym = |f| Link::symmetric(f).expect("an ISO frame size");
    [
        ("FS 256", sym(256)),
        ("FS 128", sym(128)),
        ("FS 64", sym(64)),
        ("PN532", Link::pn532()),
    ]
}

fn row(name: &str, run: &TapRun) {
    let lens: Vec<(usize, usize)> = run
        .wire
        .iter()
        .map(|w| (w.command.len(), w.response.len()))
        .collect();
    print_row(name, run.round_trips(), run.apdu_bytes(), &lens);
    assert!(
        run.outcome.is_some() || run.terminal_events.contains(&TerminalEvent::ConfirmOnPhone),
        "{name}: {:?}",
        run.error
    );
}

fn print_row(name: &str, trips: usize, apdu: usize, lens: &[(usize, usize)]) {
    let mut cols = String::new();
    for (_, link) in links() {
        let air = link.exchanges(lens);
        cols += &format!(" {:>10} | {:>6.1} |", air.bytes, airtime::millis(air, 106));
    }
    let at424 = airtime::millis(Link::default().exchanges(lens), 424);
    println!("| {name:<42} | {trips:>2} | {apdu:>5} |{cols} {at424:>15.1} |");
}

/// Run a tap and, when it is approved, the receipt CONFIRM the terminal
/// always sends once the record is queued.
fn tap_with_receipt(
    pki: &Pki,
    t: &mut TerminalContext,
    w: &mut WalletContext,
    params: TapParams,
    receipt: impl FnOnce(&TapRun) -> Receipt,
    rng: &mut OsRng,
) -> TapRun {
    let mut lb = Loopback::new(LinkLimits::EXTENDED, w.extended);
    let mut run = lb.run(t, w, params, pki.now, rng);
    if run.outcome.is_some() {
        let r = receipt(&run);
        let delivered = lb
            .deliver_receipt(&mut run, t, w, &r, pki.now, rng)
            .unwrap();
        assert!(delivered, "receipt not delivered");
    }
    run
}

fn plain_receipt() -> Receipt {
    Receipt {
        record_check: [7; 4],
        seq: 1234,
        order_number: None,
        cart: None,
        slot: None,
    }
}

fn air_table() {
    let mut rng = OsRng;
    let pki = Pki::generate(&mut rng);
    println!("\n## Air budget per tap, receipt CONFIRM included (ISO-DEP model: 9 bits/byte, PCB [+CID] + CRC per block, FDT 1172/fc; bytes on air and ms at 106 kbit/s per frame size)\n");
    let mut head = String::from("| scenario                                   | RT | APDU  |");
    let mut rule = String::from("|--------------------------------------------|----|-------|");
    for (name, _) in links() {
        head += &format!(" {name:>6} air | ms@106 |");
        rule += "------------|--------|";
    }
    println!("{head} ms@424 (FS 256) |");
    println!("{rule}-----------------|");

    for (extended, links) in [(true, ""), (false, ", short APDUs only")] {
        let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
        w.extended = extended;
        for (send_cert, who) in [(true, "first encounter"), (false, "repeat customer")] {
            let run = tap_with_receipt(
                &pki,
                &mut t,
                &mut w,
                pay(send_cert),
                |_| plain_receipt(),
                &mut rng,
            );
            let hashes = if send_cert || !extended {
                ""
            } else {
                " (hashes only)"
            };
            row(&format!("pay, {who}{hashes}{links}"), &run);
        }
    }

    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let order = TapParams {
        scenario: Scenario::order(&cart()).unwrap(),
        cvm_limit: 1_000_000,
        send_certificate: true,
    };
    let order_receipt = |_: &TapRun| Receipt {
        order_number: Some("A17".into()),
        cart: Some(cart()),
        ..plain_receipt()
    };
    let run = tap_with_receipt(&pki, &mut t, &mut w, order, order_receipt, &mut rng);
    row("order (2 items), first encounter", &run);

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
    let slot_receipt = |_: &TapRun| Receipt {
        slot: Some(12),
        ..plain_receipt()
    };
    // Pickups need presence: the user unlocked the phone just before (armed).
    w.arm(pki.now, 60);
    let run = tap_with_receipt(&pki, &mut t, &mut w, pickup, slot_receipt, &mut rng);
    row("pickup, first encounter (phone armed)", &run);

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
    let second = TapParams {
        send_certificate: false,
        ..big
    };
    let run = tap_with_receipt(&pki, &mut t, &mut w, second, |_| plain_receipt(), &mut rng);
    row("pay 500.00, two-tap: second tap", &run);

    let emv_apdu: usize = airtime::EMV_TYPICAL.iter().map(|(c, r)| c + r).sum();
    print_row(
        "EMV contactless (PPSE..GENERATE AC)",
        airtime::EMV_TYPICAL.len(),
        emv_apdu,
        &airtime::EMV_TYPICAL,
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
        let sent = Instant::now();
        let resp = lb.exchange(w, cmd, pki.now, &mut rng).unwrap();
        let elapsed = sent.elapsed();
        let t0 = Instant::now();
        session
            .handle_response(t, resp, elapsed, pki.now, &mut rng)
            .unwrap();
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
        session
            .handle_response(t, resp, Duration::ZERO, pki.now, &mut rng)
            .unwrap();
    }
    spent
}

/// Median and spread (min..max) of `runs` medians of `per_run` calls of `f`,
/// in µs per call.
fn time_us(runs: usize, per_run: u32, mut f: impl FnMut()) -> (f64, f64, f64) {
    for _ in 0..per_run.div_ceil(4) {
        f();
    }
    let mut meds: Vec<f64> = (0..runs)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..per_run {
                f();
            }
            t0.elapsed().as_secs_f64() * 1e6 / f64::from(per_run)
        })
        .collect();
    meds.sort_by(f64::total_cmp);
    (meds[meds.len() / 2], meds[0], meds[meds.len() - 1])
}

/// `openssl speed` for ECDSA P-256 and ECDH P-256: (sign µs, verify µs,
/// ECDH µs), single core.
fn openssl_speed() -> Option<(f64, f64, f64)> {
    let out = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "2", "ecdsap256", "ecdhp256"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  48852.9  16284.9"
    // " 256 bits ecdh (nistp256)   0.0001s  17000.0"
    let ecdsa = text.lines().find(|l| l.contains("ecdsa (nistp256)"))?;
    let ecdh = text.lines().find(|l| l.contains("ecdh (nistp256)"))?;
    let nums = |l: &str| -> Vec<f64> {
        l.split_whitespace()
            .filter_map(|w| w.parse::<f64>().ok())
            .collect()
    };
    let e = nums(ecdsa);
    let d = nums(ecdh);
    let (sign_s, verify_s) = (*e.get(e.len().checked_sub(2)?)?, *e.last()?);
    let ecdh_s = *d.last()?;
    Some((1e6 / sign_s, 1e6 / verify_s, 1e6 / ecdh_s))
}

/// DESIGN §8: terminal CPU per tap against the sum of its primitive
/// operations (ring's sign/verify/ECDH, AES-CTR, AES-CMAC, SHA-256 at the
/// sizes a tap uses), measured in the same run.
fn terminal_budget() {
    use tapstack_protocol::crypto::{self, Direction, SessionKeys};
    let pki = Pki::generate(&mut OsRng);
    let backend = crypto::fast_backend();
    let mut t = TerminalContext::with_backend(
        pki.terminal.cert.clone(),
        &pki.terminal.key,
        pki.terminal_trust(),
        backend,
    )
    .unwrap();
    let mut w = pki.wallet_context();
    let first = pki.run_tap(&mut t, &mut w, pay(true), &mut OsRng);
    let outcome = first.outcome.clone().unwrap();
    // Sizes this tap hashes, MACs and encrypts.
    let sealed_len = first
        .wire
        .iter()
        .map(|x| x.response.len())
        .max()
        .unwrap_or(0)
        .saturating_sub(2);
    let fci_len = first.wire.first().map_or(0, |x| x.response.len() - 2);
    let th1_in = 15 + 8 + fci_len + outcome.transcript.auth_body.len();
    let th2_in = 15 + 32 + 64 + outcome.transcript.wallet_body.len();
    let record = TransactionRecord::new(
        &outcome,
        &t.certificate,
        t.signing_key(),
        2,
        [0; 32],
        pki.now,
        None,
        None,
    );
    let record_len = record.to_bytes().len();
    let wallet_der = outcome.wallet.der().len();

    // Primitive timings (median of 7 runs).
    let key = backend.key_pair(&pki.terminal.key).unwrap();
    let msg = [7u8; 32];
    let sig = crypto::sign(&key, &msg);
    let vk = *key.verifying_key();
    let peer = crypto::EphemeralKey::generate(&mut OsRng);
    let (sign, ..) = time_us(7, 400, || {
        criterion::black_box(crypto::sign(&key, &msg));
    });
    let (verify, ..) = time_us(7, 400, || {
        crypto::verify_with(backend.verifier(), &vk, &msg, &sig).unwrap();
    });
    let (ecdh, ..) = time_us(7, 400, || {
        let e = backend.ephemeral(&mut OsRng).unwrap();
        criterion::black_box(e.agree(peer.public()).unwrap());
    });
    let keys = SessionKeys::derive(&[1; 32], &[2; 32]);
    let plain = vec![0u8; sealed_len.saturating_sub(8)];
    let sealed = keys.seal(Direction::WalletToTerminal, 0, &[0x50], &plain);
    let (open, ..) = time_us(7, 4000, || {
        criterion::black_box(
            keys.open(Direction::WalletToTerminal, 0, &[0x50], &sealed)
                .unwrap(),
        );
    });
    let (kdf, ..) = time_us(7, 4000, || {
        criterion::black_box(SessionKeys::derive(&[1; 32], &[2; 32]));
    });
    let hash = |n: usize| {
        let data = vec![0u8; n];
        time_us(7, 4000, || {
            criterion::black_box(crypto::sha256(&[&data]));
        })
        .0
    };
    let rows: [(&str, f64, f64); 8] = [
        ("ECDSA sign (TH1, record)", 2.0, sign),
        ("ECDSA verify (wallet cert, TH2)", 2.0, verify),
        ("ECDH keygen + agree", 1.0, ecdh),
        ("KDF (extract + expand, 3 CMAC)", 1.0, kdf),
        ("open: CMAC + CTR, sealed reply", 1.0, open),
        ("SHA-256 TH1 input", 1.0, hash(th1_in)),
        ("SHA-256 TH2 input", 1.0, hash(th2_in)),
        (
            "SHA-256 record + wallet cert",
            1.0,
            hash(record_len) + hash(wallet_der),
        ),
    ];
    println!(
        "\n## Terminal CPU per tap vs its primitives ({} backend)\n",
        backend.name()
    );
    println!("| primitive                          | n | µs each | µs |");
    println!("|------------------------------------|---|---------|----|");
    let mut sum = 0.0;
    for (name, n, us) in rows {
        println!("| {name:<34} | {n} | {us:>7.1} | {:>6.1} |", n * us);
        sum += n * us;
    }
    println!("| **sum of primitives**              |   |         | {sum:>6.1} |");

    for (name, send_cert, forget) in [
        ("pay first encounter", true, true),
        ("pay repeat customer", false, false),
    ] {
        let params = pay(send_cert);
        let mut seq = 10;
        let mut per_tap: Vec<f64> = (0..7)
            .map(|_| {
                let mut total = Duration::ZERO;
                for _ in 0..200 {
                    if forget {
                        t.forget_wallet_certificates();
                        w.forget_terminals();
                    }
                    seq += 1;
                    total += terminal_tap(&pki, &mut t, &mut w, &params, seq);
                }
                total.as_secs_f64() * 1e6 / 200.0
            })
            .collect();
        per_tap.sort_by(f64::total_cmp);
        let med = per_tap[3];
        // The repeat customer verifies one signature, not two.
        let budget = if forget { sum } else { sum - verify };
        println!(
            "terminal CPU per tap, {name}: {med:.1} µs (runs {:.1}–{:.1}); primitives {budget:.1} µs; ratio {:.2}× (target ≤ 1.5×)",
            per_tap[0],
            per_tap[6],
            med / budget
        );
    }
    match openssl_speed() {
        Some((s, v, d)) => println!(
            "ceiling, openssl speed (1 core): sign {s:.1} µs, verify {v:.1} µs, ECDH {d:.1} µs; \
             2 sign + 2 verify + 1 ECDH = {:.1} µs",
            2.0 * s + 2.0 * v + d
        ),
        None => println!("ceiling: openssl speed unavailable"),
    }
    println!();
}

fn primitives(c: &mut Criterion) {
    use tapstack_protocol::crypto::{self, Backend, EphemeralKey, Ring};
    let mut g = c.benchmark_group("P-256 primitives (ring backend)");
    let key = p256::ecdsa::SigningKey::random(&mut OsRng);
    let pair = Ring.key_pair(&key).unwrap();
    let sig = crypto::sign(&pair, b"transcript hash .................");
    let peer = EphemeralKey::generate(&mut OsRng);
    g.bench_function("keygen + ECDH", |b| {
        b.iter(|| {
            Ring.ephemeral(&mut OsRng)
                .unwrap()
                .agree(peer.public())
                .unwrap()
        })
    });
    g.bench_function("ECDSA sign", |b| {
        b.iter(|| crypto::sign(&pair, b"transcript hash ................."))
    });
    g.bench_function("ECDSA verify", |b| {
        b.iter(|| {
            crypto::verify_with(
                &Ring,
                key.verifying_key(),
                b"transcript hash .................",
                &sig,
            )
            .unwrap()
        })
    });
    g.finish();
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
    let mut g = c.benchmark_group("terminal CPU per tap (ring)");
    for (name, send_cert, forget) in [
        ("pay first encounter", true, true),
        ("pay repeat customer", false, false),
    ] {
        let mut t = TerminalContext::with_backend(
            pki.terminal.cert.clone(),
            &pki.terminal.key,
            pki.terminal_trust(),
            tapstack_protocol::crypto::fast_backend(),
        )
        .unwrap();
        let mut w = pki.wallet_context();
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
    terminal_budget();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
