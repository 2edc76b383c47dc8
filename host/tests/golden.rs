#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Golden file: a host store (sled) as this release leaves it on disk, with
//! the protocol's golden pay and pickup records ingested
//! (`protocol/tests/golden`). A store written by an older release must still
//! open, list the same records with the same conclusions, and keep them
//! exactly once. Regenerate only on purpose:
//! `TAPTEST_BLESS=1 cargo test -p tapstack-host --test golden`.

use std::path::PathBuf;
use std::sync::Arc;

use tapstack_host::ingest::{Ingestor, VerifyMode};
use tapstack_host::revocations::Revocations;
use tapstack_host::store::{Disposition, SledStore, Store};
use tapstack_host::wire::RecordStatus;
use tapstack_protocol::crypto::IssuerMasterKey;
use tapstack_protocol::pki::{Certificate, TrustStore};
use tapstack_protocol::revocation::RevocationList;

/// Host time of the golden ingest: 100 s after the taps.
const RECEIVED_AT: u64 = 1_780_000_100;

fn protocol_golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../protocol/tests/golden")
        .join(name)
}

fn pem(name: &str) -> Certificate {
    Certificate::from_pem(
        &std::fs::read_to_string(protocol_golden(&format!("records-{name}.pem"))).unwrap(),
    )
    .unwrap()
}

fn ingestor(store: Arc<SledStore>) -> Ingestor {
    let mut trust = TrustStore::new();
    trust.add_root(pem("root")).unwrap();
    for n in ["issuer", "acquirer", "operator"] {
        trust.add_intermediate(pem(n)).unwrap();
    }
    let hex = std::fs::read_to_string(protocol_golden("records-issuer-master.hex")).unwrap();
    let mut imk = [0u8; 16];
    hex::decode_to_slice(hex.trim(), &mut imk).unwrap();
    let revocations = Arc::new(Revocations::fixed(RevocationList::default(), trust.clone()));
    Ingestor::new(
        store,
        trust,
        IssuerMasterKey(imk),
        revocations,
        VerifyMode::Ring,
    )
    .unwrap()
}

#[test]
fn a_store_written_by_this_release_still_opens_and_keeps_its_records_once() {
    let records: Vec<Vec<u8>> = ["pay", "pickup"]
        .iter()
        .map(|n| std::fs::read(protocol_golden(&format!("record-{n}.tlv"))).unwrap())
        .collect();
    let terminal = pem("terminal");
    let golden_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/store-v1");
    if std::env::var_os("TAPTEST_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&golden_dir);
        let store = Arc::new(SledStore::open(&golden_dir).unwrap());
        let resp = ingestor(store.clone())
            .ingest(&terminal, &records, RECEIVED_AT)
            .unwrap();
        assert_eq!(resp.accepted, 2, "{resp:?}");
        store.sync().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    tapstack_tests::copy_tree(&golden_dir, dir.path()).unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let stored = store.records().unwrap();
    assert_eq!(stored.len(), 2);
    for (s, bytes) in stored.iter().zip(&records) {
        assert_eq!(&s.bytes, bytes, "the exact bytes the terminal signed");
        assert_eq!(s.disposition, Disposition::Accepted);
        assert!(s.flags.is_empty() && s.is_settled());
        assert_eq!(s.received_at, RECEIVED_AT);
        assert_eq!(s.summary.terminal_name, terminal.common_name());
        assert_eq!(s.summary.tap_time, Some(1_780_000_000));
        assert_eq!(&s.terminal, terminal.hash());
    }
    let (pay, pickup) = (&stored[0].summary, &stored[1].summary);
    assert_eq!(
        pay.amount().map(|a| a.to_string()).as_deref(),
        Some("12.50 CNY")
    );
    assert_eq!(pickup.amount(), None);
    assert_eq!(pickup.site.as_deref(), Some("LOCKER-7"));
    assert!(pickup.credential.is_some());
    assert_eq!((pay.atc, pickup.atc), (Some(1), Some(2)));
    let head = store.head(terminal.hash()).unwrap().expect("a chain head");
    assert_eq!((head.seq, head.hash), (2, stored[1].hash));
    // The indexes still answer: the wallet's counter, the tap by TH1.
    let (wallet, atc) = stored[1].wallet_atc().unwrap();
    assert_eq!(store.highest_atc(&wallet).unwrap(), Some(atc));
    let th1 = stored[0].th1().unwrap();
    assert_eq!(
        store.tap(&th1).unwrap(),
        Some(stored[0].reference()),
        "one tap, one TH1"
    );
    // Uploaded again to the old store: acknowledged, stored once.
    let again = ingestor(store.clone())
        .ingest(&terminal, &records, RECEIVED_AT + 60)
        .unwrap();
    assert!(again
        .results
        .iter()
        .all(|r| r.status == RecordStatus::Duplicate));
    assert_eq!(store.records().unwrap().len(), 2);
}
