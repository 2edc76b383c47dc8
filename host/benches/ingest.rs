//! `make bench`, host part: ingest throughput — records verified and durably
//! stored per second — with many concurrent terminals uploading over
//! loopback HTTPS with mutual TLS, printed beside the machine's raw
//! ECDSA-verify ceiling (`openssl speed -multi $(nproc) ecdsap256`, run by this
//! same process) divided by the signatures each record needs.
//!
//! A pay record needs 4 ECDSA P-256 verifications on first sight of its
//! wallet (3 once the wallet certificate is cached): the terminal's signature
//! over the record, the terminal's over TH1, the wallet's over TH2, and the
//! issuer's over the wallet certificate. (The terminal certificate's own
//! signature is checked once per connection and once per batch, not per
//! record; the roots and CAs once at start-up.)
//!
//! Budget (DESIGN §8): ingest ≥ 85 % of the all-core verify/s ÷ 4; the
//! PostgreSQL store at one instance ≥ 70 % of sled.
//!
//! The issuer master key, two ways, same records, same run: the file key
//! (`issuer-master.key`, in host memory) and the same key imported into a
//! SoftHSM2 token (`tap-host serve --hsm`), where each record's wallet key
//! is derived inside the token (one `C_Sign(CKM_AES_CMAC)`). Issue 11 asks
//! for the HSM at ≥ 90 % of the file-key rate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../certs/tests/softhsm/mod.rs"]
mod softhsm;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::OsRng;
use tapstack_certs::LeafOptions;
use tapstack_host::client::HostClient;
use tapstack_host::ingest::VerifyMode;
use tapstack_host::server::{unix_now, Host, HostOptions, Limits};
use tapstack_host::store::{SledStore, Store};
use tapstack_host::tls::{self, TlsIdentity};
use tapstack_protocol::record::TransactionRecord;
use tapstack_protocol::scenario::{Amount, Currency, Scenario};
use tapstack_protocol::terminal::TapParams;
use tapstack_protocol::testkit::{self, Identity};
use tapstack_protocol::Codec;

/// With the host's cache of verified wallet certificates, a repeat
/// wallet's record needs 3: the terminal over the record, the terminal
/// over TH1, the wallet over TH2 (the issuer's over the wallet certificate
/// is checked once per certificate).
const SIGNATURES_PER_RECORD: f64 = 3.0;
const TERMINALS: usize = 64;
const RECORDS_PER_TERMINAL: usize = 96;
const WALLETS: usize = 256;
const BATCH: usize = 32;

/// `openssl speed -multi <cores> -seconds 3 ecdsap256`: the machine's
/// verify ceiling on all its cores (the ingest runs on all of them too).
fn openssl_verify_per_sec(cores: usize) -> Option<f64> {
    let out = std::process::Command::new("openssl")
        .args([
            "speed",
            "-multi",
            &cores.to_string(),
            "-seconds",
            "3",
            "ecdsap256",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  48852.9  16284.9"
    let line = text.lines().find(|l| l.contains("nistp256"))?;
    line.split_whitespace().last()?.parse().ok()
}

struct Setup {
    _dir: tempfile::TempDir,
    pki_dir: std::path::PathBuf,
    certs: tapstack_certs::Pki,
    terminals: Vec<(Identity, Vec<Vec<u8>>)>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let now = unix_now();
    let certs = tapstack_certs::init(&pki_dir, now, &mut OsRng).unwrap();
    let id = |i: &tapstack_certs::Identity| Identity {
        cert: i.cert.clone(),
        key: i.key.clone(),
    };
    let leaves = dir.path().join("leaves");
    let mut ids = Vec::new();
    for k in 0..TERMINALS {
        let opts = LeafOptions {
            days: None,
            file_stem: Some(format!("t{k}")),
        };
        ids.push(id(&certs
            .issue_terminal(&format!("Kiosk {k}"), &leaves, &opts, now, &mut OsRng)
            .unwrap()
            .identity));
    }
    let kit = testkit::Pki {
        root: id(certs.root()),
        issuer: id(certs.issuer()),
        acquirer: id(certs.acquirer()),
        operator: id(certs.operator()),
        terminal: ids[0].clone(),
        kiosk: testkit::endorse_with(
            &id(certs.operator()),
            &ids[0].cert,
            &testkit::KIOSK_SITES,
            now,
            &mut OsRng,
        ),
        wallet: id(certs.issuer()),
        issuer_master_key: certs.issuer_master_key().unwrap().clone(),
        now,
    };
    let wallets: Vec<Identity> = (0..WALLETS).map(|_| kit.new_wallet(&mut OsRng)).collect();
    // Make the taps on both cores: each thread owns half the terminals and
    // half the wallets (a wallet's ATC lives in its context).
    let halves: Vec<Vec<(Identity, Vec<Vec<u8>>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|h| {
                let kit = &kit;
                let ids: Vec<Identity> = ids.iter().skip(h).step_by(2).cloned().collect();
                let ws: Vec<Identity> = wallets.iter().skip(h).step_by(2).cloned().collect();
                s.spawn(move || {
                    let mut wctx: Vec<_> = ws.iter().map(|w| kit.wallet_context_for(w)).collect();
                    let cny = Currency::new("CNY").unwrap();
                    let mut n = 0usize;
                    ids.into_iter()
                        .map(|t| {
                            let mut ctx = kit.terminal_context_for(&t);
                            let mut prev = [0u8; 32];
                            let records = (1..=RECORDS_PER_TERMINAL as u64)
                                .map(|seq| {
                                    n += 1;
                                    let w = &mut wctx[n % ws.len()];
                                    let scenario = Scenario::Pay {
                                        amount: Amount {
                                            minor: 100 + seq,
                                            currency: cny,
                                        },
                                    };
                                    let run = kit.run_tap(
                                        &mut ctx,
                                        w,
                                        TapParams {
                                            scenario,
                                            cvm_limit: 1_000_000,
                                            send_certificate: true,
                                        },
                                        &mut OsRng,
                                    );
                                    let o = run.outcome.unwrap();
                                    let r = TransactionRecord::new(
                                        &o, &t.cert, &t.key, seq, prev, kit.now, None, None,
                                    );
                                    prev = r.hash();
                                    r.to_bytes()
                                })
                                .collect();
                            (t, records)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let terminals = halves.into_iter().flatten().collect();
    Setup {
        _dir: dir,
        pki_dir,
        certs,
        terminals,
    }
}

/// Upload everything over HTTPS; returns (records stored, seconds).
fn run(
    setup: &Setup,
    mode: VerifyMode,
    issuer_keys: Option<Arc<dyn tapstack_certs::IssuerKeys>>,
    store: Arc<dyn Store>,
) -> (usize, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (total, secs) = rt.block_on(async {
        let certs = tapstack_certs::PublicPki::load(&setup.pki_dir).unwrap();
        // The host's TLS identity from a TLS CA of its own (not the payment root).
        let tls_ca = tapstack_certs::TlsCa::generate(30, unix_now(), &mut OsRng).unwrap();
        let server = tls_ca
            .issue_server(&["localhost".parse().unwrap()], 30, unix_now(), &mut OsRng)
            .unwrap();
        let limits = Limits {
            ingest_concurrency: 8,
            ..Limits::default()
        };
        let host = Host::from_pki(
            &certs,
            store.clone(),
            TlsIdentity::from_tls_server(&server).unwrap(),
            HostOptions {
                verify_mode: mode,
                issuer_keys,
                limits,
                ..Default::default()
            },
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(host.serve(listener, async {
            let _ = stop_rx.await;
        }));
        // Connect every terminal first (TLS handshakes are not ingest).
        let mut clients = Vec::new();
        for (n, (id, records)) in setup.terminals.iter().enumerate() {
            // Each terminal connects with its TLS certificate, not its
            // transcript-signing one.
            let tls_id = setup
                .certs
                .issue_terminal_tls(
                    &id.cert,
                    &setup._dir.path().join("tls-leaves"),
                    &LeafOptions {
                        days: None,
                        file_stem: Some(format!("tls{n}-{}", unix_now())),
                    },
                    unix_now(),
                    &mut OsRng,
                )
                .unwrap()
                .identity;
            let tls = tls::client_config(
                tls_ca.cert_der(),
                Some(
                    TlsIdentity::from_protocol(
                        &tls_id.cert,
                        &tls_id.key,
                        &[&setup.certs.acquirer().cert],
                    )
                    .unwrap(),
                ),
            )
            .unwrap();
            let c = HostClient::new(addr, tls::server_name("localhost").unwrap(), tls)
                .with_timeout(Duration::from_secs(300))
                .with_terminal_certificate(id.cert.der().to_vec());
            c.health().await.unwrap();
            clients.push((c, records.clone()));
        }
        let start = Instant::now();
        let jobs: Vec<_> = clients
            .into_iter()
            .map(|(c, records)| {
                tokio::spawn(async move {
                    let mut stored = 0;
                    for chunk in records.chunks(BATCH) {
                        let r = c.upload(chunk).await.unwrap();
                        assert_eq!(r.accepted, chunk.len(), "{r:?}");
                        stored += r.accepted;
                    }
                    stored
                })
            })
            .collect();
        let mut total = 0;
        for j in jobs {
            total += j.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let _ = stop_tx.send(());
        let _ = server.await;
        (total, secs)
    });
    // The stores block: checked off the runtime.
    assert_eq!(store.records().unwrap().len(), total);
    (total, secs)
}

/// A fresh sled store in its own temporary directory (kept alive by the
/// returned guard).
fn sled_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Arc::new(SledStore::open(dir.path()).unwrap()), dir)
}

/// Single-thread verifications per second of ring and RustCrypto p256.
fn primitive_rates() -> (f64, f64) {
    use p256::ecdsa::SigningKey;
    let key = SigningKey::random(&mut OsRng);
    let sig = tapstack_protocol::crypto::sign(&key, b"record");
    let time = |f: &dyn Fn() -> bool| {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_millis(700) {
            assert!(f());
            n += 1;
        }
        f64::from(n) / start.elapsed().as_secs_f64()
    };
    let ring = time(&|| {
        tapstack_protocol::crypto::verify_with(
            &tapstack_host::fastverify::Ring,
            key.verifying_key(),
            b"record",
            &sig,
        )
        .is_ok()
    });
    let p256 =
        time(&|| tapstack_protocol::crypto::verify(key.verifying_key(), b"record", &sig).is_ok());
    (ring, p256)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us with no
    // such flag: then only check that it works, quickly.
    let quick = !std::env::args().any(|a| a == "--bench");
    if quick {
        println!("ingest bench: skipped outside `cargo bench`");
        return;
    }
    println!("host ingest benchmark: {TERMINALS} terminals × {RECORDS_PER_TERMINAL} pay records, batches of {BATCH}, {WALLETS} wallets, loopback HTTPS + mTLS, sled with fsync before every acknowledgement");
    let t0 = Instant::now();
    let setup = setup();
    println!(
        "  (made {} signed records in {:.1} s)",
        TERMINALS * RECORDS_PER_TERMINAL,
        t0.elapsed().as_secs_f64()
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (ring, p256) = primitive_rates();
    let openssl = openssl_verify_per_sec(cores);
    // The same master key in a SoftHSM2 token.
    let hsm = softhsm::SoftHsm::new();
    let token_key: Arc<dyn tapstack_certs::IssuerKeys> = Arc::new(
        tapstack_certs::HsmMasterKey::import(
            &hsm.spec(softhsm::KEY_LABEL),
            hsm.pin(),
            setup.certs.issuer_master_key().unwrap(),
        )
        .unwrap(),
    );
    let derive_rate = |keys: &dyn tapstack_certs::IssuerKeys| {
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_millis(700) {
            keys.wallet_key(&n.to_be_bytes()).unwrap();
            n += 1;
        }
        f64::from(n) / start.elapsed().as_secs_f64()
    };
    let file_derive = derive_rate(setup.certs.issuer_master_key().unwrap());
    let hsm_derive = derive_rate(&*token_key);
    // Interleaved, three times each, so drift on a shared machine hits both;
    // each run is only about a second, so single runs move by ±10 %.
    // PostgreSQL, one instance: a private server (initdb in a temp dir),
    // a fresh database per run.
    let pg = tapstack_tests::Postgres::start().unwrap();
    let (mut file_rates, mut hsm_rates, mut pg_rates) = (Vec::new(), Vec::new(), Vec::new());
    let mut n = 0;
    for i in 0..3 {
        let (store, _dir) = sled_store();
        let (fnum, fsecs) = run(&setup, VerifyMode::Ring, None, store);
        file_rates.push(fnum as f64 / fsecs);
        let (store, _dir) = sled_store();
        let (hnum, hsecs) = run(&setup, VerifyMode::Ring, Some(token_key.clone()), store);
        hsm_rates.push(hnum as f64 / hsecs);
        let url = pg.create_database(&format!("bench{i}")).unwrap();
        let store: Arc<dyn Store> = Arc::new(
            tapstack_host::store::PgStore::open(&url, tapstack_host::store::DEFAULT_POOL_SIZE)
                .unwrap(),
        );
        let (pnum, psecs) = run(&setup, VerifyMode::Ring, None, store);
        pg_rates.push(pnum as f64 / psecs);
        n = fnum;
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let ingest = mean(&file_rates);
    let ingest_hsm = mean(&hsm_rates);
    let ingest_pg = mean(&pg_rates);
    let secs = n as f64 / ingest;
    let (store, _dir) = sled_store();
    let (rn, rsecs) = run(&setup, VerifyMode::Reference, None, store);
    let reference = rn as f64 / rsecs;

    println!();
    println!("  cores                                   {cores}");
    println!("  ECDSA P-256 verify, 1 core: ring        {ring:>9.0} /s");
    println!(
        "  ECDSA P-256 verify, 1 core: protocol    {p256:>9.0} /s  (crypto::verify, RustCrypto)"
    );
    match openssl {
        Some(v) => println!(
            "  openssl speed -multi {cores} ecdsap256        {v:>9.0} verify/s (all cores)"
        ),
        None => println!("  openssl speed ecdsap256                 unavailable"),
    }
    println!("  signatures per record                   {SIGNATURES_PER_RECORD}");
    println!("  wallet-key derivations, 1 thread: file  {file_derive:>9.0} /s");
    println!("  wallet-key derivations, 1 thread: HSM   {hsm_derive:>9.0} /s  (SoftHSM2, C_Sign CKM_AES_CMAC)");
    println!("  ingest, ring verifier (default)         {ingest:>9.0} records/s  ({n} records in {secs:.2} s; runs {file_rates:.0?})");
    println!("  ingest, ring, master key in SoftHSM2    {ingest_hsm:>9.0} records/s  (runs {hsm_rates:.0?})");
    println!(
        "  HSM / file key                          {:>8.0} %   aim ≥ 90 %: {}",
        ingest_hsm / ingest * 100.0,
        if ingest_hsm >= 0.90 * ingest {
            "MET"
        } else {
            "MISSED"
        }
    );
    println!("  ingest, ring, PostgreSQL (1 instance)   {ingest_pg:>9.0} records/s  (runs {pg_rates:.0?}; pool {})", tapstack_host::store::DEFAULT_POOL_SIZE);
    println!(
        "  PostgreSQL / sled                       {:>8.0} %   aim ≥ 70 %: {}",
        ingest_pg / ingest * 100.0,
        if ingest_pg >= 0.70 * ingest {
            "MET"
        } else {
            "MISSED"
        }
    );
    println!("  ingest, reference verifier (p256)       {reference:>9.0} records/s  ({rn} records in {rsecs:.2} s)");
    if let Some(v) = openssl {
        let ceiling = v / SIGNATURES_PER_RECORD;
        let ratio = ingest / ceiling;
        println!("  ceiling = openssl verify/s ÷ {SIGNATURES_PER_RECORD}          {ceiling:>9.0} records/s");
        println!(
            "  ingest / ceiling                        {:>8.0} %   budget ≥ 85 %: {}",
            ratio * 100.0,
            if ratio >= 0.85 { "MET" } else { "MISSED" }
        );
        println!(
            "  reference / ceiling                     {:>8.0} %",
            reference / ceiling * 100.0
        );
    }
}
