//! The queue under damage: truncation at every record boundary and inside
//! every record, byte flips, deleted files, an older copy restored, a full
//! disk (a real tmpfs, mounted by the test) — on real files.
//!
//! The invariant in every case: the queue either still holds every
//! approved record unchanged, or it reports damage naming the seqs and
//! refuses to approve. A sequence number is never used twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rand_core::OsRng;
use tapstack_protocol::record::TransactionRecord;
use tapstack_protocol::scenario::{Amount, Currency, Scenario};
use tapstack_protocol::terminal::{TapOutcome, TapParams};
use tapstack_protocol::testkit::Pki;
use tapstack_terminal::mark::mark_path;
use tapstack_terminal::queue::{IntentKey, Queue, QueueStore, RecordFacts, Stored};
use tapstack_terminal::Error;

mod common;

const N: u64 = 6;

struct Maker {
    pki: Pki,
    outcomes: Vec<TapOutcome>,
}

impl Maker {
    fn new(n: usize) -> Maker {
        let pki = Pki::generate(&mut OsRng);
        let (mut t, mut w) = (pki.terminal_context(), pki.wallet_context());
        let params = TapParams {
            scenario: Scenario::Pay {
                amount: Amount {
                    minor: 1250,
                    currency: Currency::new("CNY").unwrap(),
                },
            },
            cvm_limit: 1_000_000,
            send_certificate: true,
        };
        let outcomes = (0..n)
            .map(|_| {
                pki.run_tap(&mut t, &mut w, params.clone(), &mut OsRng)
                    .outcome
                    .unwrap()
            })
            .collect();
        Maker { pki, outcomes }
    }

    fn append(&self, q: &Queue, i: usize) -> Result<Stored, Error> {
        self.append_with(q, i, None, None)
    }

    /// An append that also uses a pickup credential and an idempotency key.
    fn append_with(
        &self,
        q: &Queue,
        i: usize,
        credential: Option<[u8; 16]>,
        intent: Option<IntentKey>,
    ) -> Result<Stored, Error> {
        let o = &self.outcomes[i % self.outcomes.len()];
        let (cert, key) = (&self.pki.terminal.cert, &self.pki.terminal.key);
        q.append(
            RecordFacts {
                wallet: *o.wallet.hash(),
                atc: o.atc,
                credential,
                intent,
            },
            &mut |seq, prev| {
                TransactionRecord::new(o, cert, key, seq, prev, 1_800_000_000, None, None)
            },
        )
    }
}

/// A queue with records 1..=N; returns them.
fn filled(m: &Maker, dir: &Path) -> Vec<Stored> {
    let q = Queue::open(dir).unwrap();
    let out: Vec<Stored> = (0..N as usize).map(|i| m.append(&q, i).unwrap()).collect();
    assert_eq!(out.last().unwrap().seq, N);
    out
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The invariant after a damage: intact with every approved record, or
/// damaged (naming seqs within 1..=N) and refusing to append.
fn check(m: &Maker, dir: &Path, approved: &[Stored], what: &str) -> bool {
    let q = match Queue::open(dir) {
        Ok(q) => q,
        Err(e) => panic!("{what}: the queue must open to report damage, got {e}"),
    };
    let integrity = q.integrity();
    let head = q.head().unwrap();
    if integrity.is_ok() {
        assert_eq!(
            integrity.approved, N,
            "{what}: the mark is the approved head"
        );
        let held = q.pending(usize::MAX).unwrap();
        assert_eq!(
            held, approved,
            "{what}: reported intact but records differ (silent loss)"
        );
        return false;
    }
    for d in &integrity.damaged {
        if let (Some(a), Some(b)) = (d.from, d.to) {
            assert!(
                1 <= a && a <= b && b <= N,
                "{what}: damage {d} outside 1..={N}"
            );
        }
    }
    // Refuses to approve: no new seq, nothing reused.
    match m.append(&q, 0) {
        Err(Error::Damaged { detail, .. }) => assert!(!detail.is_empty()),
        other => panic!("{what}: a damaged queue appended: {other:?}"),
    }
    assert_eq!(q.head().unwrap(), head, "{what}: head moved");
    // What it still uploads is an intact prefix of the approved records.
    let pending = q.pending(usize::MAX).unwrap();
    assert!(
        approved.starts_with(&pending),
        "{what}: uploads something other than an approved prefix"
    );
    true
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Offsets of each record's stored value (`hash ‖ record`) in sled's log.
fn offsets(dir: &Path, approved: &[Stored]) -> Vec<usize> {
    let db = std::fs::read(dir.join("db")).unwrap();
    approved
        .iter()
        .map(|s| find(&db, &s.hash).unwrap_or_else(|| panic!("record {} not in the log", s.seq)))
        .collect()
}

#[test]
fn truncation_at_every_record_boundary_and_inside_every_record_is_detected() {
    let m = Maker::new(N as usize);
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("original");
    let approved = filled(&m, &original);
    let offs = offsets(&original, &approved);
    let mut detected = 0;
    for (i, &off) in offs.iter().enumerate() {
        let len = 32 + approved[i].bytes.len();
        for (label, cut) in [
            ("start of", off),
            ("inside", off + len / 2),
            ("end of", off + len),
        ] {
            let dir = base.path().join(format!("t{i}-{}", label.replace(' ', "")));
            copy_dir(&original, &dir);
            std::fs::copy(mark_path(&original), mark_path(&dir)).unwrap();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("db"))
                .unwrap();
            f.set_len(cut as u64).unwrap();
            drop(f);
            let what = format!("truncated at the {label} record {}", i + 1);
            if check(&m, &dir, &approved, &what) {
                detected += 1;
            }
        }
    }
    // Cutting at the start of or inside a record always loses it.
    assert!(
        detected >= 2 * N as usize,
        "only {detected} truncations detected"
    );
}

#[test]
fn byte_flips_in_values_keys_and_headers_are_detected_or_harmless() {
    let m = Maker::new(N as usize);
    let base = tempfile::tempdir().unwrap();
    let original = base.path().join("original");
    let approved = filled(&m, &original);
    let offs = offsets(&original, &approved);
    let size = std::fs::metadata(original.join("db")).unwrap().len() as usize;
    let mut detected = 0;
    let mut places = Vec::new();
    for (i, &off) in offs.iter().enumerate() {
        let len = 32 + approved[i].bytes.len();
        places.push((format!("checksum of record {}", i + 1), off + 3));
        places.push((format!("body of record {}", i + 1), off + len / 2));
        places.push((format!("last byte of record {}", i + 1), off + len - 1));
        places.push((
            format!("header before record {}", i + 1),
            off.saturating_sub(9),
        ));
        places.push((
            format!("key before record {}", i + 1),
            off.saturating_sub(2),
        ));
    }
    places.push(("first byte of the log".into(), 0));
    places.push(("last byte of the log".into(), size - 1));
    for (n, (what, at)) in places.iter().enumerate() {
        let dir = base.path().join(format!("f{n}"));
        copy_dir(&original, &dir);
        std::fs::copy(mark_path(&original), mark_path(&dir)).unwrap();
        let mut db = std::fs::read(dir.join("db")).unwrap();
        db[*at] ^= 0x5a;
        std::fs::write(dir.join("db"), db).unwrap();
        if check(&m, &dir, &approved, &format!("flipped the {what}")) {
            detected += 1;
        }
    }
    // A flip inside a record's stored value is always caught.
    assert!(
        detected >= 3 * N as usize,
        "only {detected} of {} flips detected",
        places.len()
    );
}

#[test]
fn deleted_files_and_an_older_copy_are_detected() {
    let m = Maker::new(N as usize);
    let base = tempfile::tempdir().unwrap();
    // An older copy: taken after 3 records, restored after 6.
    let dir = base.path().join("queue");
    let q = Queue::open(&dir).unwrap();
    let mut approved = Vec::new();
    for i in 0..3 {
        approved.push(m.append(&q, i).unwrap());
    }
    drop(q);
    let old = base.path().join("old");
    copy_dir(&dir, &old);
    let q = Queue::open(&dir).unwrap();
    for i in 3..N as usize {
        approved.push(m.append(&q, i).unwrap());
    }
    drop(q);
    let restored = base.path().join("restored");
    copy_dir(&old, &restored);
    std::fs::copy(mark_path(&dir), mark_path(&restored)).unwrap();
    assert!(check(&m, &restored, &approved, "an older copy restored"));
    let q = Queue::open(&restored).unwrap();
    let d = &q.integrity().damaged;
    assert_eq!((d[0].from, d[0].to), (Some(4), Some(6)), "{d:?}");
    drop(q);

    for file in ["db", "conf"] {
        let copy = base.path().join(format!("no-{file}"));
        copy_dir(&dir, &copy);
        std::fs::copy(mark_path(&dir), mark_path(&copy)).unwrap();
        std::fs::remove_file(copy.join(file)).unwrap();
        check(&m, &copy, &approved, &format!("{file} deleted"));
    }
    let copy = base.path().join("no-db-detected");
    copy_dir(&dir, &copy);
    std::fs::copy(mark_path(&dir), mark_path(&copy)).unwrap();
    std::fs::remove_file(copy.join("db")).unwrap();
    assert!(check(&m, &copy, &approved, "db deleted"));

    // The mark deleted, or damaged in both slots.
    let copy = base.path().join("no-mark");
    copy_dir(&dir, &copy);
    assert!(check(&m, &copy, &approved, "the high-water mark deleted"));
    let copy = base.path().join("bad-mark");
    copy_dir(&dir, &copy);
    std::fs::write(mark_path(&copy), [0u8; 256]).unwrap();
    assert!(check(&m, &copy, &approved, "the high-water mark zeroed"));
}

#[test]
fn an_append_that_never_completed_is_set_aside_and_never_uploaded() {
    let m = Maker::new(N as usize);
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("queue");
    let q = Queue::open(&dir).unwrap();
    let approved: Vec<Stored> = (0..5).map(|i| m.append(&q, i).unwrap()).collect();
    drop(q);
    // The record of a 6th append reaches sled, its mark never does: the
    // state a crash between the two leaves.
    let mark = std::fs::read(mark_path(&dir)).unwrap();
    let q = Queue::open(&dir).unwrap();
    let key = IntentKey {
        key: "sale-6".into(),
        request: br#"{"kind":"pickup"}"#.to_vec(),
    };
    let orphan = m
        .append_with(&q, 5, Some([6; 16]), Some(key.clone()))
        .unwrap();
    assert!(q.credential_used(&[6; 16]).unwrap());
    assert!(q.recall(&key.key).unwrap().is_some());
    drop(q);
    std::fs::write(mark_path(&dir), mark).unwrap();
    let q = Queue::open(&dir).unwrap();
    let i = q.integrity();
    assert!(i.is_ok(), "{i:?}");
    assert_eq!(i.set_aside, vec![6]);
    // What that append indexed is gone with it: the parcel can still be
    // collected, and a retry of the key does not answer "approved".
    assert!(!q.credential_used(&[6; 16]).unwrap());
    assert!(q.recall(&key.key).unwrap().is_none());
    assert_eq!(q.pending(usize::MAX).unwrap(), approved);
    let next = m.append(&q, 0).unwrap();
    assert_eq!(next.seq, 6);
    assert_ne!(next.hash, orphan.hash);
    drop(q);
    let q = Queue::open(&dir).unwrap();
    assert!(q.integrity().is_ok());
    assert_eq!(q.pending(usize::MAX).unwrap().len(), 6);
}

#[test]
fn repair_rebuilds_from_the_host_only_when_the_host_holds_the_damage() {
    let m = Maker::new(N as usize);
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("queue");
    let approved = filled(&m, &dir);
    let offs = offsets(&dir, &approved);
    // Lose records 5 and 6.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("db"))
        .unwrap();
    f.set_len(offs[4] as u64).unwrap();
    drop(f);
    assert!(check(&m, &dir, &approved, "truncated at record 5"));
    // The host holds only 1..=4: repairing would lose approved records.
    let err = Queue::repair(&dir, 4, Some(approved[3].hash)).unwrap_err();
    assert!(matches!(err, Error::Damaged { .. }), "{err}");
    assert!(err.to_string().contains("restore"), "{err}");
    // The host holds 1..=6 (uploaded before the damage): rebuilt.
    let msg = Queue::repair(&dir, 6, Some(approved[5].hash)).unwrap();
    assert!(msg.contains("next seq 7"), "{msg}");
    let q = Queue::open(&dir).unwrap();
    assert!(q.integrity().is_ok(), "{:?}", q.integrity());
    assert_eq!(q.head().unwrap(), (6, approved[5].hash));
    let next = m.append(&q, 0).unwrap();
    assert_eq!(next.seq, 7);
    assert_eq!(next.record().unwrap().prev_hash, approved[5].hash);
    // The damaged store is kept for inspection.
    let kept: Vec<PathBuf> = std::fs::read_dir(base.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("queue.damaged-"))
        .collect();
    assert_eq!(kept.len(), 1);
}

/// A real full disk: a 2 MiB tmpfs mounted by the test (needs root, as CI
/// runs; `TAPTEST_NO_MOUNT=1` skips it with a message elsewhere).
#[test]
fn a_full_disk_declines_keeps_nothing_it_did_not_approve_and_recovers() {
    let m = Maker::new(4);
    let base = tempfile::tempdir().unwrap();
    let mnt = base.path().join("mnt");
    let Some(disk) = common::Tmpfs::mount(&mnt, "2m") else {
        return;
    };
    let dir = mnt.join("queue");
    let q = Queue::open(&dir).unwrap();
    let mut approved: Vec<Stored> = (0..2).map(|i| m.append(&q, i).unwrap()).collect();
    let filler = disk.fill("filler");
    // Appends fail (sled may fit a few into space it already holds).
    let mut failed = None;
    for i in 0..200 {
        match m.append(&q, i) {
            Ok(s) => approved.push(s),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let err = failed.expect("a full disk never failed an append");
    assert!(matches!(err, Error::Store { .. }), "{err}");
    let integrity = q.integrity();
    assert!(integrity.storage_error.is_some(), "{integrity:?}");
    assert!(integrity.damaged.is_empty(), "{integrity:?}");
    let head = approved.last().unwrap().seq;
    assert_eq!(q.head().unwrap().0, head);
    // Memory never runs ahead of the disk: only approved records upload.
    assert_eq!(q.pending(usize::MAX).unwrap(), approved);
    // Still full: still refused, still the same head.
    assert!(m.append(&q, 0).is_err());
    assert_eq!(q.head().unwrap().0, head);
    // Room again: the queue recovers by itself, the next seq follows.
    std::fs::remove_file(&filler).unwrap();
    q.ready().unwrap();
    let next = m.append(&q, 1).unwrap();
    assert_eq!(next.seq, head + 1);
    approved.push(next);
    assert_eq!(q.pending(usize::MAX).unwrap(), approved);
    drop(q);
    // And after a restart: intact, no stale snapshot left behind.
    let q = Queue::open(&dir).unwrap();
    assert!(q.integrity().is_ok(), "{:?}", q.integrity());
    assert_eq!(q.pending(usize::MAX).unwrap(), approved);
    let stale = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".generating"));
    assert!(!stale);
}

/// What a full disk leaves when it hits sled's snapshot writer: an empty
/// `snap.*.generating` file. The queue removes it and opens intact.
#[test]
fn a_stale_snapshot_left_by_a_full_disk_is_removed() {
    let m = Maker::new(N as usize);
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("queue");
    let approved = filled(&m, &dir);
    let stale = dir.join("snap.00000000000001F4.generating");
    std::fs::write(&stale, b"").unwrap();
    let q = Queue::open(&dir).unwrap();
    assert!(q.integrity().is_ok(), "{:?}", q.integrity());
    assert_eq!(q.pending(usize::MAX).unwrap(), approved);
    assert!(!stale.exists());
}

/// A queue held open elsewhere (here: a second handle, which takes sled's
/// lock the same way another process would) is refused as in use — not
/// reported as storage trouble, and its mark is not touched.
#[test]
fn a_queue_in_use_is_refused_as_locked_and_left_alone() {
    let m = Maker::new(N as usize);
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("queue");
    let approved = filled(&m, &dir);
    let held = Queue::open(&dir).unwrap();
    let mark_before = std::fs::read(mark_path(&dir)).unwrap();
    match Queue::open(&dir) {
        Err(Error::Locked { path }) => assert_eq!(path, dir),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second handle opened a held queue"),
    }
    assert_eq!(std::fs::read(mark_path(&dir)).unwrap(), mark_before);
    assert_eq!(held.pending(usize::MAX).unwrap(), approved);
    let next = m.append(&held, 0).unwrap();
    assert_eq!(next.seq, N + 1);
}
