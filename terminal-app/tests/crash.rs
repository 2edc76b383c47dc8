#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Crash test (`harness = false`): the real terminal (engine, sled queue,
//! in-process emulated phones, uploads over mTLS to an in-process tap-host)
//! runs in a child process that is killed with SIGKILL at random moments,
//! `TAPSTACK_CRASH_CYCLES` times (default 1000). After every kill:
//! every approved tap is in the queue or at the host, no record is
//! half-written, none is duplicated or replaced at the host, sequence numbers
//! never repeat and the hash chain verifies. Every 100th cycle one damage
//! (truncation, a byte flip, the high-water mark deleted) is injected and
//! must be reported by the queue before the files are put back.
//!
//! Speaks enough of libtest's command line for `cargo test` and nextest.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tapstack_reader::Cancel;

use rand_core::{OsRng, RngCore};
use tapstack_certs::LeafOptions;
use tapstack_host::server::{Host, HostOptions};
use tapstack_host::store::{SledStore, Store};
use tapstack_protocol::record::check_chain;
use tapstack_protocol::scenario::{Amount, Currency};
use tapstack_terminal::app;
use tapstack_terminal::config::Config;
use tapstack_terminal::queue::{Queue, QueueStore};
use tapstack_terminal::tap::{Intent, TapResult};
use tapstack_terminal::upload;

const NAME: &str = "kill_9_during_taps_and_uploads";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Ok(dir) = std::env::var("TAPSTACK_CRASH_CHILD") {
        child(Path::new(&dir));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            println!("{NAME}: test");
        }
        return;
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-'));
    if filter.is_some_and(|f| !NAME.contains(f.as_str())) {
        println!("\nrunning 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out\n");
        return;
    }
    println!("\nrunning 1 test");
    parent();
    println!("test {NAME} ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n");
}

/// The terminal at work: taps, and an upload every few taps.
fn child(dir: &Path) {
    let config = Config::load(&dir.join("terminal.toml"), std::iter::empty()).expect("config");
    let mut engine = app::engine(&config).expect("engine");
    let mut field = app::field(&config).expect("field");
    let client = upload::client(&config, &engine.ctx).expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cny = Currency::new("CNY").expect("CNY");
    let mut out = std::io::stdout();
    for i in 0u64.. {
        let amount = Amount {
            minor: 100 + OsRng.next_u64() % 2000,
            currency: cny,
        };
        let r = field.with_phone(
            Duration::from_secs(1),
            &Cancel::new(),
            &Cancel::new(),
            &mut |link| engine.tap(&Intent::Pay { amount }, link, now(), &mut OsRng),
        );
        if let Ok(Some(TapResult::Approved(a))) = r {
            let _ = writeln!(out, "APPROVED {} {}", a.seq, hex::encode(a.record_id));
            let _ = out.flush();
        }
        if i % 3 == 2 {
            let revocations = None;
            if let Ok(rep) = rt.block_on(upload::sync(
                &engine.queue,
                &client,
                50,
                &mut engine.ctx,
                revocations,
            )) {
                let _ = writeln!(out, "SYNCED {}", rep.acked_seq);
                let _ = out.flush();
            }
        }
    }
}

struct World {
    dir: tempfile::TempDir,
    terminal: [u8; 32],
    store: Arc<dyn Store>,
    _rt: tokio::runtime::Runtime,
}

fn setup() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let pki_dir = d.join("pki");
    tapstack_certs::init(&pki_dir, now(), &mut OsRng).expect("pki");
    let pki = tapstack_certs::Pki::load(&pki_dir).expect("load pki");
    let t = pki
        .issue_terminal(
            "Crash Test Tea",
            d,
            &LeafOptions::default(),
            now(),
            &mut OsRng,
        )
        .expect("terminal");
    // Its TLS client certificate, next to it (`[host]`'s default).
    let stem = t
        .cert_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .expect("stem");
    pki.issue_terminal_tls(
        &t.identity.cert,
        d,
        &LeafOptions {
            file_stem: Some(format!("{stem}-tls")),
            ..Default::default()
        },
        now(),
        &mut OsRng,
    )
    .expect("terminal TLS");
    let mut phones = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let p = tapstack_emulator::profile::create(
            &pki_dir,
            name,
            &d.join("phones"),
            now(),
            &mut OsRng,
        )
        .expect("wallet");
        let text = std::fs::read_to_string(&p)
            .expect("profile")
            .replace("policy = \"confirm-on-phone\"", "policy = \"auto-approve\"");
        std::fs::write(&p, text).expect("profile");
        phones.push(p.strip_prefix(d).expect("relative").display().to_string());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let store: Arc<dyn Store> =
        Arc::new(SledStore::open(&d.join("host-store")).expect("host store"));
    // The host's TLS identity from a TLS CA of its own; the terminal trusts tls/tls-ca.pem.
    let tls_ca =
        tapstack_certs::TlsCa::init(&d.join("tls"), 30, now(), &mut OsRng).expect("TLS CA");
    let server = tls_ca
        .issue_server(&["localhost".parse().expect("name")], 30, now(), &mut OsRng)
        .expect("TLS server certificate");
    let host = Host::from_pki(
        &pki.public(),
        store.clone(),
        tapstack_host::tls::TlsIdentity::from_tls_server(&server).expect("TLS identity"),
        HostOptions::default(),
    )
    .expect("host");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(host.serve(listener, std::future::pending::<()>()));
    let config = format!(
        r#"[terminal]
certificate = "{cert}"
key = "{key}"
currency = "CNY"

[reader]
connection = "emu:{phones}"

[trust]
root = "pki/root.pem"
issuers = ["pki/issuer.pem"]
operators = ["pki/operator.pem"]

[queue]
path = "queue"

[host]
url = "https://{addr}"
ca = "tls/tls-ca.pem"

[risk]
floor_limit = 1000000
cvm_limit = 1000000
wallet_max_amount = 100000000
wallet_max_count = 1000000
queue_max_amount = 1000000000
queue_max_count = 1000000
queue_max_age_secs = 100000
"#,
        cert = t.cert_path.strip_prefix(d).expect("rel").display(),
        key = t.key_path.strip_prefix(d).expect("rel").display(),
        phones = phones.join(","),
    );
    std::fs::write(d.join("terminal.toml"), config).expect("config");
    World {
        terminal: tapstack_host::ingest::chain_key(&t.identity.cert),
        dir,
        store,
        _rt: rt,
    }
}

fn parent() {
    let cycles: usize = std::env::var("TAPSTACK_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let w = setup();
    let exe: PathBuf = std::env::current_exe().expect("exe");
    // Every seq ever approved, with the record id it was approved with.
    let mut approved: BTreeMap<u64, [u8; 32]> = BTreeMap::new();
    let (mut syncs, mut killed_mid_run) = (0usize, 0usize);
    let mut damages = 0usize;
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .env("TAPSTACK_CRASH_CHILD", w.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(20 + OsRng.next_u64() % 230));
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let status = child.wait().expect("wait");
        assert!(
            status.code().is_none(),
            "cycle {cycle}: the child ended on its own ({status}) — it must only die by the kill"
        );
        let lines = reader.join().expect("reader");
        for line in &lines {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("APPROVED"), Some(seq), Some(id)) => {
                    let seq: u64 = seq.parse().expect("seq");
                    let id: [u8; 32] = hex::decode(id).expect("hex").try_into().expect("32 bytes");
                    if let Some(old) = approved.insert(seq, id) {
                        panic!(
                            "cycle {cycle}: seq {seq} approved twice ({} then {})",
                            hex::encode(old),
                            hex::encode(id)
                        );
                    }
                    killed_mid_run += 1;
                }
                (Some("SYNCED"), _, _) => syncs += 1,
                _ => {}
            }
        }
        check(&w, &approved, cycle);
        if cycle % 100 == 99 && inject_damage(&w, cycle) {
            damages += 1;
        }
    }
    let host_head = w
        .store
        .head(&w.terminal)
        .expect("head")
        .map_or(0, |h| h.seq);
    println!(
        "{cycles} kill -9 cycles: {} approved taps, {syncs} uploads, host holds #1..#{host_head}, {damages} injected damages all reported, all checks passed",
        approved.len()
    );
    assert!(
        approved.len() > cycles / 10,
        "too few taps completed for the test to mean anything"
    );
    assert!(
        cycles < 100 || damages > 0,
        "no damage was injected: nothing was ever pending at a check"
    );
    let _ = killed_mid_run;
}

/// Between two cycles, damage the queue one of three ways (truncate the log
/// where the newest pending record begins, flip a byte in every copy of a
/// pending record, delete the high-water mark), check that the queue
/// reports it and refuses to approve, then put the files back. `false`
/// when nothing was pending to damage.
fn inject_damage(w: &World, cycle: usize) -> bool {
    let dir = w.dir.path().join("queue");
    let mark = tapstack_terminal::mark::mark_path(&dir);
    let pending = Queue::open(&dir)
        .expect("open")
        .pending(usize::MAX)
        .expect("pending");
    let Some(victim) = pending.last() else {
        return false;
    };
    let db_path = dir.join("db");
    let (db, mark_bytes) = (
        std::fs::read(&db_path).expect("db"),
        std::fs::read(&mark).expect("mark"),
    );
    let at: Vec<usize> = db
        .windows(32)
        .enumerate()
        .filter(|(_, w)| *w == victim.hash)
        .map(|(i, _)| i)
        .collect();
    assert!(
        !at.is_empty(),
        "cycle {cycle}: #{} not in the log",
        victim.seq
    );
    let kind = (cycle / 100) % 3;
    match kind {
        0 => std::fs::write(&db_path, &db[..at[0]]).expect("truncate"),
        1 => {
            let mut d = db.clone();
            for i in &at {
                d[i + 32 + victim.bytes.len() / 2] ^= 0x81;
            }
            std::fs::write(&db_path, d).expect("flip");
        }
        _ => std::fs::remove_file(&mark).expect("rm mark"),
    }
    let q = Queue::open(&dir).expect("a damaged queue still opens to report");
    let integrity = q.integrity();
    assert!(
        !integrity.damaged.is_empty(),
        "cycle {cycle}: damage {kind} to #{} went unreported: {integrity:?}",
        victim.seq
    );
    assert!(
        q.ready().is_err(),
        "cycle {cycle}: a damaged queue is ready to approve"
    );
    drop(q);
    std::fs::write(&db_path, db).expect("restore db");
    std::fs::write(&mark, mark_bytes).expect("restore mark");
    let q = Queue::open(&dir).expect("reopen");
    assert!(
        q.integrity().is_ok(),
        "cycle {cycle}: restored queue: {:?}",
        q.integrity()
    );
    true
}

fn check(w: &World, approved: &BTreeMap<u64, [u8; 32]>, cycle: usize) {
    let queue = Queue::open(&w.dir.path().join("queue"))
        .unwrap_or_else(|e| panic!("cycle {cycle}: queue does not open: {e}"));
    let (head, _) = queue.head().expect("head");
    let acked = queue.acked().expect("acked");
    let stored = queue
        .all()
        .unwrap_or_else(|e| panic!("cycle {cycle}: a half-written record: {e}"));
    let host_head = w.store.head(&w.terminal).expect("host head");
    let host_seq = host_head.as_ref().map_or(0, |h| h.seq);
    assert!(
        host_seq <= head,
        "cycle {cycle}: host holds #{host_seq} beyond the terminal's head #{head}"
    );
    assert!(
        acked <= host_seq,
        "cycle {cycle}: terminal pruned up to #{acked} but the host holds only #{host_seq}"
    );
    // The chain of what the terminal still holds continues the host's.
    let mut prev: Option<(u64, [u8; 32])> = None;
    for s in stored.iter().filter(|s| s.seq > acked) {
        let r = s.record().expect("decode");
        match prev {
            Some(p) => check_chain(Some(p), &r)
                .unwrap_or_else(|e| panic!("cycle {cycle}: #{}: {e}", s.seq)),
            None if s.seq > 1 => {
                let h = w
                    .store
                    .record_hash(&w.terminal, s.seq - 1)
                    .expect("host")
                    .unwrap_or_else(|| {
                        panic!(
                            "cycle {cycle}: #{} follows a record neither side holds",
                            s.seq
                        )
                    });
                assert_eq!(
                    r.prev_hash,
                    h,
                    "cycle {cycle}: #{} does not chain to the host's #{}",
                    s.seq,
                    s.seq - 1
                );
            }
            None => check_chain(None, &r).unwrap_or_else(|e| panic!("cycle {cycle}: #1: {e}")),
        }
        prev = Some((s.seq, s.hash));
    }
    for (seq, id) in approved {
        let local = stored.iter().find(|s| s.seq == *seq && *seq > acked);
        let remote = w.store.record_hash(&w.terminal, *seq).expect("host");
        match (local, remote) {
            (Some(s), _) => assert_eq!(
                &s.hash, id,
                "cycle {cycle}: #{seq} in the queue is not the approved record"
            ),
            (None, Some(h)) => assert_eq!(
                &h, id,
                "cycle {cycle}: the host's #{seq} is not the approved record"
            ),
            (None, None) => {
                panic!("cycle {cycle}: approved #{seq} is neither in the queue nor at the host")
            }
        }
        if let Some(h) = remote {
            assert_eq!(&h, id, "cycle {cycle}: host holds another record as #{seq}");
        }
    }
}
