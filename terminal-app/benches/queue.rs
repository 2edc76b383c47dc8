//! `make bench`, the terminal (docs/BENCHMARKS.md §5):
//!
//! 1. **Durable queue append.** Real signed pay records (taps run in memory
//!    with `tapstack_protocol::testkit`, records built with
//!    `TransactionRecord::new` and chained) appended with `Queue::append`,
//!    which returns only once the record and the high-water mark naming it
//!    are on the device, beside a bare `write` of the same bytes (checksum ‖
//!    record, as the queue stores them) followed by `File::sync_all` (fsync)
//!    or `File::sync_data` (fdatasync), sled alone (insert + flush, with and
//!    without an fdatasync), and two bare files flushed one after the other
//!    or together. `TAPSTACK_QUEUE_RUNS` runs (default 5) over fresh files in
//!    one temp dir; in each the rows are interleaved, rotating their order,
//!    so load from other work falls on all of them alike. Budget (issue 9):
//!    append within 2.5× of write + fsync, judged on the spread of the
//!    per-run medians.
//! 2. **Whole-tap latency through each driver.** A pay tap (SELECT,
//!    AUTHORIZE, record durably queued, CONFIRM with the receipt) driven by
//!    `Engine::tap` through `emu:` in process, the native PN532 driver and
//!    libnfc on a PTY (`tap-emu pn532`), and PC/SC (private pcscd +
//!    `tap-emu vpcd`). Timed inside `Field::with_phone`'s closure: from the
//!    phone in the field with a session open to "approved" (record flushed,
//!    the receipt about to go out) and to the end of the tap (receipt
//!    delivered); the wait for the phone to arrive and to leave is outside.
//!    Beside it the modelled air time (`tapstack_protocol::airtime`) of the
//!    same APDUs: the emulator's links have no radio, so the measured
//!    numbers exclude it.
//!
//! Needs `cargo build --release --bins` (tap-emu) and, for the PC/SC row,
//! Debian's pcscd and vsmartcard-vpcd; a driver that cannot run is reported
//! as skipped, with the reason. `TAPSTACK_BENCH_ONLY=queue` or `=taps` runs
//! one half.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand_core::OsRng;
use tapstack_certs::LeafOptions;
use tapstack_protocol::airtime;
use tapstack_protocol::codec::Codec;
use tapstack_protocol::crypto::sha256;
use tapstack_protocol::messages::INS_CONFIRM;
use tapstack_protocol::record::TransactionRecord;
use tapstack_protocol::scenario::{Amount, Currency, Scenario};
use tapstack_protocol::terminal::{TapOutcome, TapParams};
use tapstack_protocol::testkit::Pki;
use tapstack_reader::{Cancel, Capabilities, ReaderError, Session, TargetInfo};
use tapstack_terminal::app::{self, Field};
use tapstack_terminal::config::Config;
use tapstack_terminal::queue::{Queue, QueueStore, RecordFacts};
use tapstack_terminal::tap::{Intent, TapResult};
use tapstack_tests::{Child, Pcscd, VPCD_READER};

/// Measured appends per operation (issue 5: N = 500).
const N_APPEND: usize = 500;
/// Appends per operation before measuring (sled's first segment, page cache).
const WARMUP_APPEND: usize = 20;
/// Measured taps per driver.
const N_TAPS: usize = 30;
/// Taps per driver before measuring (first encounter: certificate caches).
const WARMUP_TAPS: usize = 1;
/// Give up on a driver after this many declined or missed taps.
const MAX_FAILED_TAPS: usize = 10;

fn cny(minor: u64) -> Amount {
    Amount {
        minor,
        currency: Currency::new("CNY").unwrap(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Nearest-rank quantile of sorted `v`.
fn q(v: &[f64], p: f64) -> f64 {
    let rank = ((v.len() as f64) * p).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// The filesystem `dir` lives on, from /proc/self/mounts (longest mount point).
fn filesystem_of(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, at, fs) = (f.next()?, f.next()?, f.next()?);
            dir.starts_with(at)
                .then(|| (at.len(), format!("{fs} ({dev} on {at})")))
        })
        .max_by_key(|(n, _)| *n)
        .map_or_else(|| "unknown filesystem".into(), |(_, s)| s)
}

// ---------------------------------------------------------------------------
// 1. Durable queue append
// ---------------------------------------------------------------------------

struct Prepared {
    facts: RecordFacts,
    record: TransactionRecord,
    /// What the queue stores for it: SHA-256(record) ‖ record.
    stored: Vec<u8>,
}

const OPS: [&str; 8] = [
    "`Queue::append`, record signed beforehand (record + ATC index inserted, `flush`; the mark's slot written and handed to the device; one fdatasync of sled's file flushes both)",
    "`Queue::append`, record signed inside (as `Engine::tap` calls it)",
    "sled alone: one `insert` + `flush` of the same bytes",
    "bare `write` + `File::sync_all` (fsync) of the same bytes",
    "bare `write` + `File::sync_data` (fdatasync) of the same bytes",
    "bare, two files one after the other: `write` + fdatasync of the bytes, then `pwrite` + fdatasync of a 128-B mark slot",
    "bare, two files together: the same two writes, the two fdatasyncs issued at once (two threads)",
    "sled alone: `insert` + `flush` + fdatasync of its file (the durable queue without a mark)",
];

/// Interleaved runs of the append measurement (`TAPSTACK_QUEUE_RUNS`).
fn queue_runs() -> usize {
    std::env::var("TAPSTACK_QUEUE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(5)
}

/// One interleaved run over fresh files; latencies per operation, sorted.
fn queue_run(prepared: &[Prepared], outcomes: &[TapOutcome], pki: &Pki) -> (Vec<Vec<f64>>, String) {
    let (cert, key) = (&pki.terminal.cert, &pki.terminal.key);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let queue = Queue::open(&d.join("queue")).unwrap();
    let signing_queue = Queue::open(&d.join("queue-signing")).unwrap();
    let bare_sled = sled::Config::new()
        .path(d.join("sled-alone"))
        .open()
        .unwrap();
    let synced_sled = sled::Config::new()
        .path(d.join("sled-synced"))
        .open()
        .unwrap();
    let synced_file = std::fs::File::open(d.join("sled-synced").join("db")).unwrap();
    let open_log = |name: &str| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join(name))
            .unwrap()
    };
    let (mut f_all, mut f_data) = (
        open_log("bare-sync_all.log"),
        open_log("bare-sync_data.log"),
    );
    let (mut f_seq, mut f_par) = (open_log("bare-seq.log"), open_log("bare-par.log"));
    let open_mark = |name: &str| {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(d.join(name))
            .unwrap();
        f.set_len(256).unwrap();
        f
    };
    let (m_seq, m_par) = (open_mark("seq.hwm"), open_mark("par.hwm"));
    let slot = [0x5au8; 128];
    let total = prepared.len();
    let mut lat: Vec<Vec<f64>> = vec![Vec::with_capacity(N_APPEND); OPS.len()];
    let mut stored_hashes = Vec::with_capacity(total);
    for (i, p) in prepared.iter().enumerate() {
        for k in 0..OPS.len() {
            let op = (i + k) % OPS.len();
            let s = Instant::now();
            match op {
                0 => {
                    let st = queue
                        .append(p.facts.clone(), &mut |_, _| p.record.clone())
                        .unwrap();
                    stored_hashes.push((st.seq, st.hash));
                }
                1 => {
                    signing_queue
                        .append(p.facts.clone(), &mut |seq, prev| {
                            TransactionRecord::new(
                                &outcomes[i],
                                cert,
                                key,
                                seq,
                                prev,
                                pki.now,
                                None,
                                None,
                            )
                        })
                        .unwrap();
                }
                2 => {
                    bare_sled
                        .insert((i as u64 + 1).to_be_bytes(), p.stored.as_slice())
                        .unwrap();
                    bare_sled.flush().unwrap();
                }
                3 => {
                    f_all.write_all(&p.stored).unwrap();
                    f_all.sync_all().unwrap();
                }
                4 => {
                    f_data.write_all(&p.stored).unwrap();
                    f_data.sync_data().unwrap();
                }
                5 => {
                    f_seq.write_all(&p.stored).unwrap();
                    f_seq.sync_data().unwrap();
                    m_seq.write_all_at(&slot, (i as u64 % 2) * 128).unwrap();
                    m_seq.sync_data().unwrap();
                }
                7 => {
                    synced_sled
                        .insert((i as u64 + 1).to_be_bytes(), p.stored.as_slice())
                        .unwrap();
                    synced_sled.flush().unwrap();
                    synced_file.sync_data().unwrap();
                }
                _ => {
                    f_par.write_all(&p.stored).unwrap();
                    m_par.write_all_at(&slot, (i as u64 % 2) * 128).unwrap();
                    std::thread::scope(|sc| {
                        let h = sc.spawn(|| f_par.sync_data());
                        m_par.sync_data().unwrap();
                        h.join().unwrap().unwrap();
                    });
                }
            }
            let us = s.elapsed().as_secs_f64() * 1e6;
            if i >= WARMUP_APPEND {
                lat[op].push(us);
            }
        }
    }
    // The queue holds exactly the prepared chain.
    for ((seq, hash), p) in stored_hashes.iter().zip(prepared) {
        assert_eq!(
            (*seq, hash.as_slice()),
            (p.record.seq, &p.stored[..32]),
            "queue chain differs"
        );
    }
    assert_eq!(queue.head().unwrap().0, total as u64);
    assert_eq!(queue.all().unwrap().len(), total);
    assert!(queue.integrity().is_ok());
    assert_eq!(signing_queue.head().unwrap().0, total as u64);
    let fs = format!("{} on {}", d.display(), filesystem_of(d));
    (lat.into_iter().map(sorted).collect(), fs)
}

fn queue_bench() {
    let total = WARMUP_APPEND + N_APPEND;
    let mut rng = OsRng;
    let pki = Pki::generate(&mut rng);
    let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
    let params = TapParams {
        scenario: Scenario::Pay { amount: cny(1250) },
        cvm_limit: 1_000_000,
        send_certificate: true,
    };
    let started = Instant::now();
    let outcomes: Vec<TapOutcome> = (0..total)
        .map(|i| {
            let run = pki.run_tap(&mut t, &mut w, params.clone(), &mut rng);
            run.outcome
                .unwrap_or_else(|| panic!("in-memory tap {i}: {:?}", run.error))
        })
        .collect();
    let (cert, key) = (&pki.terminal.cert, &pki.terminal.key);
    // The chain the queue will build: seq 1.., each prev_hash the hash of
    // the record before, so the pre-signed records are exactly the ones
    // `append` asks for.
    let mut prev = [0u8; 32];
    let prepared: Vec<Prepared> = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let record =
                TransactionRecord::new(o, cert, key, i as u64 + 1, prev, pki.now, None, None);
            let bytes = record.to_bytes();
            prev = sha256(&[&bytes]);
            let mut stored = prev.to_vec();
            stored.extend_from_slice(&bytes);
            let facts = RecordFacts {
                wallet: *o.wallet.hash(),
                atc: o.atc,
                credential: None,
                intent: None,
            };
            Prepared {
                facts,
                record,
                stored,
            }
        })
        .collect();
    let prep_time = started.elapsed();

    let runs = queue_runs();
    let mut ratios: Vec<(f64, f64, f64)> = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let (stats, fs) = queue_run(&prepared, &outcomes, &pki);
        ratios.push((
            q(&stats[0], 0.5) / q(&stats[3], 0.5),
            q(&stats[0], 0.5) / q(&stats[4], 0.5),
            q(&stats[5], 0.5) / q(&stats[6], 0.5),
        ));
        last = Some((stats, fs));
    }
    let (stats, fs) = last.unwrap();
    let sizes: Vec<usize> = prepared.iter().map(|p| p.stored.len()).collect();
    let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
    println!("## 1. Durable queue append\n");
    println!(
        "{total} signed pay records (first-encounter taps run in memory, {:.1} s to make); \
         stored value {min}–{max} B (32-B checksum + signed record). \
         Temp dir {fs}. {runs} runs over fresh files, each N = {N_APPEND} per row after \
         {WARMUP_APPEND} warm-up, the rows interleaved. The table is the last run.\n",
        prep_time.as_secs_f64(),
    );
    println!("| operation | median µs | p99 µs | mean µs | max µs |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in OPS.iter().zip(&stats) {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
            q(v, 0.5),
            q(v, 0.99),
            mean(v),
            v[v.len() - 1]
        );
    }
    println!();
    let spread = |f: fn(&(f64, f64, f64)) -> f64| {
        let v = sorted(ratios.iter().map(f).collect());
        (q(&v, 0.5), v[0], v[v.len() - 1])
    };
    let (m, lo, hi) = spread(|r| r.0);
    let (md, lod, hid) = spread(|r| r.1);
    let (ms, los, his) = spread(|r| r.2);
    println!(
        "- append (pre-signed) / bare write + fsync, per-run medians: ×{m:.2} (median of {runs} runs; spread ×{lo:.2}–×{hi:.2})"
    );
    println!(
        "- append (pre-signed) / bare write + fdatasync: ×{md:.2} (spread ×{lod:.2}–×{hid:.2})"
    );
    println!(
        "- two files, flushes one after the other / issued together: ×{ms:.2} (spread ×{los:.2}–×{his:.2})"
    );
    let verdict = if hi <= 2.5 {
        "met (the whole spread is inside)".to_owned()
    } else if m <= 2.5 {
        "not shown: the median is inside but the spread reaches over".to_owned()
    } else {
        format!("NOT met — {:.0} % over", (m / 2.5 - 1.0) * 100.0)
    };
    println!("\nBudget (append with the high-water mark within 2.5× of write + fsync): ×{m:.2} — {verdict}.\n");
    println!(
        "What sled's `flush()` is: on Linux sled 0.34 writes its log with `pwrite` and waits with \
         `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` — no fsync. `Queue::append` then writes \
         the high-water mark's slot and hands it to the device the same way, and one fdatasync of \
         sled's data file flushes the device's cache with both in it (the mark is on the same ext4 \
         filesystem here; elsewhere the two fdatasyncs run together on two threads).\n"
    );
}

// ---------------------------------------------------------------------------
// 2. Whole-tap latency through each driver
// ---------------------------------------------------------------------------

/// One APDU through the link, as timed inside the tap.
struct Exchange {
    ins: u8,
    command: usize,
    response: usize,
    began: Duration,
    ended: Duration,
}

/// The reader's session, timed.
struct Timed<'a> {
    inner: &'a mut dyn Session,
    start: Instant,
    log: Vec<Exchange>,
}

impl Session for Timed<'_> {
    fn target(&self) -> &TargetInfo {
        self.inner.target()
    }

    fn is_present(&mut self) -> Result<bool, ReaderError> {
        self.inner.is_present()
    }

    fn wait_removed(&mut self, timeout: Duration, cancel: &Cancel) -> Result<(), ReaderError> {
        self.inner.wait_removed(timeout, cancel)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn transport(&self) -> Duration {
        self.inner.transport()
    }

    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ReaderError> {
        let began = self.start.elapsed();
        let r = self.inner.transmit(apdu);
        let ended = self.start.elapsed();
        self.log.push(Exchange {
            ins: apdu.get(1).copied().unwrap_or(0),
            command: apdu.len(),
            response: r.as_ref().map_or(0, Vec::len),
            began,
            ended,
        });
        r
    }
}

/// One approved tap.
struct TapTime {
    /// Session open → record flushed (the CONFIRM with the receipt about to go).
    approved: f64,
    /// Session open → receipt delivered, `Engine::tap` returned.
    whole: f64,
    /// Of `whole`: time inside the link's `transmit` (transport + phone).
    in_link: f64,
    exchanges: usize,
    air_approved: airtime::AirCost,
    air_whole: airtime::AirCost,
    /// (command, response) bytes of each APDU.
    lens: Vec<(usize, usize)>,
}

struct DriverRow {
    name: String,
    taps: Vec<TapTime>,
    failed: Vec<String>,
}

struct Shop {
    dir: tempfile::TempDir,
    wallet: PathBuf,
}

impl Shop {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tapstack_certs::init(&d.join("pki"), now(), &mut OsRng).unwrap();
        let pki = tapstack_certs::Pki::load(&d.join("pki")).unwrap();
        let leaf = LeafOptions {
            file_stem: Some("terminal".into()),
            ..Default::default()
        };
        pki.issue_terminal("Bench Tea House", d, &leaf, now(), &mut OsRng)
            .unwrap();
        let wallet = tapstack_emulator::profile::create(
            &d.join("pki"),
            "alice",
            &d.join("phones"),
            now(),
            &mut OsRng,
        )
        .unwrap();
        // Risk limits roomy enough for a few dozen taps of one phone.
        std::fs::write(
            d.join("terminal.toml"),
            format!(
                "[terminal]\ncertificate = \"terminal.pem\"\nkey = \"terminal.key\"\ncurrency = \"CNY\"\n\n\
                 [reader]\nconnection = \"emu:{}\"\n\n\
                 [trust]\nroot = \"pki/root.pem\"\nissuers = [\"pki/issuer.pem\"]\noperators = [\"pki/operator.pem\"]\nrevocations = \"pki/revocations.tlv\"\n\n\
                 [queue]\npath = \"queue\"\n\n\
                 [risk]\nfloor_limit = 100000\ncvm_limit = 30000\nwallet_max_amount = 5000000\nwallet_max_count = 1000\n\
                 queue_max_amount = 10000000\nqueue_max_count = 5000\nqueue_max_age_secs = 86400\n",
                wallet.display()
            ),
        )
        .unwrap();
        Shop { dir, wallet }
    }

    /// The terminal with its own queue for this driver, and the reader.
    fn terminal(
        &self,
        tag: &str,
        connection: &str,
    ) -> Result<(tapstack_terminal::tap::Engine, Field), String> {
        let mut cfg = Config::load(&self.dir.path().join("terminal.toml"), std::iter::empty())
            .map_err(|e| e.to_string())?;
        cfg.reader.connection = connection.to_owned();
        cfg.queue.path = PathBuf::from(format!("queue-{tag}"));
        let engine = app::engine(&cfg).map_err(|e| e.to_string())?;
        let field = app::field(&cfg).map_err(|e| e.to_string())?;
        Ok((engine, field))
    }
}

fn tap_emu() -> Result<PathBuf, String> {
    let p = tapstack_tests::workspace_binary("tap-emu");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} is missing: run cargo build --release --bins first",
            p.display()
        ))
    }
}

fn run_taps(
    name: &str,
    engine: &mut tapstack_terminal::tap::Engine,
    field: &mut Field,
) -> DriverRow {
    let intent = Intent::Pay { amount: cny(1250) };
    let mut row = DriverRow {
        name: name.to_owned(),
        taps: Vec::new(),
        failed: Vec::new(),
    };
    let mut warm = 0;
    while row.taps.len() < N_TAPS && row.failed.len() < MAX_FAILED_TAPS {
        let mut timing = None;
        let result = field.with_phone(
            Duration::from_secs(30),
            &Cancel::new(),
            &Cancel::new(),
            &mut |link| {
                let mut timed = Timed {
                    inner: link,
                    start: Instant::now(),
                    log: Vec::new(),
                };
                let r = engine.tap(&intent, &mut timed, now(), &mut OsRng);
                let whole = timed.start.elapsed();
                timing = Some((whole, timed.log));
                r
            },
        );
        match (result, timing) {
            (Ok(Some(TapResult::Approved(a))), Some((whole, log))) if a.receipt_delivered => {
                if warm < WARMUP_TAPS {
                    warm += 1;
                    continue;
                }
                let confirm = log
                    .iter()
                    .position(|e| e.ins == INS_CONFIRM)
                    .unwrap_or(log.len());
                let approved = log.get(confirm).map_or(whole, |e| e.began);
                let lens: Vec<(usize, usize)> =
                    log.iter().map(|e| (e.command, e.response)).collect();
                row.taps.push(TapTime {
                    approved: approved.as_secs_f64() * 1e3,
                    whole: whole.as_secs_f64() * 1e3,
                    in_link: log
                        .iter()
                        .map(|e| (e.ended - e.began).as_secs_f64())
                        .sum::<f64>()
                        * 1e3,
                    exchanges: log.len(),
                    air_approved: airtime::exchanges(&lens[..confirm]),
                    air_whole: airtime::exchanges(&lens),
                    lens,
                });
            }
            (Ok(Some(TapResult::Approved(_))), _) => {
                row.failed.push("approved, receipt not delivered".into())
            }
            (Ok(Some(other)), _) => row.failed.push(format!("{other:?}")),
            (Ok(None), _) => row.failed.push("no phone within 30 s".into()),
            (Err(e), _) => {
                row.failed.push(e.to_string());
                break;
            }
        }
    }
    row
}

fn emu_row(shop: &Shop) -> Result<DriverRow, String> {
    let (mut engine, mut field) =
        shop.terminal("emu", &format!("emu:{}", shop.wallet.display()))?;
    Ok(run_taps(
        "`emu:` (in-process phone, no reader)",
        &mut engine,
        &mut field,
    ))
}

fn pty_row(
    shop: &Shop,
    tag: &str,
    name: &str,
    connection: fn(&Path) -> String,
) -> Result<DriverRow, String> {
    let link = shop.dir.path().join(format!("pn532-{tag}"));
    let mut cmd = Command::new(tap_emu()?);
    cmd.arg("pn532")
        .arg("--link")
        .arg(&link)
        .arg("--wallet")
        .arg(&shop.wallet);
    cmd.args(["--idle-ms", "200", "--gap-ms", "100"]);
    let log = shop.dir.path().join(format!("emu-{tag}.log"));
    let mut emu = Child::spawn("tap-emu", &mut cmd, Some(&log)).map_err(|e| e.to_string())?;
    let started = Instant::now();
    while std::fs::read_link(&link).is_err() {
        if let Some(st) = emu.try_wait() {
            return Err(format!(
                "tap-emu exited ({st}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err("tap-emu made no PTY link in 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut engine, mut field) = shop.terminal(tag, &connection(&link))?;
    let row = run_taps(name, &mut engine, &mut field);
    drop(field);
    drop(emu);
    Ok(row)
}

fn pcsc_row(shop: &Shop) -> Result<DriverRow, String> {
    let pcscd = Pcscd::start().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(tap_emu()?);
    cmd.arg("vpcd")
        .arg("--port")
        .arg(pcscd.port.to_string())
        .arg("--wallet")
        .arg(&shop.wallet);
    // pcscd polls card presence about every 400 ms: a shorter gap goes unseen.
    cmd.args(["--idle-ms", "200", "--gap-ms", "1000"]);
    let log = pcscd.dir.path().join("emu.log");
    let emu = Child::spawn("tap-emu", &mut cmd, Some(&log)).map_err(|e| e.to_string())?;
    let (mut engine, mut field) = shop.terminal("pcsc", &format!("pcsc:{VPCD_READER}"))?;
    let row = run_taps(
        "`pcsc:Virtual PCD 00 00` (pcscd + vpcd)",
        &mut engine,
        &mut field,
    );
    drop(field);
    drop(emu);
    drop(pcscd);
    Ok(row)
}

fn taps_bench() {
    let shop = Shop::new();
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for tag in ["emu", "pn532", "libnfc", "pcsc"] {
        let started = Instant::now();
        let run = match tag {
            "emu" => emu_row(&shop),
            "pn532" => pty_row(
                &shop,
                tag,
                "`pn532:<pty>` (native PN532 driver, `tap-emu pn532`)",
                |l| format!("pn532:{}", l.display()),
            ),
            "libnfc" => pty_row(
                &shop,
                tag,
                "`libnfc:pn532_uart:<pty>` (libnfc, `tap-emu pn532`)",
                |l| format!("libnfc:pn532_uart:{}", l.display()),
            ),
            _ => pcsc_row(&shop),
        };
        match run {
            Ok(r) => {
                eprintln!(
                    "{tag}: {} taps measured, {} failed, {:.1} s",
                    r.taps.len(),
                    r.failed.len(),
                    started.elapsed().as_secs_f64()
                );
                rows.push(r);
            }
            Err(e) => skipped.push(format!("{tag}: {e}")),
        }
    }

    println!("## 2. Whole-tap latency through each driver\n");
    println!(
        "Pay 12.50 CNY, one wallet, the terminal certificate sent in full; {N_TAPS} taps per driver after \
         {WARMUP_TAPS} warm-up; timed from the session open (phone in the field) to the record flushed \
         (\"approved\") and to the end of the tap (receipt delivered). \"in link\": of the whole tap, time \
         inside the reader's transmit (transport + the emulated phone's work). Air: the same APDUs through \
         the ISO-DEP model, not included in the measured times (the emulator's links have no radio).\n"
    );
    println!(
        "| driver | taps | APDUs | to approved median ms | p90 ms | whole tap median ms | p90 ms | in link median ms | air model @106 kbit/s, to approved / whole ms | @424 ms (whole) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        if r.taps.is_empty() {
            println!("| {} | 0 | | | | | | | | |", r.name);
            continue;
        }
        let a = sorted(r.taps.iter().map(|t| t.approved).collect());
        let w = sorted(r.taps.iter().map(|t| t.whole).collect());
        let l = sorted(r.taps.iter().map(|t| t.in_link).collect());
        let last = &r.taps[r.taps.len() - 1];
        let mut ex: Vec<usize> = r.taps.iter().map(|t| t.exchanges).collect();
        ex.sort_unstable();
        ex.dedup();
        let ex: Vec<String> = ex.iter().map(ToString::to_string).collect();
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} / {:.1} | {:.1} |",
            r.name,
            r.taps.len(),
            ex.join("/"),
            q(&a, 0.5),
            q(&a, 0.9),
            q(&w, 0.5),
            q(&w, 0.9),
            q(&l, 0.5),
            airtime::millis(last.air_approved, 106),
            airtime::millis(last.air_whole, 106),
            airtime::millis(last.air_whole, 424),
        );
    }
    println!();
    for r in &rows {
        if let Some(t) = r.taps.last() {
            let apdus: Vec<String> = t.lens.iter().map(|(c, r)| format!("{c} → {r}")).collect();
            let total: usize = t.lens.iter().map(|(c, r)| c + r).sum();
            println!(
                "- {}: APDU bytes of one tap (command → response): {} ({total} B; {} B on air with ISO-DEP framing)",
                r.name,
                apdus.join(", "),
                t.air_whole.bytes
            );
        }
    }
    for r in &rows {
        if !r.failed.is_empty() {
            println!(
                "- {}: {} taps not approved: {}",
                r.name,
                r.failed.len(),
                r.failed.join("; ")
            );
        }
    }
    for s in &skipped {
        println!("- skipped {s}");
    }
    println!();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let only = std::env::var("TAPSTACK_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "queue" {
        queue_bench();
    }
    if only.is_empty() || only == "taps" {
        taps_bench();
    }
}
