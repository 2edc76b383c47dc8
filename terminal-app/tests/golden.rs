#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Golden files: the bytes of every format the terminal persists, checked
//! in. A change to a format fails here until the files are regenerated on
//! purpose (`TAPTEST_BLESS=1 cargo test -p tapstack-terminal --test golden`)
//! and the change is reviewed — a queue written by the old code must still
//! open, or the change needs a migration.

use std::path::PathBuf;

use tapstack_terminal::mark::{Mark, SLOT};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compare `bytes` with the golden file, or write it when blessing.
fn check(name: &str, bytes: &[u8]) {
    let path = golden(name);
    if std::env::var_os("TAPTEST_BLESS").is_some() {
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        want == bytes,
        "{name}: the encoding changed ({} bytes now, {} checked in); regenerate with TAPTEST_BLESS=1 only if old files still read",
        bytes.len(),
        want.len()
    );
}

/// The queue's high-water mark (`<queue>.hwm`): two 128-byte slots.
#[test]
fn the_mark_file_format_is_pinned() {
    let older = Mark {
        gen: 6,
        seq: 1233,
        hash: [0x11; 32],
        acked: 1200,
        acked_hash: [0x22; 32],
        host_checked: true,
    };
    let newer = Mark {
        gen: 7,
        seq: 1234,
        hash: [0x33; 32],
        ..older
    };
    // Slot = gen % 2: generation 6 in the first, 7 in the second.
    let mut file = Vec::new();
    file.extend_from_slice(&older.encode());
    file.extend_from_slice(&newer.encode());
    check("queue.hwm", &file);
    let want = std::fs::read(golden("queue.hwm")).unwrap();
    assert_eq!(want.len(), 2 * SLOT);
    assert_eq!(Mark::decode_file(&want).unwrap(), newer);
    assert_eq!(Mark::decode_slot(&want[..SLOT]), Some(older));
    assert_eq!(&want[..8], b"TAPQHWM1");
}

/// A whole queue as this release leaves it on disk — sled's files and the
/// high-water mark — with the protocol's golden pay and pickup records
/// appended (`protocol/tests/golden`), the first acknowledged by the host, a
/// declined intent remembered, the currency bound. A queue written by an
/// older release must still open clean and say the same.
#[test]
fn a_queue_written_by_this_release_still_opens() {
    use tapstack_protocol::codec::Codec;
    use tapstack_protocol::crypto::sha256;
    use tapstack_protocol::messages::WalletBody;
    use tapstack_protocol::record::TransactionRecord;
    use tapstack_terminal::queue::{IntentKey, Queue, QueueStore, RecordFacts, RememberedOutcome};

    let records: Vec<TransactionRecord> = ["pay", "pickup"]
        .iter()
        .map(|n| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!("../protocol/tests/golden/record-{n}.tlv"));
            TransactionRecord::decode(&std::fs::read(path).unwrap()).unwrap()
        })
        .collect();
    let facts = |r: &TransactionRecord| {
        let body = WalletBody::decode(&r.transcript.wallet_body).unwrap();
        RecordFacts {
            wallet: sha256(&[&r.wallet_certificate]),
            atc: body.atc,
            credential: body.credential.map(|c| c.id),
            intent: None,
        }
    };
    let golden_dir = golden("queue-v1");
    if std::env::var_os("TAPTEST_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&golden_dir);
        std::fs::create_dir_all(&golden_dir).unwrap();
        let q = Queue::open(&golden_dir.join("queue")).unwrap();
        q.bind_currency("CNY").unwrap();
        for r in &records {
            q.append(facts(r), &mut |_, _| r.clone()).unwrap();
        }
        q.ack(1, records[0].hash()).unwrap();
        let key = IntentKey {
            key: "pos-7-0042".into(),
            request: br#"{"amount":"9999.00","currency":"CNY"}"#.to_vec(),
        };
        q.remember_decline(&key, "floor_limit", "above the offline limit")
            .unwrap();
        drop(q);
    }
    let dir = tempfile::tempdir().unwrap();
    tapstack_tests::copy_tree(&golden_dir, dir.path()).unwrap();
    let q = Queue::open(&dir.path().join("queue")).unwrap();
    assert!(q.integrity().is_ok(), "{}", q.integrity().summary());
    assert_eq!(q.head().unwrap(), (2, records[1].hash()));
    assert_eq!(q.acked().unwrap(), 1);
    let pending = q.pending(10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].record().unwrap(), records[1]);
    // One phone made both taps: its last counter is the pickup's.
    let (pay, pickup) = (facts(&records[0]), facts(&records[1]));
    assert_eq!(pay.wallet, pickup.wallet);
    assert!(pay.atc < pickup.atc);
    assert_eq!(q.last_atc(&pay.wallet).unwrap(), Some(pickup.atc));
    assert!(q.credential_used(&pickup.credential.unwrap()).unwrap());
    let remembered = q.recall("pos-7-0042").unwrap().expect("remembered");
    assert_eq!(
        remembered.outcome,
        RememberedOutcome::Declined {
            code: "floor_limit".into(),
            message: "above the offline limit".into()
        }
    );
    // The currency stays bound: another one is refused.
    assert!(q.bind_currency("USD").is_err());
    q.bind_currency("CNY").unwrap();
}

/// The configuration file is persisted by operators: a `terminal.toml`
/// with every section set must keep loading with the same meaning (paths
/// relative to the file, defaults for what a section leaves out).
#[test]
fn a_configuration_written_for_this_release_still_loads() {
    use tapstack_terminal::config::Config;
    let path = golden("terminal-v1.toml");
    let base = path.parent().unwrap();
    let c = Config::load(&path, std::iter::empty()).unwrap();
    assert_eq!(c.currency().to_string(), "JPY");
    assert_eq!(c.terminal.order_prefix, "K");
    assert!(!c.terminal.send_certificate && c.terminal.require_presence);
    assert_eq!(c.terminal.tap_timeout_secs, 45);
    assert_eq!(c.terminal.previous_certificates.len(), 1);
    assert_eq!(c.path(&c.terminal.key), base.join("terminal.key"));
    assert_eq!(c.reader.connection, "pn532:/dev/ttyUSB0?baud=115200");
    assert_eq!(c.trust.issuers.len(), 2);
    assert_eq!(c.trust.revocation_grace_secs, 86_400);
    assert_eq!(
        c.path(&c.queue.path),
        std::path::PathBuf::from("/var/lib/tapstack/queue")
    );
    let host = c.host.as_ref().unwrap();
    assert_eq!(
        (
            host.url.as_str(),
            host.server_name.as_str(),
            host.batch_size,
            host.sync_interval_secs,
            host.sync_after_taps
        ),
        ("https://host.example:8443", "host.example", 150, 30, 5)
    );
    // A partial [risk] keeps the other defaults.
    let defaults = tapstack_terminal::risk::RiskLimits::default();
    assert_eq!((c.risk.floor_limit, c.risk.cvm_limit), (20_000, 5_000));
    assert_eq!(c.risk.queue_max_count, defaults.queue_max_count);
    let kiosk = c.kiosk.as_ref().unwrap();
    assert_eq!(kiosk.site, "00042", "a site id stays text");
    assert_eq!(
        kiosk.open_command,
        ["/usr/local/bin/open-slot", "--bank", "B"]
    );
    assert_eq!(c.api.listen, "127.0.0.1:7301");
    assert_eq!(
        (
            c.relay.allowance_ms,
            c.relay.pay_ms,
            c.relay.pickup_ms,
            c.relay.attempts
        ),
        (12, None, Some(25), 2)
    );
}
