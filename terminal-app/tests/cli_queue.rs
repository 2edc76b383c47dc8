//! The CLI's queue under damage, through the `tap-terminal` binary: taps
//! with `pay`, the log truncated where a record begins, then `queue`,
//! `queue verify`, `pay` and `queue repair` as an operator would run them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Shop;
use tapstack_terminal::queue::{Queue, QueueStore, Stored};

fn config(shop: &Shop) -> PathBuf {
    let text = format!(
        "[terminal]\ncertificate = \"terminal.pem\"\nkey = \"terminal.key\"\ncurrency = \"CNY\"\ntap_timeout_secs = 5\n\n\
         [reader]\nconnection = \"emu:phones/alice.toml\"\n\n\
         [trust]\nroot = \"pki/root.pem\"\nissuers = [\"pki/issuer.pem\"]\noperators = [\"pki/operator.pem\"]\n\n\
         [queue]\npath = \"queue\"\n\n[host]\nurl = \"https://localhost:{}\"\nca = \"tls/tls-ca.pem\"\n",
        // By name: the upload client resolves it (the other tests use
        // the address).
        shop.host_addr.port()
    );
    let path = shop.dir.path().join("terminal.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(cfg: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tap-terminal"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn records(dir: &Path) -> Vec<Stored> {
    Queue::open(dir).unwrap().pending(usize::MAX).unwrap()
}

fn truncate_at(dir: &Path, record: &Stored) {
    let db = std::fs::read(dir.join("db")).unwrap();
    let at = db
        .windows(32)
        .position(|w| w == record.hash)
        .expect("record in the log");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("db"))
        .unwrap();
    f.set_len(at as u64).unwrap();
}

#[test]
fn a_truncated_queue_is_reported_refuses_taps_and_is_repaired_from_the_host() {
    let shop = Shop::new();
    let cfg = config(&shop);
    let qdir = shop.dir.path().join("queue");
    for seq in 1..=4 {
        let o = run(&cfg, &["pay", "1.00", "CNY"]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains(&format!("queued #{seq}")), "{}", text(&o));
    }
    let o = run(&cfg, &["queue", "verify"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("intact"), "{}", text(&o));
    let held = records(&qdir);
    assert_eq!(held.len(), 4);
    let backup = shop.dir.path().join("backup-db");
    std::fs::copy(qdir.join("db"), &backup).unwrap();

    // The log loses record #4 (a crash of the disk, not of the process).
    truncate_at(&qdir, &held[3]);
    let o = run(&cfg, &["queue"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("damaged"), "{}", text(&o));
    let o = run(&cfg, &["queue", "verify", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // sled either loses #4 or refuses the whole log: the range names #4.
    let from = report["damaged"][0]["from"].as_u64().unwrap();
    assert!(from <= 4, "{report}");
    assert_eq!(report["damaged"][0]["to"], 4, "{report}");
    // No tap is approved, and #4 is not handed out again.
    let o = run(&cfg, &["pay", "1.00", "CNY"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("damaged"), "{}", text(&o));
    assert!(!text(&o).contains("queued #"), "{}", text(&o));
    // The host never received #4: repair refuses to paper over the loss.
    let o = run(&cfg, &["queue", "repair"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("restore"), "{}", text(&o));

    // The operator restores the log from the backup: intact again; upload.
    std::fs::copy(&backup, qdir.join("db")).unwrap();
    let o = run(&cfg, &["queue", "verify"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&cfg, &["upload"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        shop.host_store.head(&shop.terminal).unwrap().map(|h| h.seq),
        Some(4)
    );
    // #5, made after the upload, then lost: the host does not hold it, so
    // repair refuses, and with the log gone upload says the queue is damaged.
    let o = run(&cfg, &["pay", "1.00", "CNY"]);
    assert!(text(&o).contains("queued #5"), "{}", text(&o));
    let held = records(&qdir);
    truncate_at(&qdir, held.last().unwrap());
    let o = run(&cfg, &["queue", "repair"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "#5 is not at the host: {}",
        text(&o)
    );
    std::fs::remove_file(qdir.join("db")).unwrap();
    let o = run(&cfg, &["queue", "verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let o = run(&cfg, &["upload"]);
    assert!(
        !o.status.success(),
        "a damaged queue cannot upload #5: {}",
        text(&o)
    );
}

#[test]
fn a_fresh_queue_under_a_known_certificate_continues_the_hosts_chain() {
    let shop = Shop::new();
    let cfg = config(&shop);
    for _ in 0..2 {
        let o = run(&cfg, &["pay", "1.00", "CNY"]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = run(&cfg, &["upload"]);
    assert!(o.status.success(), "{}", text(&o));
    // The same certificate with a new, empty queue (another path, say).
    let o = Command::new(env!("CARGO_BIN_EXE_tap-terminal"))
        .arg("--config")
        .arg(&cfg)
        .args(["pay", "1.00", "CNY"])
        .env("TAPSTACK_QUEUE_PATH", shop.dir.path().join("queue-2"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("queued #3"), "not #1 again: {}", text(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_tap-terminal"))
        .arg("--config")
        .arg(&cfg)
        .arg("upload")
        .env("TAPSTACK_QUEUE_PATH", shop.dir.path().join("queue-2"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        shop.host_store.head(&shop.terminal).unwrap().map(|h| h.seq),
        Some(3)
    );
}

#[test]
fn the_currency_cannot_change_under_queued_records() {
    let shop = Shop::new();
    let cfg = config(&shop);
    let o = run(&cfg, &["pay", "10.01", "CNY"]);
    assert!(o.status.success(), "{}", text(&o));
    let usd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tap-terminal"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("TAPSTACK_TERMINAL_CURRENCY", "USD")
            .output()
            .unwrap()
    };
    // The CNY record would be shown and limited as USD: refused.
    let o = usd(&["queue"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("in CNY waiting for upload"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("now says USD"), "{}", text(&o));
    let o = usd(&["pay", "1.00", "USD"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(!text(&o).contains("queued #"), "{}", text(&o));
    // Once uploaded, the terminal may change currency.
    let o = run(&cfg, &["upload"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = usd(&["pay", "1.00", "USD"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("queued #2"), "{}", text(&o));
}

/// `tap-certs terminal --renew` mid-queue: records queued under the old
/// certificate and those under the new one upload together (the old one
/// listed in `previous_certificates`) into one chain at the host, and a
/// fresh queue under the renewed certificate learns that chain's head with
/// an empty upload and continues it.
#[test]
fn a_renewed_certificate_continues_the_chain_of_the_old_one() {
    use tapstack_protocol::Codec;
    let shop = Shop::new();
    let d = shop.dir.path();
    let cfg = config(&shop);
    for seq in 1..=2 {
        let o = run(&cfg, &["pay", "1.00", "CNY"]);
        assert!(text(&o).contains(&format!("queued #{seq}")), "{}", text(&o));
    }
    let o = run(&cfg, &["upload"]);
    assert!(o.status.success(), "{}", text(&o));
    // #3 under the old certificate, not uploaded yet.
    let o = run(&cfg, &["pay", "1.00", "CNY"]);
    assert!(text(&o).contains("queued #3"), "{}", text(&o));

    // Renewal: new key and certificate, same ID; the old one stays listed.
    let pki = tapstack_certs::Pki::load(&d.join("pki")).unwrap();
    let old = tapstack_certs::read_certificate(&d.join("terminal.pem")).unwrap();
    let opts = tapstack_certs::LeafOptions {
        file_stem: Some("terminal-2".into()),
        ..Default::default()
    };
    let new = pki
        .renew_terminal(&old, d, &opts, common::now(), &mut rand_core::OsRng)
        .unwrap();
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(
            "certificate = \"terminal.pem\"\nkey = \"terminal.key\"",
            "certificate = \"terminal-2.pem\"\nkey = \"terminal-2.key\"\nprevious_certificates = [\"terminal.pem\"]",
        )
        // The TLS client certificate names the terminal ID, which renewal
        // keeps: it stays in use.
        .replace(
            "ca = \"tls/tls-ca.pem\"",
            "ca = \"tls/tls-ca.pem\"\ntls_certificate = \"terminal-tls.pem\"\ntls_key = \"terminal-tls.key\"",
        );
    std::fs::write(&cfg, text_cfg).unwrap();
    let o = run(&cfg, &["pay", "1.00", "CNY"]);
    assert!(text(&o).contains("queued #4"), "{}", text(&o));
    let o = run(&cfg, &["upload"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("\"accepted\": 2"), "{}", text(&o));
    assert_eq!(
        shop.host_store.head(&shop.terminal).unwrap().map(|h| h.seq),
        Some(4)
    );
    // One chain, records signed under both certificates.
    let named = |seq| {
        let r = shop
            .host_store
            .record(&shop.terminal, seq)
            .unwrap()
            .unwrap();
        tapstack_protocol::record::TransactionRecord::decode(&r.bytes)
            .unwrap()
            .terminal
    };
    assert_eq!(named(3), *old.hash());
    assert_eq!(named(4), *new.identity.cert.hash());
    let o = run(&cfg, &["queue"]);
    assert!(text(&o).contains("host holds up to #4"), "{}", text(&o));

    // A fresh queue under the renewed certificate: the empty upload finds
    // the chain's head at #4 (not a new chain at #0), so the next tap is #5.
    let fresh = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tap-terminal"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("TAPSTACK_QUEUE_PATH", d.join("queue-2"))
            .output()
            .unwrap()
    };
    let o = fresh(&["pay", "1.00", "CNY"]);
    assert!(text(&o).contains("queued #5"), "not #1 again: {}", text(&o));
    let o = fresh(&["upload"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        shop.host_store.head(&shop.terminal).unwrap().map(|h| h.seq),
        Some(5)
    );
}

/// `[host] failover`: with the first instance unreachable (nothing listens
/// on its port), `upload` goes to the next one, and says where it could
/// not connect only when none answers.
#[test]
fn upload_fails_over_to_the_next_host_instance() {
    let shop = Shop::new();
    let cfg = config(&shop);
    let dead = tapstack_tests::free_port().unwrap();
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("url = \"https://localhost:{}\"", shop.host_addr.port()),
        &format!(
            "url = \"https://127.0.0.1:{dead}\"\nfailover = [\"https://localhost:{}\"]",
            shop.host_addr.port()
        ),
    );
    std::fs::write(&cfg, &text_cfg).unwrap();
    assert!(text_cfg.contains("failover"), "{text_cfg}");
    let o = run(&cfg, &["pay", "1.00", "CNY"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&cfg, &["upload"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        shop.host_store.head(&shop.terminal).unwrap().map(|h| h.seq),
        Some(1)
    );
    // No instance answers: the error names the last one tried.
    let dead2 = tapstack_tests::free_port().unwrap();
    std::fs::write(
        &cfg,
        text_cfg.replace(
            &format!(
                "failover = [\"https://localhost:{}\"]",
                shop.host_addr.port()
            ),
            &format!("failover = [\"https://127.0.0.1:{dead2}\"]"),
        ),
    )
    .unwrap();
    let o = run(&cfg, &["upload"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&format!("127.0.0.1:{dead2}")),
        "{}",
        text(&o)
    );
}
