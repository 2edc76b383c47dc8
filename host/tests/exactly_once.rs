//! Every approved tap is counted exactly once (issue 9), tried as an
//! attacker and as a disk would: through the `tap-host` binaries and the
//! real HTTPS server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::*;
use hyper::Method;
use rand_core::OsRng;
use tapstack_host::ingest::{Ingestor, VerifyMode};
use tapstack_host::ledger::Ledger;
use tapstack_host::revocations::Revocations;
use tapstack_host::server::{unix_now, Limits};
use tapstack_host::store::{
    AtcPolicy, ChainHead, RecordRef, SledStore, Store, StoredRecord, DEFAULT_ATC_WINDOW,
};
use tapstack_host::wire::{BatchRequest, BatchResponse, Reason, RecordStatus, MAX_BATCH_RECORDS};
use tapstack_host::Error;
use tapstack_protocol::crypto;
use tapstack_protocol::record::{TransactionRecord, MAX_RECORD_LEN};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::testkit::s_twin;
use tapstack_protocol::Codec;

fn statuses(r: &BatchResponse) -> Vec<(RecordStatus, Option<Reason>)> {
    r.results.iter().map(|x| (x.status, x.reason)).collect()
}

use common::HostProcess as Server;

/// `genuine` (the terminal's latest record) re-signed by the terminal's
/// owner as its next record — the same tap under a second seq; `t` goes on
/// after it.
fn re_signed(t: &mut TerminalSim, genuine: &TransactionRecord) -> TransactionRecord {
    let mut again = genuine.clone();
    again.seq = genuine.seq + 1;
    again.prev_hash = genuine.hash();
    again.signature = crypto::sign(&t.id.key, &again.signed_bytes());
    t.seq = again.seq;
    t.prev = again.hash();
    again
}

fn ledger_binary(store: impl AsRef<std::ffi::OsStr>) -> (Ledger, String) {
    let run = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tap-host"));
        cmd.args(["ledger", "--store"]).arg(store.as_ref());
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        out.stdout
    };
    let ledger: Ledger = serde_json::from_slice(&run(true)).unwrap();
    (ledger, String::from_utf8(run(false)).unwrap())
}

/// The reproduction of issue 9: a terminal with a valid certificate
/// re-signs one genuine 50.00 tap as seq 1 and seq 2. Before: both
/// accepted, the ledger showed 100.00. Now the second is declined
/// `duplicate_tap`, the chain goes on, and the ledger counts the tap once.
/// A clone that jumps its ATC beyond the window is declined too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_re_signed_under_a_second_seq_settles_once_through_the_binaries() {
    let fx = Fixture::new();
    let store = fx.dir.path().join("store");
    let server = Server::start(&fx, &store);
    let id = fx.kit.terminal.clone();
    let mut t = fx.sim(id.clone());
    let wallet = fx.kit.new_wallet(&mut OsRng);
    let mut phone = fx.kit.wallet_context_for(&wallet);
    let genuine = t.tap(&fx.kit, &mut phone, pay(5000));
    // The terminal's owner re-signs the same tap as its next record.
    let again = re_signed(&mut t, &genuine);
    // An honest tap after it: the declined record does not stop the chain.
    let honest = t.tap(&fx.kit, &mut phone, pay(1200));
    // A clone of the wallet skips its counter past the window.
    let mut clone = fx.kit.wallet_context_for(&wallet);
    clone.atc = phone.atc + DEFAULT_ATC_WINDOW;
    let jumped = t.tap(&fx.kit, &mut clone, pay(9900));

    let client = fx.client(server.addr, Some(&id));
    let resp = client
        .upload(&bytes(&[genuine, again.clone(), honest, jumped]))
        .await
        .unwrap();
    assert_eq!(
        statuses(&resp),
        vec![
            (RecordStatus::Accepted, None),
            (RecordStatus::Declined, Some(Reason::DuplicateTap)),
            (RecordStatus::Accepted, None),
            (RecordStatus::Declined, Some(Reason::AtcJump)),
        ],
        "{resp:?}"
    );
    assert!(resp.results.iter().all(|r| r.flags.is_empty()));
    assert_eq!((resp.acked_seq, resp.accepted, resp.declined), (4, 2, 2));
    // At least once: the same record sent again is held already, with its
    // verdict, and stored once.
    let retry = client.upload(&bytes(&[again])).await.unwrap();
    assert_eq!(
        statuses(&retry),
        vec![(RecordStatus::Duplicate, Some(Reason::DuplicateTap))]
    );
    assert_eq!(retry.acked_seq, 4);
    server.stop();

    let (ledger, text) = ledger_binary(&store);
    assert_eq!((ledger.settled, ledger.held, ledger.declined), (2, 0, 2));
    assert_eq!(ledger.totals.len(), 1);
    assert_eq!(
        (ledger.totals[0].count, ledger.totals[0].amount_minor),
        (2, 5000 + 1200)
    );
    assert_eq!(ledger.declined_totals[0].amount_minor, 5000 + 9900);
    assert_eq!(ledger.declined_reasons.get("duplicate_tap"), Some(&1));
    assert_eq!(ledger.declined_reasons.get("atc_jump"), Some(&1));
    assert!(text.contains("totals (settled only):"), "{text}");
    assert!(text.contains("62.00 CNY"), "{text}");
    assert!(text.contains("2 settled, 0 held, 2 declined"), "{text}");
}

/// The same rules with two `tap-host serve` instances on one PostgreSQL
/// database (a real server the test starts): a terminal's chain continued
/// across instances, a tap re-signed under a second seq and uploaded to the
/// *other* instance declined `duplicate_tap` (the database decides, not a
/// process), a retry to either instance answered `duplicate`, and the
/// ledger read from the database while both instances keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_settle_each_tap_once() {
    let fx = Fixture::new();
    let pg = tapstack_tests::Postgres::start().unwrap();
    let url = pg.create_database("host").unwrap();
    let (a, b) = (
        Server::start_with_metrics(&fx, &url),
        Server::start(&fx, &url),
    );
    let id = fx.kit.terminal.clone();
    let mut t = fx.sim(id.clone());
    let wallet = fx.kit.new_wallet(&mut OsRng);
    let mut phone = fx.kit.wallet_context_for(&wallet);
    let genuine = t.tap(&fx.kit, &mut phone, pay(5000));
    let again = re_signed(&mut t, &genuine);
    let honest = t.tap(&fx.kit, &mut phone, pay(1200));

    let to_a = fx.client(a.addr, Some(&id));
    let to_b = fx.client(b.addr, Some(&id));
    let r = to_a
        .upload(&bytes(std::slice::from_ref(&genuine)))
        .await
        .unwrap();
    assert_eq!(statuses(&r), vec![(RecordStatus::Accepted, None)]);
    let r = to_b
        .upload(&bytes(&[genuine.clone(), again.clone(), honest.clone()]))
        .await
        .unwrap();
    assert_eq!(
        statuses(&r),
        vec![
            (RecordStatus::Duplicate, None),
            (RecordStatus::Declined, Some(Reason::DuplicateTap)),
            (RecordStatus::Accepted, None),
        ],
        "{r:?}"
    );
    assert_eq!(r.acked_seq, 3);
    let r = to_a.upload(&bytes(&[again, honest])).await.unwrap();
    assert_eq!(
        statuses(&r),
        vec![
            (RecordStatus::Duplicate, Some(Reason::DuplicateTap)),
            (RecordStatus::Duplicate, None),
        ]
    );
    // What instance a did, as Prometheus scrapes it: one batch accepted a
    // record, the other found two duplicates; its pool is open.
    let m = common::scrape(a.metrics.unwrap());
    for line in [
        "tapstack_host_batches_total{outcome=\"ok\"} 2",
        "tapstack_host_records_total{status=\"accepted\"} 1",
        "tapstack_host_records_total{status=\"duplicate\"} 2",
        "tapstack_host_records_total{status=\"declined\"} 0",
        "tapstack_host_batch_seconds_count 2",
        "tapstack_host_store_seconds_count 1",
    ] {
        assert!(m.lines().any(|l| l == line), "{line} not in:\n{m}");
    }
    assert!(
        m.contains("tapstack_host_store_pool_connections{state=\"size\"}"),
        "{m}"
    );
    // Read while both serve.
    let (ledger, text) = ledger_binary(&url);
    assert_eq!((ledger.settled, ledger.declined), (2, 1));
    assert_eq!(ledger.totals[0].amount_minor, 5000 + 1200);
    assert!(text.contains("62.00 CNY"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_tap-host"))
        .args(["migrate", "--store", &url])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains("schema version 1 (0 migration(s) applied now)"),
        "{said}"
    );
    a.stop();
    b.stop();
    // A database that holds no store is refused, not reported as empty.
    let empty = pg.create_database("empty").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tap-host"))
        .args(["ledger", "--store", &empty])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no tapstack store"),
        "{out:?}"
    );
}

/// The host says what it did: on stderr that is not a terminal, one JSON
/// object a line — one per batch with the terminal, the counts and the
/// latency, one per declined record with its reason, and one per refused
/// TLS client with why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_logs_each_batch_and_each_refusal_as_json_lines() {
    let fx = Fixture::new();
    let log = fx.dir.path().join("host.log");
    let server = Server::start_on(
        &fx,
        fx.dir.path().join("store"),
        "127.0.0.1:0",
        std::fs::File::create(&log).unwrap(),
    );
    let id = fx.kit.terminal.clone();
    let mut t = fx.sim(id.clone());
    let wallet = fx.kit.new_wallet(&mut OsRng);
    let mut phone = fx.kit.wallet_context_for(&wallet);
    let genuine = t.tap(&fx.kit, &mut phone, pay(700));
    let again = re_signed(&mut t, &genuine);
    let client = fx.client(server.addr, Some(&id));
    client.upload(&bytes(&[genuine, again])).await.unwrap();
    // Not TLS at all.
    {
        use std::io::Write;
        let mut plain = std::net::TcpStream::connect(server.addr).unwrap();
        plain.write_all(b"GET /v1/health HTTP/1.1\r\n\r\n").unwrap();
        let _ = plain.read(&mut [0u8; 64]);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        if lines
            .iter()
            .any(|l| l["message"] == "TLS handshake refused")
            || std::time::Instant::now() > deadline
        {
            break lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    server.stop();
    let batch = lines
        .iter()
        .find(|l| l["message"] == "batch")
        .unwrap_or_else(|| panic!("no batch line: {lines:?}"));
    assert_eq!(batch["level"], "INFO");
    assert_eq!(
        (
            batch["records"].as_u64(),
            batch["accepted"].as_u64(),
            batch["declined"].as_u64(),
            batch["acked_seq"].as_u64()
        ),
        (Some(2), Some(1), Some(1), Some(2)),
        "{batch}"
    );
    assert!(
        batch["terminal"].as_str().is_some_and(|t| !t.is_empty()),
        "{batch}"
    );
    assert!(batch["ms"].as_f64().is_some_and(|ms| ms > 0.0), "{batch}");
    let declined = lines
        .iter()
        .find(|l| l["message"] == "record declined")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(
        (declined["seq"].as_u64(), declined["reason"].as_str()),
        (Some(2), Some("duplicate_tap"))
    );
    let tls = lines
        .iter()
        .find(|l| l["message"] == "TLS handshake refused")
        .unwrap_or_else(|| panic!("no TLS refusal: {lines:?}"));
    assert!(
        tls["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{tls}"
    );
}

/// The high-S twin of a genuine record (anyone can make it: s → n − s) is
/// refused over HTTPS and stores nothing; the twin of the wallet's signature
/// inside a record the terminal re-signed is declined; the genuine record is
/// then accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_s_twin_of_a_valid_record_is_refused_over_https() {
    let fx = Fixture::new();
    let host = Running::start(&fx, Limits::default()).await;
    let client = fx.client(host.addr, Some(&fx.kit.terminal));
    let mut t = fx.sim(fx.kit.terminal.clone());
    let genuine = t.pays(&fx, 1).remove(0);

    let mut twin = genuine.clone();
    twin.signature = s_twin(&genuine.signature).unwrap();
    assert_ne!(twin.hash(), genuine.hash());
    let resp = client.upload(&bytes(&[twin])).await.unwrap();
    assert_eq!(
        statuses(&resp),
        vec![(RecordStatus::Rejected, Some(Reason::TerminalSignature))]
    );
    assert!(resp.results[0]
        .message
        .as_deref()
        .unwrap()
        .contains("high-S"));
    assert_eq!(resp.acked_seq, 0);
    assert!(host.records().is_empty());

    let mut inner = genuine.clone();
    inner.transcript.wallet_sig = s_twin(&genuine.transcript.wallet_sig).unwrap();
    inner.signature = crypto::sign(&fx.kit.terminal.key, &inner.signed_bytes());
    let resp = client.upload(&bytes(&[inner])).await.unwrap();
    assert_eq!(
        statuses(&resp),
        vec![(RecordStatus::Declined, Some(Reason::WalletSignature))]
    );
    assert!(resp.results[0]
        .message
        .as_deref()
        .unwrap()
        .contains("low-S"));
    host.stop().await;

    let host = Running::start(&fx, Limits::default()).await;
    let client = fx.client(host.addr, Some(&fx.kit.terminal));
    let resp = client.upload(&bytes(&[genuine])).await.unwrap();
    assert_eq!(statuses(&resp), vec![(RecordStatus::Accepted, None)]);
    host.stop().await;
}

/// Record size, record count and body size limits at limit − 1, limit and
/// limit + 1 over HTTPS. A record over the limit refuses the whole batch
/// with 400 `record_too_large`, so the records before it are not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_limits_are_exact_at_the_boundary() {
    let fx = Fixture::new();
    let max_body = 64 * 1024;
    let host = Running::start(
        &fx,
        Limits {
            max_body,
            ..Limits::default()
        },
    )
    .await;
    let client = fx.client(host.addr, Some(&fx.kit.terminal));
    let mut t = fx.sim(fx.kit.terminal.clone());
    let good = t.pays(&fx, 1).remove(0).to_bytes();
    let post = |body: Vec<u8>| {
        let client = &client;
        async move {
            client
                .request(Method::POST, "/v1/batches", body)
                .await
                .unwrap()
        }
    };
    let code = |r: &tapstack_host::client::Reply| {
        serde_json::from_slice::<tapstack_host::wire::ErrorBody>(&r.body)
            .map(|e| e.error)
            .unwrap_or_default()
    };
    for n in [MAX_RECORD_LEN + 1, MAX_RECORD_LEN + 2] {
        let body = BatchRequest::from_encoded([&good[..], &vec![0xE6; n][..]]).to_json();
        let r = post(body).await;
        assert_eq!(
            (r.status, code(&r)),
            (400, "record_too_large".to_owned()),
            "{n}"
        );
    }
    assert!(
        host.records().is_empty(),
        "nothing of a refused batch is stored"
    );
    for n in [MAX_RECORD_LEN - 1, MAX_RECORD_LEN] {
        let body = BatchRequest::from_encoded([&vec![0xE6; n][..]]).to_json();
        let r = post(body).await;
        assert_eq!(r.status, 200, "{n}");
        let resp: BatchResponse = serde_json::from_slice(&r.body).unwrap();
        // Within the limit it is examined (these bytes are no record).
        assert_eq!(
            statuses(&resp),
            vec![(RecordStatus::Rejected, Some(Reason::MalformedRecord))]
        );
    }
    for n in [
        MAX_BATCH_RECORDS - 1,
        MAX_BATCH_RECORDS,
        MAX_BATCH_RECORDS + 1,
    ] {
        let body = BatchRequest {
            records: vec![String::new(); n],
            ..Default::default()
        }
        .to_json();
        let r = post(body).await;
        if n <= MAX_BATCH_RECORDS {
            assert_eq!(r.status, 200, "{n}");
            let resp: BatchResponse = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(resp.results.len(), n);
        } else {
            assert_eq!((r.status, code(&r)), (400, "too_many_records".to_owned()));
        }
    }
    // Body: valid JSON padded with whitespace to the exact size.
    for size in [max_body - 1, max_body, max_body + 1] {
        // With the terminal certificate the record names (the TLS client
        // certificate signs no record).
        let mut body = BatchRequest::from_encoded([&good[..]])
            .with_certificates([fx.kit.terminal.cert.der()])
            .to_json();
        body.resize(size, b' ');
        let r = post(body).await;
        if size <= max_body {
            assert_eq!(r.status, 200, "{size}");
            let resp: BatchResponse = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(
                resp.results[0].status,
                if size == max_body - 1 {
                    RecordStatus::Accepted
                } else {
                    RecordStatus::Duplicate
                }
            );
        } else {
            assert_eq!((r.status, code(&r)), (413, "body_too_large".to_owned()));
        }
    }
    assert_eq!(host.records().len(), 1);
    host.stop().await;
}

thread_local! {
    /// Device syncs started when this thread's last append returned.
    static APPENDED_AT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// A store that notes, per thread, how many device syncs had started when
/// its append returned.
#[derive(Debug)]
struct Watched(Arc<SledStore>);

impl Store for Watched {
    fn head(&self, t: &[u8; 32]) -> Result<Option<ChainHead>, Error> {
        self.0.head(t)
    }
    fn record_hash(&self, t: &[u8; 32], seq: u64) -> Result<Option<[u8; 32]>, Error> {
        self.0.record_hash(t, seq)
    }
    fn record(&self, t: &[u8; 32], seq: u64) -> Result<Option<StoredRecord>, Error> {
        self.0.record(t, seq)
    }
    fn append(
        &self,
        t: &[u8; 32],
        expected: Option<ChainHead>,
        records: &mut [StoredRecord],
        policy: &AtcPolicy,
    ) -> Result<(), Error> {
        self.0.append(t, expected, records, policy)?;
        APPENDED_AT.with(|c| c.set(Some(self.0.sync_counts().started)));
        Ok(())
    }
    fn sync(&self) -> Result<(), Error> {
        self.0.sync()
    }
    fn records(&self) -> Result<Vec<StoredRecord>, Error> {
        self.0.records()
    }
    fn wallet_uses(&self, w: &[u8; 32], atc: u32) -> Result<Vec<RecordRef>, Error> {
        self.0.wallet_uses(w, atc)
    }
    fn tap(&self, th1: &[u8; 32]) -> Result<Option<RecordRef>, Error> {
        self.0.tap(th1)
    }
    fn highest_atc(&self, w: &[u8; 32]) -> Result<Option<u32>, Error> {
        self.0.highest_atc(w)
    }
    fn credential_uses(&self, id: &[u8; 16]) -> Result<Vec<RecordRef>, Error> {
        self.0.credential_uses(id)
    }
}

/// Durable before acknowledged, in process: many terminals ingest at once;
/// every batch that stored something returns (is acknowledged) only after
/// a device sync (fdatasync) that started after its append has completed;
/// concurrent batches share syncs.
#[test]
fn every_acknowledgement_follows_a_device_sync_that_covers_it() {
    const TERMINALS: usize = 6;
    const BATCHES: usize = 8;
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let sled = Arc::new(SledStore::open(dir.path()).unwrap());
    let trust = fx.kit.host_trust();
    let revocations = Arc::new(Revocations::fixed(RevocationList::default(), trust.clone()));
    let host = Arc::new(
        Ingestor::new(
            Arc::new(Watched(sled.clone())),
            trust,
            fx.kit.issuer_master_key.clone(),
            revocations,
            VerifyMode::Ring,
        )
        .unwrap(),
    );
    let mut work = Vec::new();
    for k in 0..TERMINALS {
        let id = fx.terminal(&format!("Till {k}"));
        let mut sim = fx.sim(id.clone());
        let records: Vec<TransactionRecord> = sim.pays(&fx, BATCHES * 2);
        work.push((id, bytes(&records)));
    }
    let threads: Vec<_> = work
        .into_iter()
        .map(|(id, records)| {
            let host = host.clone();
            let sled = sled.clone();
            std::thread::spawn(move || {
                for chunk in records.chunks(2) {
                    let resp = host.ingest(&id.cert, chunk, unix_now()).unwrap();
                    let done = sled.sync_counts().completed;
                    let at = APPENDED_AT.with(Cell::take).expect("appended");
                    assert!(
                        done > at,
                        "acknowledged with {done} syncs completed, {at} started before its append"
                    );
                    assert_eq!(resp.accepted, 2);
                }
                // A pure re-upload appends nothing and needs no new sync.
                let resp = host.ingest(&id.cert, &records[..2], unix_now()).unwrap();
                assert_eq!(resp.duplicates, 2);
                assert_eq!(APPENDED_AT.with(Cell::take), None);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let counts = sled.sync_counts();
    assert_eq!(counts.started, counts.completed);
    assert!(counts.completed >= 1);
    assert!(counts.completed <= (TERMINALS * BATCHES) as u64);
    assert_eq!(sled.records().unwrap().len(), TERMINALS * BATCHES * 2);
}

/// Durable before acknowledged, black-box: `strace` on `tap-host serve`
/// sees an fdatasync of the store's log file `db` for every acknowledged
/// batch (sled alone issues none: its flush is sync_file_range).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_host_serve_fdatasyncs_its_store_before_acknowledging() {
    const BATCHES: usize = 5;
    let Ok(probe) = Command::new("strace").arg("-V").output() else {
        panic!("strace is needed: scripts/ensure-deps.sh test installs it");
    };
    assert!(probe.status.success());
    let fx = Fixture::new();
    let store = fx.dir.path().join("store");
    let server = Server::start(&fx, &store);
    let log = fx.dir.path().join("strace.log");
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-e",
            "trace=fdatasync,fsync",
            "-e",
            "signal=none",
            "-o",
        ])
        .arg(&log)
        .arg("-p")
        .arg(server.child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // strace says when it has attached (to every thread).
    let mut err = BufReader::new(strace.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("attached"), "strace: {line:?}");

    let mut t = fx.sim(fx.kit.terminal.clone());
    let records = bytes(&t.pays(&fx, BATCHES));
    let client = fx.client(server.addr, Some(&fx.kit.terminal));
    for (i, r) in records.iter().enumerate() {
        let resp = client.upload(std::slice::from_ref(r)).await.unwrap();
        assert_eq!(resp.acked_seq, i as u64 + 1);
    }
    // Detach (SIGTERM makes strace flush its log and leave the tracee).
    assert!(Command::new("kill")
        .args(["-TERM", &strace.id().to_string()])
        .status()
        .unwrap()
        .success());
    strace.wait().unwrap();
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    server.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let db = store.join("db");
    let db_syncs = text
        .lines()
        .filter(|l| l.contains("fdatasync(") && l.contains(&format!("{}>", db.display())))
        .filter(|l| l.ends_with("= 0"))
        .count();
    assert!(
        db_syncs >= BATCHES,
        "{db_syncs} fdatasync of {} for {BATCHES} acknowledged batches:\n{text}",
        db.display()
    );
}
