#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! One suite for every [`Store`]: the same cases against the embedded sled
//! store and against a real PostgreSQL server the test starts (initdb into
//! a temp dir, `postgres` on a free port). The contract is in
//! `host/src/store.rs`: contiguous chains, a conditional atomic append,
//! one settlement per tap and per (wallet, ATC), the ATC window, pickup
//! credential reuse flagged on both records — and, for a store shared by
//! several instances, racing writers that cannot both win.

use std::sync::{Arc, Barrier};

use tapstack_host::store::{
    AtcPolicy, ChainHead, Disposition, PgStore, RecordSummary, SledStore, Store, StoredRecord,
};
use tapstack_host::wire::{Flag, Reason};
use tapstack_host::Error;
use tapstack_tests::Postgres;

const POLICY: AtcPolicy = AtcPolicy { window: 1000 };

fn terminal(n: u8) -> [u8; 32] {
    [n; 32]
}

/// An accepted record of `terminal`'s chain: its own tap (`tap`), a wallet
/// and its ATC, optionally a pickup credential.
fn rec(
    t: [u8; 32],
    seq: u64,
    tap: u8,
    wallet: u8,
    atc: u32,
    credential: Option<u8>,
) -> StoredRecord {
    let bytes = format!("record {} {seq} {tap}", t[0]).into_bytes();
    StoredRecord {
        terminal: t,
        seq,
        hash: tapstack_protocol::crypto::sha256(&[&bytes]),
        received_at: 1_780_000_000 + seq,
        disposition: Disposition::Accepted,
        flags: Vec::new(),
        detail: None,
        summary: RecordSummary {
            terminal_name: format!("Shop {}", t[0]),
            amount_minor: Some(100 * seq),
            currency: tapstack_protocol::scenario::Currency::new("CNY"),
            tap_time: Some(1_780_000_000),
            wallet_key: Some(hex::encode([wallet; 32])),
            atc: Some(atc),
            th1: Some(hex::encode([tap; 32])),
            credential: credential.map(|c| hex::encode([c; 16])),
            ..RecordSummary::default()
        },
        bytes,
    }
}

fn head_of(r: &StoredRecord) -> Option<ChainHead> {
    Some(ChainHead {
        seq: r.seq,
        hash: r.hash,
    })
}

/// The cases, in order, against one store.
fn suite(store: &dyn Store) {
    let (a, b) = (terminal(1), terminal(2));
    assert_eq!(store.head(&a).unwrap(), None);

    // A chain starts at 1 and continues its head; nothing else is taken.
    let mut first = vec![rec(a, 1, 1, 1, 1, None), rec(a, 2, 2, 1, 2, None)];
    store.append(&a, None, &mut first, &POLICY).unwrap();
    store.sync().unwrap();
    assert_eq!(store.head(&a).unwrap(), head_of(&first[1]));
    let mut gap = vec![rec(a, 4, 4, 1, 4, None)];
    assert!(matches!(
        store.append(&a, head_of(&first[1]), &mut gap, &POLICY),
        Err(Error::Invalid { .. })
    ));
    // A writer that read an old head loses (optimistic concurrency).
    let mut stale = vec![rec(a, 2, 9, 1, 9, None)];
    assert!(matches!(
        store.append(&a, head_of(&first[0]), &mut stale, &POLICY),
        Err(Error::HeadMoved)
    ));
    let mut again = vec![rec(a, 1, 9, 1, 9, None)];
    assert!(matches!(
        store.append(&a, None, &mut again, &POLICY),
        Err(Error::HeadMoved)
    ));

    // One tap settles once: the same TH1 from another terminal, the same
    // (wallet, ATC) with another transcript, an ATC far outside the window.
    let mut b1 = vec![
        rec(b, 1, 1, 2, 1, None),     // TH1 of a#1
        rec(b, 2, 20, 1, 2, None),    // wallet 1, ATC 2 again
        rec(b, 3, 21, 1, 5000, None), // ATC jump
        rec(b, 4, 22, 3, 7, None),    // fine
    ];
    store.append(&b, None, &mut b1, &POLICY).unwrap();
    let reasons: Vec<_> = b1.iter().map(|r| r.disposition).collect();
    assert_eq!(
        reasons,
        [
            Disposition::Declined(Reason::DuplicateTap),
            Disposition::Declined(Reason::ClonedWallet),
            Disposition::Declined(Reason::AtcJump),
            Disposition::Accepted,
        ]
    );
    assert!(b1[0].detail.as_deref().unwrap().contains("already settled"));
    // Declined records are kept (the chain goes on) but not indexed.
    assert_eq!(store.head(&b).unwrap().unwrap().seq, 4);
    assert_eq!(store.tap(&[1; 32]).unwrap().unwrap().terminal, a);
    assert_eq!(store.wallet_uses(&[1; 32], 2).unwrap().len(), 1);
    assert_eq!(store.highest_atc(&[1; 32]).unwrap(), Some(2));
    assert_eq!(store.highest_atc(&[3; 32]).unwrap(), Some(7));
    let stored = store.record(&b, 2).unwrap().unwrap();
    assert_eq!(stored, b1[1], "the decision is what was stored");
    assert_eq!(store.record_hash(&b, 4).unwrap(), Some(b1[3].hash));
    assert_eq!(store.record(&b, 5).unwrap(), None);

    // A pickup credential used twice: both records flagged, the earlier
    // one in place, and twice within one append.
    let mut p = vec![rec(a, 3, 30, 4, 1, Some(7))];
    store
        .append(&a, head_of(&first[1]), &mut p, &POLICY)
        .unwrap();
    assert!(p[0].flags.is_empty());
    let mut q = vec![
        rec(b, 5, 31, 5, 1, Some(7)),
        rec(b, 6, 32, 6, 1, Some(8)),
        rec(b, 7, 33, 7, 1, Some(8)),
    ];
    store.append(&b, head_of(&b1[3]), &mut q, &POLICY).unwrap();
    assert_eq!(q[0].flags, [Flag::CredentialReused]);
    assert_eq!(q[1].flags, [Flag::CredentialReused]);
    assert_eq!(q[2].flags, [Flag::CredentialReused]);
    assert_eq!(
        store.record(&a, 3).unwrap().unwrap().flags,
        [Flag::CredentialReused]
    );
    assert_eq!(store.credential_uses(&[7; 16]).unwrap().len(), 2);

    // Everything, in (terminal, seq) order, bytes intact.
    let all = store.records().unwrap();
    let keys: Vec<_> = all.iter().map(|r| (r.terminal[0], r.seq)).collect();
    assert_eq!(
        keys,
        [
            (1, 1),
            (1, 2),
            (1, 3),
            (2, 1),
            (2, 2),
            (2, 3),
            (2, 4),
            (2, 5),
            (2, 6),
            (2, 7)
        ]
    );
    assert_eq!(all[0].bytes, first[0].bytes);
    assert_eq!(all[0].summary.amount().unwrap().to_string(), "1.00 CNY");
}

/// Writers racing on one store: for each terminal, threads append the same
/// seq with different taps; for each tap, two terminals append it. Exactly
/// one wins each race; the losers see `HeadMoved` (or, retried after a
/// fresh read, a declined duplicate).
/// `stores` are instances on one database (or one store, for sled): the
/// writers take them in turn.
fn races(stores: &[Arc<dyn Store>]) {
    let store = stores[0].clone();
    const THREADS: usize = 8;
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Two threads per terminal, one tap (TH1 50) for all of them.
                let t = terminal(10 + (i / 2) as u8);
                let mut r = vec![rec(t, 1, 50, 60 + i as u8, 1, None)];
                barrier.wait();
                let mut result = store.append(&t, None, &mut r, &POLICY);
                // A loser of the tap race (not of the chain race) retries.
                for _ in 0..5 {
                    if !matches!(result, Err(Error::HeadMoved)) || store.head(&t).unwrap().is_some()
                    {
                        break;
                    }
                    result = store.append(&t, None, &mut r, &POLICY);
                }
                (t, result.map(|()| r[0].disposition))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut per_terminal = std::collections::BTreeMap::<u8, usize>::new();
    for (t, r) in &results {
        if r.is_ok() {
            *per_terminal.entry(t[0]).or_default() += 1;
        }
    }
    assert_eq!(
        per_terminal.values().copied().collect::<Vec<_>>(),
        [1, 1, 1, 1],
        "one append per terminal chain: {results:?}"
    );
    let accepted = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(Disposition::Accepted)))
        .count();
    assert_eq!(accepted, 1, "one settlement of the tap: {results:?}");
    let settled: Vec<_> = store
        .records()
        .unwrap()
        .into_iter()
        .filter(|r| r.disposition == Disposition::Accepted)
        .collect();
    assert_eq!(settled.len(), 1);

    // One pickup credential used at four terminals at once: however the
    // appends interleave, every use sees the others and all are flagged.
    let barrier = Arc::new(Barrier::new(4));
    let handles: Vec<_> = (0..4u8)
        .map(|i| {
            let store = stores[usize::from(i) % stores.len()].clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let t = terminal(30 + i);
                let mut r = vec![rec(t, 1, 70 + i, 80 + i, 1, Some(9))];
                barrier.wait();
                loop {
                    match store.append(&t, None, &mut r, &POLICY) {
                        Err(Error::HeadMoved) => continue,
                        other => break other.unwrap(),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for i in 0..4u8 {
        assert_eq!(
            store.record(&terminal(30 + i), 1).unwrap().unwrap().flags,
            [Flag::CredentialReused],
            "use at terminal {i}"
        );
    }
    assert_eq!(store.credential_uses(&[9; 16]).unwrap().len(), 4);
}

#[test]
fn the_sled_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    suite(store.as_ref());
    let dir = tempfile::tempdir().unwrap();
    races(&[Arc::new(SledStore::open(dir.path()).unwrap())]);
}

#[test]
fn the_postgres_store_keeps_the_contract() {
    let pg = Postgres::start().unwrap();
    let store = PgStore::open(&pg.create_database("suite").unwrap(), 4).unwrap();
    assert_eq!(store.schema_version().unwrap(), 1);
    suite(&store);
    // Two instances on one database, each its own pool: the racing
    // writers alternate between them.
    let url = pg.create_database("races").unwrap();
    let stores: Vec<Arc<dyn Store>> = (0..2)
        .map(|_| Arc::new(PgStore::open(&url, 8).unwrap()) as Arc<dyn Store>)
        .collect();
    races(&stores);
    drop(stores);
}

/// The schema is applied once, by whichever instance comes first; a second
/// open and `migrate` find nothing to do; a restarted server keeps what was
/// committed.
#[test]
fn postgres_migrations_run_once_and_commits_survive_a_crash() {
    let mut pg = Postgres::start().unwrap();
    let url = pg.create_database("tap").unwrap();
    let first = PgStore::open(&url, 2).unwrap();
    let second = PgStore::open(&url, 2).unwrap();
    assert_eq!(second.migrate().unwrap(), 0);
    let t = terminal(3);
    let mut r = vec![rec(t, 1, 1, 1, 1, None)];
    first.append(&t, None, &mut r, &POLICY).unwrap();
    drop((first, second));
    pg.kill_hard();
    pg.restart().unwrap();
    let store = PgStore::open(&url, 2).unwrap();
    assert_eq!(store.head(&t).unwrap(), head_of(&r[0]));
    assert_eq!(store.records().unwrap(), r);
}
