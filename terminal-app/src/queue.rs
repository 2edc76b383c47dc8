//! The durable queue of transaction records: sled for the records, and a
//! high-water mark outside sled ([`crate::mark`]) that sled cannot bypass.
//!
//! * **The mark is the commit record.** A record's sequence number is the
//!   mark's plus one. The record (then its index entries) is stored in sled
//!   and flushed; then the mark naming it is written, and both are put on
//!   the device ([`flush_both`]: one device flush where the filesystem
//!   allows, else two fdatasyncs issued together — sled's own `flush()` is
//!   only `sync_file_range`). Only then is the tap approved. Numbers never
//!   repeat (the next one always follows the mark) and never skip (the host
//!   refuses gaps).
//! * **Damage is detected, never absorbed.** At open every record from the
//!   host's acknowledged point to the mark is read, its checksum
//!   (`SHA-256(record) ‖ record`, also the record id and the next record's
//!   `prev_hash`) and the hash chain verified. A missing, damaged or
//!   re-chained record — a truncated or bit-flipped log, a deleted file, a
//!   restored older copy — leaves the queue [damaged](Integrity::damaged):
//!   it refuses to approve and names the seq range until `repair` proves the
//!   host holds it. Records *beyond* the mark are from an append that never
//!   completed (never approved): they are set aside, never uploaded.
//! * **Storage errors** (a full disk, an I/O error) decline the tap
//!   `storage`; nothing past the mark is ever read back or uploaded, so
//!   memory never runs ahead of the disk. The next use re-opens sled (after
//!   removing the stale snapshot files a full disk leaves) and carries on
//!   once the disk has room.
//! * Records leave only when the host acknowledged them ([`Queue::ack`]).
//! * The last ATC per wallet, the pickup credentials used here and the local
//!   API's idempotency keys are written with the record, after it; those of
//!   an append that never completed are dropped when it is set aside.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tapstack_protocol::codec::Codec;
use tapstack_protocol::crypto::sha256;
use tapstack_protocol::record::TransactionRecord;

use crate::mark::{mark_path, Mark, MarkFile};
use crate::Error;

/// A record as stored, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub hash: [u8; 32],
    pub bytes: Vec<u8>,
}

impl Stored {
    pub fn record(&self) -> Result<TransactionRecord, Error> {
        TransactionRecord::decode(&self.bytes).map_err(|e| Error::Corrupt {
            what: "record",
            detail: e.to_string(),
        })
    }
}

/// Facts about a record the queue indexes alongside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFacts {
    pub wallet: [u8; 32],
    pub atc: u32,
    pub credential: Option<[u8; 16]>,
    /// The local API's idempotency key and request, remembered with the
    /// record so a retry after a restart gets this outcome.
    pub intent: Option<IntentKey>,
}

/// An idempotency key and the request it was given with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentKey {
    pub key: String,
    pub request: Vec<u8>,
}

/// What the queue remembers about an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// Unix time it was stored.
    pub at: u64,
    /// The request, as given.
    pub request: String,
    pub outcome: RememberedOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RememberedOutcome {
    /// The approved record (hex), kept here after the queue pruned it.
    Approved {
        record: String,
    },
    Declined {
        code: String,
        message: String,
    },
}

/// How long idempotency keys are remembered.
pub const INTENT_MEMORY_SECS: u64 = 48 * 3600;

/// A range of sequence numbers that is missing or damaged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Damage {
    /// First and last seq affected; `None` when the store cannot say.
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub reason: String,
}

impl core::fmt::Display for Damage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (self.from, self.to) {
            (Some(a), Some(b)) if a == b => write!(f, "seq {a}: {}", self.reason),
            (Some(a), Some(b)) => write!(f, "seq {a}–{b}: {}", self.reason),
            _ => f.write_str(&self.reason),
        }
    }
}

/// The queue's state of health, as `queue verify` and `/v1/health` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Integrity {
    pub path: String,
    /// The last approved seq (the high-water mark).
    pub approved: u64,
    /// The host holds `1..=acked`.
    pub acked: u64,
    /// Damage found; non-empty → no approvals.
    pub damaged: Vec<Damage>,
    /// A storage error since the last successful write (the queue retries).
    pub storage_error: Option<String>,
    /// Records of appends that never completed (never approved), set aside.
    pub set_aside: Vec<u64>,
    /// The host has told this queue its head.
    pub host_checked: bool,
}

impl Integrity {
    pub fn is_ok(&self) -> bool {
        self.damaged.is_empty() && self.storage_error.is_none()
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        if let Some(e) = &self.storage_error {
            return format!("storage error: {e}");
        }
        if self.damaged.is_empty() {
            return "intact".into();
        }
        let list: Vec<String> = self.damaged.iter().map(ToString::to_string).collect();
        format!("damaged: {}", list.join("; "))
    }
}

/// The queue as the terminal uses it.
pub trait QueueStore: Send + Sync + core::fmt::Debug {
    /// `(seq, hash)` of the last approved record; `(0, zeros)` for none.
    fn head(&self) -> Result<(u64, [u8; 32]), Error>;
    /// Build the next record with `build(seq, prev_hash)`, store it and put
    /// it (and the mark) on the device. Returns only once it is approved.
    fn append(
        &self,
        facts: RecordFacts,
        build: &mut dyn FnMut(u64, [u8; 32]) -> TransactionRecord,
    ) -> Result<Stored, Error>;
    /// Approved records not yet acknowledged by the host, oldest first, at
    /// most `limit`, stopping before any damage.
    fn pending(&self, limit: usize) -> Result<Vec<Stored>, Error>;
    /// The host holds every record up to `seq`, the last of which has hash
    /// `hash`: prune them.
    fn ack(&self, seq: u64, hash: [u8; 32]) -> Result<usize, Error>;
    /// Highest seq the host acknowledged.
    fn acked(&self) -> Result<u64, Error>;
    fn last_atc(&self, wallet: &[u8; 32]) -> Result<Option<u32>, Error>;
    fn credential_used(&self, id: &[u8; 16]) -> Result<bool, Error>;
    /// The queue's integrity as of now.
    fn integrity(&self) -> Integrity;
    /// Fail with a clear error unless the queue can approve a tap now: not
    /// damaged, and storage working (after a storage error it tries to
    /// recover first).
    fn ready(&self) -> Result<(), Error>;
    /// The newest `n` approved records, newest first.
    fn recent(&self, n: usize) -> Result<Vec<Stored>, Error>;
    /// The queue's records are in one currency: record it on first use, and
    /// refuse another while records in the old one wait for upload (they
    /// would be shown, counted and limited in the wrong currency).
    fn bind_currency(&self, code: &str) -> Result<(), Error>;
    /// Remember a declined outcome for an idempotency key.
    fn remember_decline(&self, key: &IntentKey, code: &str, message: &str) -> Result<(), Error>;
    /// What the queue remembers for an idempotency key.
    fn recall(&self, key: &str) -> Result<Option<Remembered>, Error>;
    /// The host says it holds `1..=seq`, the last with `hash` (an upload's
    /// answer, or an empty batch's). Prunes what the host holds; a fresh
    /// queue under a certificate the host knows continues the host's chain;
    /// a conflict is damage.
    fn host_head(&self, seq: u64, hash: Option<[u8; 32]>) -> Result<usize, Error>;
}

const ACKED: &[u8] = b"acked";
const CURRENCY: &[u8] = b"currency";

/// sled's trees.
struct Sled {
    db: sled::Db,
    /// sled's data file, for the fdatasync after each flush.
    data: std::fs::File,
    records: sled::Tree,
    meta: sled::Tree,
    atc: sled::Tree,
    credentials: sled::Tree,
    intents: sled::Tree,
    set_aside: sled::Tree,
}

struct Inner {
    sled: Option<Sled>,
    /// `None` when the mark file is unreadable (then the queue is damaged).
    mark: Option<MarkFile>,
    /// The last approved state as this process knows it (the file may be a
    /// step ahead while an append is failing).
    approved: Mark,
    damaged: Vec<Damage>,
    storage_error: Option<String>,
    set_aside: Vec<u64>,
    /// One device flush covers sled's file and the mark ([`flush_both`]).
    shared_flush: bool,
}

/// The sled-backed queue with its high-water mark.
pub struct Queue {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

impl core::fmt::Debug for Queue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn store_err(dir: &Path, what: &str, e: impl core::fmt::Display) -> Error {
    Error::Store {
        detail: format!("{}: {what}: {e}", dir.display()),
    }
}

fn decode_stored(key: &[u8], value: &[u8]) -> Result<Stored, String> {
    let seq = u64::from_be_bytes(
        key.try_into()
            .map_err(|_| format!("key {} is not a seq", hex::encode(key)))?,
    );
    let (sum, bytes) = value
        .split_at_checked(32)
        .ok_or_else(|| format!("seq {seq}: value too short"))?;
    let hash = sha256(&[bytes]);
    if hash.as_slice() != sum {
        return Err(format!("seq {seq}: checksum mismatch"));
    }
    Ok(Stored {
        seq,
        hash,
        bytes: bytes.to_vec(),
    })
}

fn decode_acked(v: &[u8]) -> Option<(u64, Option<[u8; 32]>)> {
    let (seq, hash) = v.split_at_checked(8)?;
    let seq = u64::from_be_bytes(seq.try_into().ok()?);
    match hash.len() {
        0 => Some((seq, None)),
        32 => Some((seq, hash.try_into().ok())),
        _ => None,
    }
}

/// sled leaves `snap.*.generating` files behind when the disk fills while it
/// writes a snapshot; they make the next open fail. They are never complete
/// snapshots, so removing them loses nothing.
fn remove_stale_snapshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::warn!(file = %e.path().display(), "removed a stale sled snapshot")
                }
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "could not remove a stale sled snapshot")
                }
            }
        }
    }
}

/// sled reports a held lock as `ErrorKind::Other` with this message (0.34
/// `Config::open`), not as `WouldBlock`.
fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.to_string().starts_with("could not acquire lock")
}

/// Open sled at `dir`. A handle this process just dropped keeps its file
/// lock until sled's background threads let go of it, a moment later: a
/// held lock is retried for up to a second before it is reported as another
/// process's.
fn open_sled(dir: &Path) -> Result<Sled, Error> {
    remove_stale_snapshots(dir);
    let mut tries = 0;
    let db = loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => break db,
            Err(sled::Error::Io(e)) if is_lock_error(&e) => {
                tries += 1;
                if tries == 50 {
                    return Err(Error::Locked {
                        path: dir.to_path_buf(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(store_err(dir, "open", e)),
        }
    };
    let data_path = dir.join("db");
    let data = std::fs::File::open(&data_path).map_err(|e| store_err(dir, "db", e))?;
    let tree = |name: &str| db.open_tree(name).map_err(|e| store_err(dir, name, e));
    Ok(Sled {
        data,
        records: tree("records")?,
        meta: tree("meta")?,
        atc: tree("atc")?,
        credentials: tree("credentials")?,
        intents: tree("intents")?,
        set_aside: tree("set_aside")?,
        db,
    })
}

impl Sled {
    /// Flush sled's log and make it durable: `flush()` then `fdatasync`.
    fn sync(&self) -> Result<(), String> {
        self.db.flush().map_err(|e| format!("flush: {e}"))?;
        self.data.sync_data().map_err(|e| format!("fdatasync: {e}"))
    }

    fn acked(&self) -> Result<(u64, Option<[u8; 32]>), String> {
        match self.meta.get(ACKED).map_err(|e| e.to_string())? {
            None => Ok((0, None)),
            Some(v) => decode_acked(&v).ok_or_else(|| "acked entry damaged".to_string()),
        }
    }

    fn empty(&self) -> bool {
        self.records.is_empty() && self.meta.get(ACKED).ok().flatten().is_none()
    }
}

/// What a scan of the store against the mark found.
struct Scan {
    damaged: Vec<Damage>,
    /// Records past the mark (never approved).
    beyond: Vec<Stored>,
    /// Records at or below the acknowledged point (an interrupted prune).
    prunable: Vec<sled::IVec>,
}

fn scan(s: &Sled, mark: &Mark) -> Scan {
    let mut out = Scan {
        damaged: Vec::new(),
        beyond: Vec::new(),
        prunable: Vec::new(),
    };
    let (sled_acked, sled_acked_hash) = match s.acked() {
        Ok(a) => a,
        Err(e) => {
            out.damaged.push(Damage {
                from: None,
                to: None,
                reason: e,
            });
            (0, None)
        }
    };
    let (acked, mut prev) = if sled_acked > mark.acked {
        (sled_acked, sled_acked_hash)
    } else {
        (mark.acked, Some(mark.acked_hash))
    };
    if acked > mark.seq {
        out.damaged.push(Damage {
            from: Some(mark.seq + 1),
            to: Some(acked),
            reason: format!(
                "the store says the host holds up to {acked}, beyond the last approved {}",
                mark.seq
            ),
        });
    }
    let mut expect = acked + 1;
    let missing = |from: u64, to: u64, out: &mut Scan| {
        if from <= to {
            out.damaged.push(Damage {
                from: Some(from),
                to: Some(to),
                reason: "approved but missing from the store".into(),
            });
        }
    };
    for kv in s.records.iter() {
        let (k, v) = match kv {
            Ok(kv) => kv,
            Err(e) => {
                out.damaged.push(Damage {
                    from: Some(expect),
                    to: Some(mark.seq),
                    reason: format!("unreadable: {e}"),
                });
                return out;
            }
        };
        let seq = match <[u8; 8]>::try_from(k.as_ref()) {
            Ok(b) => u64::from_be_bytes(b),
            Err(_) => {
                out.damaged.push(Damage {
                    from: None,
                    to: None,
                    reason: format!("a record key is damaged ({})", hex::encode(&k)),
                });
                continue;
            }
        };
        if seq <= acked {
            out.prunable.push(k);
            continue;
        }
        if seq > mark.seq {
            match decode_stored(&k, &v) {
                Ok(st) => out.beyond.push(st),
                Err(_) => out.prunable.push(k),
            }
            continue;
        }
        if seq > expect {
            missing(expect, seq - 1, &mut out);
            prev = None;
        }
        expect = seq + 1;
        match decode_stored(&k, &v) {
            Err(reason) => {
                out.damaged.push(Damage {
                    from: Some(seq),
                    to: Some(seq),
                    reason: reason
                        .trim_start_matches(&format!("seq {seq}: "))
                        .to_string(),
                });
                prev = None;
            }
            Ok(st) => {
                let chained = match TransactionRecord::decode(&st.bytes) {
                    Ok(r) => r.seq == seq && prev.is_none_or(|p| p == r.prev_hash),
                    Err(_) => false,
                };
                if !chained {
                    out.damaged.push(Damage {
                        from: Some(seq),
                        to: Some(seq),
                        reason: "does not chain to the record before it".into(),
                    });
                } else if seq == mark.seq && st.hash != mark.hash {
                    out.damaged.push(Damage {
                        from: Some(seq),
                        to: Some(seq),
                        reason: "differs from the record that was approved".into(),
                    });
                }
                prev = Some(st.hash);
            }
        }
    }
    if expect <= mark.seq {
        missing(expect, mark.seq, &mut out);
    }
    out
}

/// Put the appended record and the mark naming it on the device. Where the
/// mark shares sled's filesystem and that filesystem overwrites in place
/// (ext4, xfs, tmpfs), one device flush serves both: the mark's slot is
/// handed to the device first, then sled's data file is fdatasynced, which
/// flushes the device's cache with both writes in it. Elsewhere the two
/// fdatasyncs are issued at the same time on two threads.
fn flush_both(g: &mut Inner, next: Mark) -> Result<(), String> {
    let Inner {
        sled,
        mark,
        shared_flush,
        ..
    } = g;
    let (Some(s), Some(m)) = (sled.as_ref(), mark.as_mut()) else {
        return Err("store or mark unavailable".into());
    };
    if *shared_flush {
        let staged = m.stage(next).map_err(|e| format!("high-water mark: {e}"))?;
        s.data.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
        m.commit(staged);
        return Ok(());
    }
    let data = &s.data;
    let (synced, written) = std::thread::scope(|scope| {
        let h = scope.spawn(|| data.sync_data());
        let written = m.write(next);
        (h.join(), written)
    });
    match synced {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("fdatasync: {e}")),
        Err(_) => return Err("fdatasync thread panicked".into()),
    }
    written.map_err(|e| format!("high-water mark: {e}"))
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Every update of Inner is a single assignment per field: keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Queue {
    /// Open (or create) the queue at `dir`, check it against its mark, and
    /// report damage through [`Queue::integrity`] rather than failing: a
    /// damaged queue still shows and uploads what it holds.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let mpath = mark_path(dir);
        let existed = dir.join("db").exists();
        let mark = MarkFile::open(&mpath);
        let sled = match open_sled(dir) {
            // Another process holds it: not damage, just busy.
            Err(e @ Error::Locked { .. }) => return Err(e),
            other => other,
        };
        let mut inner = Inner {
            sled: None,
            mark: None,
            approved: Mark::default(),
            damaged: Vec::new(),
            storage_error: None,
            set_aside: Vec::new(),
            shared_flush: false,
        };
        match mark {
            Ok(Some(m)) => {
                inner.approved = m.current();
                inner.mark = Some(m);
            }
            Ok(None) => {
                let fresh = match &sled {
                    Ok(s) => s.empty(),
                    Err(_) => !existed,
                };
                if fresh {
                    let m = MarkFile::create(&mpath, Mark::default())
                        .map_err(|e| store_err(&mpath, "create", e))?;
                    inner.approved = m.current();
                    inner.mark = Some(m);
                } else {
                    inner.damaged.push(Damage {
                        from: None,
                        to: None,
                        reason: format!(
                            "the high-water mark {} is missing: records may have been lost",
                            mpath.display()
                        ),
                    });
                }
            }
            Err(e) => inner.damaged.push(Damage {
                from: None,
                to: None,
                reason: format!("the high-water mark {} is unreadable: {e}", mpath.display()),
            }),
        }
        match sled {
            Ok(s) => {
                inner.shared_flush = inner
                    .mark
                    .as_ref()
                    .is_some_and(|m| m.shares_flush_with(&dir.join("db")));
                inner.sled = Some(s);
            }
            Err(e) => inner.damaged.push(Damage {
                from: (inner.approved.seq > inner.approved.acked)
                    .then_some(inner.approved.acked + 1),
                to: (inner.approved.seq > inner.approved.acked).then_some(inner.approved.seq),
                reason: format!("the store cannot be read: {e}"),
            }),
        }
        let q = Queue {
            dir: dir.to_path_buf(),
            inner: Mutex::new(inner),
        };
        {
            let mut g = lock(&q.inner);
            if g.mark.is_some() && g.sled.is_some() {
                q.reconcile(&mut g)?;
            }
            for d in &g.damaged {
                tracing::error!(queue = %dir.display(), damage = %d, "queue damaged: no approvals until repaired");
            }
        }
        Ok(q)
    }

    /// Check the store against the mark; set aside records past it, and
    /// drop what their appends indexed (a pickup never approved must not
    /// count as collected, an idempotency key must not answer "approved").
    fn reconcile(&self, g: &mut Inner) -> Result<(), Error> {
        let Some(s) = &g.sled else { return Ok(()) };
        let found = scan(s, &g.approved);
        g.damaged.extend(found.damaged);
        let approved = g.approved.seq;
        let mut dropped = 0usize;
        for (k, v) in s.credentials.iter().flatten() {
            let seq = <[u8; 8]>::try_from(v.as_ref()).map(u64::from_be_bytes);
            if seq.is_ok_and(|seq| seq > approved) {
                let _ = s.credentials.remove(k);
                dropped += 1;
            }
        }
        for (k, v) in s.intents.iter().flatten() {
            let seq = serde_json::from_slice::<Remembered>(&v)
                .ok()
                .and_then(|r| match r.outcome {
                    RememberedOutcome::Approved { record } => hex::decode(record)
                        .ok()
                        .and_then(|b| TransactionRecord::decode(&b).ok())
                        .map(|r| r.seq),
                    RememberedOutcome::Declined { .. } => None,
                });
            if seq.is_some_and(|seq| seq > approved) {
                let _ = s.intents.remove(k);
                dropped += 1;
            }
        }
        if dropped > 0 {
            tracing::warn!(queue = %self.dir.display(), dropped, "dropped index entries of appends that never completed");
            s.sync().map_err(|e| store_err(&self.dir, "sync", e))?;
        }
        if found.beyond.is_empty() && found.prunable.is_empty() {
            return Ok(());
        }
        for k in &found.prunable {
            s.records
                .remove(k)
                .map_err(|e| store_err(&self.dir, "prune", e))?;
        }
        for st in &found.beyond {
            let mut key = st.seq.to_be_bytes().to_vec();
            key.extend_from_slice(&st.hash);
            s.set_aside
                .insert(key, st.bytes.as_slice())
                .map_err(|e| store_err(&self.dir, "set aside", e))?;
            s.records
                .remove(st.seq.to_be_bytes())
                .map_err(|e| store_err(&self.dir, "set aside", e))?;
            tracing::warn!(queue = %self.dir.display(), seq = st.seq, "set aside a record whose append never completed (it was never approved)");
            g.set_aside.push(st.seq);
        }
        s.sync().map_err(|e| store_err(&self.dir, "sync", e))
    }

    fn ready_locked(&self, g: &mut Inner) -> Result<(), Error> {
        if !g.damaged.is_empty() {
            let list: Vec<String> = g.damaged.iter().map(ToString::to_string).collect();
            return Err(Error::Damaged {
                path: self.dir.clone(),
                detail: list.join("; "),
            });
        }
        if g.storage_error.is_some() {
            self.recover(g)?;
        }
        Ok(())
    }

    /// After a storage error: put the mark back to the last approved state,
    /// re-open sled (removing stale snapshots) and set aside what the failed
    /// append left. Stays failed, with the new reason, if the disk still
    /// refuses.
    fn recover(&self, g: &mut Inner) -> Result<(), Error> {
        let approved = g.approved;
        // The mark first: while the disk refuses even that, keep the old
        // handle (reads still work) and stay failed.
        if let Some(m) = g.mark.as_mut() {
            if let Err(e) = m.write(approved) {
                let e = store_err(m.path(), "rewrite", e);
                g.storage_error = Some(e.to_string());
                return Err(e);
            }
        }
        g.sled = None;
        match open_sled(&self.dir) {
            Ok(s) => {
                g.sled = Some(s);
                g.storage_error = None;
                self.reconcile(g)?;
                tracing::info!(queue = %self.dir.display(), "storage recovered");
                Ok(())
            }
            Err(e) => {
                g.storage_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Run `f` on sled, or fail if the store is unusable.
    fn with_sled<T>(
        &self,
        g: &Inner,
        f: impl FnOnce(&Sled) -> Result<T, Error>,
    ) -> Result<T, Error> {
        match &g.sled {
            Some(s) => f(s),
            None => Err(Error::Store {
                detail: format!(
                    "{}: {}",
                    self.dir.display(),
                    g.storage_error
                        .clone()
                        .unwrap_or_else(|| "the store cannot be read".into())
                ),
            }),
        }
    }

    /// Every stored approved record, oldest first (stops at damage).
    pub fn all(&self) -> Result<Vec<Stored>, Error> {
        self.pending(usize::MAX)
    }

    fn set_acked(&self, g: &Inner, seq: u64, hash: [u8; 32]) -> Result<(), Error> {
        self.with_sled(g, |s| {
            let mut v = seq.to_be_bytes().to_vec();
            v.extend_from_slice(&hash);
            s.meta
                .insert(ACKED, v)
                .map_err(|e| store_err(&self.dir, "ack", e))?;
            s.sync().map_err(|e| store_err(&self.dir, "sync", e))
        })
    }

    fn write_mark(&self, g: &mut Inner, next: Mark) -> Result<(), Error> {
        let m = g.mark.as_mut().ok_or_else(|| Error::Damaged {
            path: self.dir.clone(),
            detail: "the high-water mark is unreadable".into(),
        })?;
        m.write(next).map_err(|e| store_err(m.path(), "write", e))?;
        g.approved = m.current();
        Ok(())
    }

    /// Rebuild a damaged queue from what the host holds: possible when the
    /// host's head covers every damaged record. The old store is kept aside
    /// as `<queue>.damaged-<unix time>`. Returns what was kept.
    pub fn repair(dir: &Path, host_seq: u64, host_hash: Option<[u8; 32]>) -> Result<String, Error> {
        let q = Queue::open(dir)?;
        let mut g = lock(&q.inner);
        let a = g.approved;
        if g.damaged.is_empty() && g.mark.is_some() {
            return Ok("the queue is intact; nothing to repair".into());
        }
        let last_damaged = g
            .damaged
            .iter()
            .map(|d| d.to.unwrap_or(u64::MAX))
            .max()
            .unwrap_or(0);
        if host_seq < last_damaged || (g.mark.is_none() && host_seq < a.seq) {
            let list: Vec<String> = g.damaged.iter().map(ToString::to_string).collect();
            return Err(Error::Damaged {
                path: dir.to_path_buf(),
                detail: format!(
                    "{}; the host holds only up to {host_seq}, so approved records would be lost: restore the queue directory from a backup that holds them and run `tap-terminal queue verify`",
                    list.join("; ")
                ),
            });
        }
        // Keep the intact records past the host's head, if they chain.
        let mut keep: Vec<Stored> = Vec::new();
        let mut atc: Vec<(sled::IVec, sled::IVec)> = Vec::new();
        let mut creds: Vec<(sled::IVec, sled::IVec)> = Vec::new();
        let mut intents: Vec<(sled::IVec, sled::IVec)> = Vec::new();
        if let Some(s) = &g.sled {
            let mut prev = host_hash;
            for kv in s.records.range((host_seq + 1).to_be_bytes()..) {
                let Ok((k, v)) = kv else { break };
                let Ok(st) = decode_stored(&k, &v) else { break };
                let Ok(r) = st.record() else { break };
                if st.seq != host_seq + 1 + keep.len() as u64
                    || st.seq > a.seq
                    || prev.is_some_and(|p| p != r.prev_hash)
                {
                    break;
                }
                prev = Some(st.hash);
                keep.push(st);
            }
            atc = s.atc.iter().flatten().collect();
            creds = s.credentials.iter().flatten().collect();
            intents = s.intents.iter().flatten().collect();
        }
        let head = keep.last().map_or(host_seq, |s| s.seq);
        if head < a.seq.max(host_seq) && g.mark.is_some() {
            return Err(Error::Damaged {
                path: dir.to_path_buf(),
                detail: format!(
                    "records {}–{} are damaged and the host does not hold them: restore the queue directory from a backup that holds them",
                    head + 1,
                    a.seq
                ),
            });
        }
        let head_hash = keep.last().map(|s| s.hash).or(host_hash).unwrap_or([0; 32]);
        g.sled = None;
        drop(g);
        drop(q);
        let aside = dir.with_file_name(format!(
            "{}.damaged-{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            unix_now()
        ));
        std::fs::rename(dir, &aside).map_err(|e| store_err(dir, "move aside", e))?;
        let mpath = mark_path(dir);
        let s = open_sled(dir)?;
        let put = |t: &sled::Tree, list: &[(sled::IVec, sled::IVec)]| {
            for (k, v) in list {
                t.insert(k, v).map_err(|e| store_err(dir, "rebuild", e))?;
            }
            Ok::<(), Error>(())
        };
        put(&s.atc, &atc)?;
        put(&s.credentials, &creds)?;
        put(&s.intents, &intents)?;
        for st in &keep {
            let mut v = st.hash.to_vec();
            v.extend_from_slice(&st.bytes);
            s.records
                .insert(st.seq.to_be_bytes(), v)
                .map_err(|e| store_err(dir, "rebuild", e))?;
        }
        let mut acked = host_seq.to_be_bytes().to_vec();
        acked.extend_from_slice(&host_hash.unwrap_or([0; 32]));
        s.meta
            .insert(ACKED, acked)
            .map_err(|e| store_err(dir, "rebuild", e))?;
        s.sync().map_err(|e| store_err(dir, "sync", e))?;
        drop(s);
        let _ = std::fs::remove_file(&mpath);
        MarkFile::create(
            &mpath,
            Mark {
                gen: 0,
                seq: head,
                hash: head_hash,
                acked: host_seq,
                acked_hash: host_hash.unwrap_or([0; 32]),
                host_checked: true,
            },
        )
        .map_err(|e| store_err(&mpath, "create", e))?;
        Ok(format!(
            "rebuilt: the host holds 1–{host_seq}, {} record(s) kept after it, next seq {}; the damaged store is kept at {}",
            keep.len(),
            head + 1,
            aside.display()
        ))
    }
}

impl QueueStore for Queue {
    /// The queue's integrity as of now.
    fn integrity(&self) -> Integrity {
        let g = lock(&self.inner);
        Integrity {
            path: self.dir.display().to_string(),
            approved: g.approved.seq,
            acked: g.approved.acked,
            damaged: g.damaged.clone(),
            storage_error: g.storage_error.clone(),
            set_aside: g.set_aside.clone(),
            host_checked: g.approved.host_checked,
        }
    }

    /// Fail with a clear error unless the queue can approve a tap now: not
    /// damaged, and storage working (after a storage error it tries to
    /// recover first).
    fn ready(&self) -> Result<(), Error> {
        let mut g = lock(&self.inner);
        self.ready_locked(&mut g)
    }

    /// The newest `n` approved records, newest first.
    fn recent(&self, n: usize) -> Result<Vec<Stored>, Error> {
        let g = lock(&self.inner);
        let last = g.approved.seq;
        self.with_sled(&g, |s| {
            s.records
                .range(..=last.to_be_bytes())
                .rev()
                .filter_map(|kv| kv.ok().and_then(|(k, v)| decode_stored(&k, &v).ok()))
                .take(n)
                .map(Ok)
                .collect()
        })
    }

    /// The queue's records are in one currency: record it on first use, and
    /// refuse another while records in the old one wait for upload (they
    /// would be shown, counted and limited in the wrong currency).
    fn bind_currency(&self, code: &str) -> Result<(), Error> {
        let waiting = self.pending(usize::MAX)?.len();
        let g = lock(&self.inner);
        let Some(s) = &g.sled else { return Ok(()) };
        let current = s
            .meta
            .get(CURRENCY)
            .map_err(|e| store_err(&self.dir, "currency", e))?;
        match current {
            Some(c) if c.as_ref() == code.as_bytes() => Ok(()),
            Some(c) if waiting > 0 => Err(Error::CurrencyChange {
                path: self.dir.clone(),
                queued: waiting,
                was: String::from_utf8_lossy(&c).into_owned(),
                now: code.into(),
            }),
            _ => {
                s.meta
                    .insert(CURRENCY, code.as_bytes())
                    .map_err(|e| store_err(&self.dir, "currency", e))?;
                s.sync().map_err(|e| store_err(&self.dir, "sync", e))
            }
        }
    }

    /// Remember a declined outcome for an idempotency key.
    fn remember_decline(&self, key: &IntentKey, code: &str, message: &str) -> Result<(), Error> {
        let g = lock(&self.inner);
        let value = Remembered {
            at: unix_now(),
            request: String::from_utf8_lossy(&key.request).into_owned(),
            outcome: RememberedOutcome::Declined {
                code: code.into(),
                message: message.into(),
            },
        };
        self.with_sled(&g, |s| {
            let bytes =
                serde_json::to_vec(&value).map_err(|e| store_err(&self.dir, "intent", e))?;
            s.intents
                .insert(key.key.as_bytes(), bytes)
                .map_err(|e| store_err(&self.dir, "intent", e))?;
            s.sync().map_err(|e| store_err(&self.dir, "sync", e))
        })
    }

    /// What the queue remembers for an idempotency key.
    fn recall(&self, key: &str) -> Result<Option<Remembered>, Error> {
        let g = lock(&self.inner);
        self.with_sled(&g, |s| {
            let Some(v) = s
                .intents
                .get(key.as_bytes())
                .map_err(|e| store_err(&self.dir, "intent", e))?
            else {
                return Ok(None);
            };
            serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    what: "idempotency entry",
                    detail: e.to_string(),
                })
        })
    }

    /// The host says it holds `1..=seq`, the last with `hash` (an upload's
    /// answer, or an empty batch's). Prunes what the host holds; a fresh
    /// queue under a certificate the host knows continues the host's chain;
    /// a conflict is damage.
    fn host_head(&self, seq: u64, hash: Option<[u8; 32]>) -> Result<usize, Error> {
        let mut g = lock(&self.inner);
        let a = g.approved;
        if seq > a.seq {
            if a.seq == a.acked && g.damaged.is_empty() {
                let hash = hash.ok_or_else(|| Error::Upload {
                    detail: format!("host reported head {seq} without its hash"),
                })?;
                // Nothing pending here: continue the host's chain.
                let next = Mark {
                    seq,
                    hash,
                    acked: seq,
                    acked_hash: hash,
                    host_checked: true,
                    ..a
                };
                self.set_acked(&g, seq, hash)?;
                self.write_mark(&mut g, next)?;
                tracing::warn!(queue = %self.dir.display(), seq, "the host already holds records of this terminal: continuing its chain");
                return Ok(0);
            }
            g.damaged.push(Damage {
                from: Some(a.acked + 1),
                to: Some(a.seq),
                reason: format!(
                    "the host holds this terminal's records up to {seq}, beyond this queue's {}: these records were made on a stale chain (an older copy of the queue?)",
                    a.seq
                ),
            });
            return Err(Error::Damaged {
                path: self.dir.clone(),
                detail: g
                    .damaged
                    .last()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            });
        }
        drop(g);
        let pruned = match hash {
            Some(h) if seq > 0 => self.ack(seq, h)?,
            _ => 0,
        };
        let mut g = lock(&self.inner);
        if !g.approved.host_checked {
            let next = Mark {
                host_checked: true,
                ..g.approved
            };
            self.write_mark(&mut g, next)?;
        }
        Ok(pruned)
    }

    fn head(&self) -> Result<(u64, [u8; 32]), Error> {
        let g = lock(&self.inner);
        Ok((g.approved.seq, g.approved.hash))
    }

    fn append(
        &self,
        facts: RecordFacts,
        build: &mut dyn FnMut(u64, [u8; 32]) -> TransactionRecord,
    ) -> Result<Stored, Error> {
        let mut g = lock(&self.inner);
        self.ready_locked(&mut g)?;
        let a = g.approved;
        let seq = a.seq.checked_add(1).ok_or(Error::Store {
            detail: "sequence numbers exhausted".into(),
        })?;
        let record = build(seq, a.hash);
        if record.seq != seq || record.prev_hash != a.hash {
            return Err(Error::Store {
                detail: "record built for another position".into(),
            });
        }
        let bytes = record.to_bytes();
        let hash = sha256(&[&bytes]);
        let mut value = Vec::with_capacity(32 + bytes.len());
        value.extend_from_slice(&hash);
        value.extend_from_slice(&bytes);
        let intent = facts.intent.as_ref().map(|k| {
            let r = Remembered {
                at: unix_now(),
                request: String::from_utf8_lossy(&k.request).into_owned(),
                outcome: RememberedOutcome::Approved {
                    record: hex::encode(&bytes),
                },
            };
            (k.key.clone(), serde_json::to_vec(&r).unwrap_or_default())
        });
        let stored = self.with_sled(&g, |s| {
            Ok((|| {
                // No sled transaction: the mark is the commit record. The
                // record goes first; whatever of this append reaches the
                // disk without the mark is set aside (with its index
                // entries) at the next open or recovery.
                let e = |e: sled::Error| e.to_string();
                s.records
                    .insert(seq.to_be_bytes(), value.as_slice())
                    .map_err(e)?;
                s.atc
                    .insert(facts.wallet, &facts.atc.to_be_bytes())
                    .map_err(e)?;
                if let Some(c) = facts.credential {
                    s.credentials.insert(c, &seq.to_be_bytes()).map_err(e)?;
                }
                if let Some((k, v)) = &intent {
                    s.intents.insert(k.as_bytes(), v.as_slice()).map_err(e)?;
                }
                s.db.flush().map_err(|e| format!("flush: {e}"))?;
                Ok::<_, String>(())
            })())
        });
        let failed = |g: &mut Inner, why: String| {
            let e = store_err(&self.dir, "append", &why);
            tracing::error!(queue = %self.dir.display(), seq, error = %why, "could not store a record: declining taps until storage recovers");
            g.storage_error = Some(why);
            e
        };
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(failed(&mut g, why)),
            Err(e) => return Err(e),
        }
        let next = Mark { seq, hash, ..a };
        if let Err(why) = flush_both(&mut g, next) {
            return Err(failed(&mut g, why));
        }
        // The mark's own copy carries the generation just written.
        g.approved = g.mark.as_ref().map_or(next, MarkFile::current);
        Ok(Stored { seq, hash, bytes })
    }

    fn pending(&self, limit: usize) -> Result<Vec<Stored>, Error> {
        let g = lock(&self.inner);
        let a = g.approved;
        // Never past the mark, never past damage.
        let stop = g
            .damaged
            .iter()
            .filter_map(|d| d.from)
            .min()
            .map_or(a.seq, |d| d.saturating_sub(1).min(a.seq));
        let whole_store_damaged = g.damaged.iter().any(|d| d.from.is_none());
        if whole_store_damaged || (g.sled.is_none() && !g.damaged.is_empty()) {
            return Ok(Vec::new());
        }
        self.with_sled(&g, |s| {
            let (sled_acked, _) = s.acked().map_err(|e| store_err(&self.dir, "acked", e))?;
            let start = a.acked.max(sled_acked).saturating_add(1);
            if start > stop {
                return Ok(Vec::new());
            }
            s.records
                .range(start.to_be_bytes()..=stop.to_be_bytes())
                .take(limit)
                .map(|kv| {
                    let (k, v) = kv.map_err(|e| store_err(&self.dir, "read", e))?;
                    decode_stored(&k, &v).map_err(|detail| Error::Corrupt {
                        what: "record",
                        detail,
                    })
                })
                .collect()
        })
    }

    fn ack(&self, seq: u64, hash: [u8; 32]) -> Result<usize, Error> {
        let mut g = lock(&self.inner);
        let a = g.approved;
        if seq <= a.acked {
            return Ok(0);
        }
        if seq > a.seq {
            return Err(Error::Store {
                detail: format!("host acknowledged seq {seq}, which this terminal does not hold"),
            });
        }
        let pruned = self.with_sled(&g, |s| {
            let Some(v) = s
                .records
                .get(seq.to_be_bytes())
                .map_err(|e| store_err(&self.dir, "read", e))?
            else {
                return Err(Error::Store {
                    detail: format!(
                        "host acknowledged seq {seq}, which this terminal does not hold"
                    ),
                });
            };
            let st = decode_stored(&seq.to_be_bytes(), &v).map_err(|detail| Error::Corrupt {
                what: "record",
                detail,
            })?;
            if st.hash != hash {
                return Err(Error::Store {
                    detail: format!("host's hash for seq {seq} differs from ours"),
                });
            }
            // Record the acknowledgement first: a crash before the pruning
            // only leaves records the next open prunes.
            let mut v = seq.to_be_bytes().to_vec();
            v.extend_from_slice(&hash);
            s.meta
                .insert(ACKED, v)
                .map_err(|e| store_err(&self.dir, "ack", e))?;
            s.sync().map_err(|e| store_err(&self.dir, "sync", e))?;
            let mut pruned = 0;
            for kv in s.records.range(..=seq.to_be_bytes()) {
                let (k, _) = kv.map_err(|e| store_err(&self.dir, "prune", e))?;
                s.records
                    .remove(k)
                    .map_err(|e| store_err(&self.dir, "prune", e))?;
                pruned += 1;
            }
            let horizon = unix_now().saturating_sub(INTENT_MEMORY_SECS);
            for (k, v) in s.intents.iter().flatten() {
                let old = serde_json::from_slice::<Remembered>(&v).map_or(true, |r| r.at < horizon);
                if old {
                    let _ = s.intents.remove(k);
                }
            }
            s.sync().map_err(|e| store_err(&self.dir, "sync", e))?;
            Ok(pruned)
        })?;
        let next = Mark {
            acked: seq,
            acked_hash: hash,
            host_checked: true,
            ..a
        };
        self.write_mark(&mut g, next)?;
        Ok(pruned)
    }

    fn acked(&self) -> Result<u64, Error> {
        Ok(lock(&self.inner).approved.acked)
    }

    fn last_atc(&self, wallet: &[u8; 32]) -> Result<Option<u32>, Error> {
        let g = lock(&self.inner);
        self.with_sled(&g, |s| {
            s.atc
                .get(wallet)
                .map_err(|e| store_err(&self.dir, "atc", e))?
                .map(|v| {
                    v.as_ref()
                        .try_into()
                        .map(u32::from_be_bytes)
                        .map_err(|_| Error::Corrupt {
                            what: "atc",
                            detail: hex::encode(&v),
                        })
                })
                .transpose()
        })
    }

    fn credential_used(&self, id: &[u8; 16]) -> Result<bool, Error> {
        let g = lock(&self.inner);
        self.with_sled(&g, |s| {
            s.credentials
                .contains_key(id)
                .map_err(|e| store_err(&self.dir, "credentials", e))
        })
    }
}
