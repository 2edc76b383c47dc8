//! The default [`Store`]: sled 0.34, one directory.
//!
//! Trees (keys big-endian so iteration is in chain order):
//!
//! ```text
//! (terminal(32): the chain key, `ingest::chain_key`: acquirer name + terminal ID, or
//! the certificate hash for a certificate without an ID)
//! records      terminal(32) ‖ seq(8)  → 01 ‖ hash(32) ‖ meta_len(4) ‖ meta JSON ‖ record bytes
//! heads        terminal(32)           → seq(8) ‖ hash(32)
//! taps         th1(32)                → terminal(32) ‖ seq(8)        (accepted records)
//! wallet_atc   wallet key(32) ‖ atc(4) → terminal(32) ‖ seq(8)       (accepted records)
//! wallet_high  wallet key(32)         → atc(4)   highest accepted ATC
//! credentials  credential id(16)      → [terminal(32) ‖ seq(8)]*   (accepted records)
//! ```
//!
//! Durability: sled's `flush` writes its log with `pwrite` and
//! `sync_file_range`, which does not reach the device cache, and its
//! background thread `fsync`s only every 500 ms. [`SledStore::sync`] is a
//! group commit: one leader runs `flush`, then `fdatasync`s any new blob
//! file and the log file `db`; concurrent callers share that one device
//! sync, and each returns only after a sync that *started* after its own
//! writes has completed. [`SledStore::sync_counts`] tells how many device
//! syncs started and completed (tests check acknowledgements against it).

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::{AtcPolicy, ChainHead, Disposition, Meta, RecordRef, Store, StoredRecord};
use crate::wire::{Flag, Reason};
use crate::Error;

const VALUE_FORMAT: u8 = 1;
const REF_LEN: usize = 40;

/// sled-backed [`Store`].
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    records: sled::Tree,
    heads: sled::Tree,
    taps: sled::Tree,
    wallet_atc: sled::Tree,
    wallet_high: sled::Tree,
    credentials: sled::Tree,
    flusher: GroupFlush,
    device: DeviceSync,
}

fn record_key(terminal: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(terminal);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn encode_value(r: &StoredRecord) -> Vec<u8> {
    let meta = Meta::json(r);
    let mut v = Vec::with_capacity(37 + meta.len() + r.bytes.len());
    v.push(VALUE_FORMAT);
    v.extend_from_slice(&r.hash);
    v.extend_from_slice(&u32::try_from(meta.len()).unwrap_or(u32::MAX).to_be_bytes());
    v.extend_from_slice(&meta);
    v.extend_from_slice(&r.bytes);
    v
}

fn corrupt(what: &'static str) -> Error {
    Error::Corrupt { what }
}

fn value_hash(v: &[u8]) -> Result<[u8; 32], Error> {
    match v {
        [VALUE_FORMAT, rest @ ..] if rest.len() >= 36 => {
            rest[..32].try_into().map_err(|_| corrupt("record value"))
        }
        _ => Err(corrupt("record value")),
    }
}

fn decode_value(key: &[u8], v: &[u8]) -> Result<StoredRecord, Error> {
    let terminal: [u8; 32] = key
        .get(..32)
        .and_then(|k| k.try_into().ok())
        .ok_or(corrupt("record key"))?;
    let seq = key
        .get(32..40)
        .and_then(|k| k.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(corrupt("record key"))?;
    let hash = value_hash(v)?;
    let len = v
        .get(33..37)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(corrupt("record value"))?;
    let end = 37usize
        .checked_add(len as usize)
        .ok_or(corrupt("record value"))?;
    let meta = Meta::parse(v.get(37..end).ok_or(corrupt("record value"))?)?;
    let bytes = v.get(end..).unwrap_or_default().to_vec();
    Ok(meta.record(terminal, seq, hash, bytes))
}

fn encode_head(h: &ChainHead) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..8].copy_from_slice(&h.seq.to_be_bytes());
    v[8..].copy_from_slice(&h.hash);
    v
}

fn decode_head(v: &[u8]) -> Result<ChainHead, Error> {
    if v.len() != 40 {
        return Err(corrupt("chain head"));
    }
    let seq = v[..8]
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("chain head"))?;
    let hash = v[8..].try_into().map_err(|_| corrupt("chain head"))?;
    Ok(ChainHead { seq, hash })
}

fn decode_refs(v: Option<&[u8]>) -> Result<Vec<RecordRef>, Error> {
    let Some(v) = v else { return Ok(Vec::new()) };
    if v.len() % REF_LEN != 0 {
        return Err(corrupt("index entry"));
    }
    Ok(v.chunks_exact(REF_LEN)
        .map(|c| {
            let mut terminal = [0u8; 32];
            terminal.copy_from_slice(&c[..32]);
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&c[32..]);
            RecordRef {
                terminal,
                seq: u64::from_be_bytes(seq),
            }
        })
        .collect())
}

fn push_ref(v: Option<&[u8]>, r: &RecordRef) -> Vec<u8> {
    let mut out = v.map(<[u8]>::to_vec).unwrap_or_default();
    out.extend_from_slice(&record_key(&r.terminal, r.seq));
    out
}

#[derive(Debug)]
enum Abort {
    HeadMoved,
    Corrupt(&'static str),
}

impl SledStore {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(Error::store("open"))?;
        let tree = |name: &str| db.open_tree(name).map_err(Error::store("open tree"));
        let device = DeviceSync::open(dir)?;
        Ok(SledStore {
            records: tree("records")?,
            heads: tree("heads")?,
            taps: tree("taps")?,
            wallet_atc: tree("wallet_atc")?,
            wallet_high: tree("wallet_high")?,
            credentials: tree("credentials")?,
            db,
            flusher: GroupFlush::default(),
            device,
        })
    }

    /// Device syncs (fdatasync of the log) started and completed so far.
    pub fn sync_counts(&self) -> SyncCounts {
        self.flusher.counts()
    }

    fn refs(tree: &sled::Tree, key: &[u8]) -> Result<Vec<RecordRef>, Error> {
        let v = tree.get(key).map_err(Error::store("read index"))?;
        decode_refs(v.as_deref())
    }
}

/// The flag a collision in each index earns.
fn index_key_wallet(wallet: &[u8; 32], atc: u32) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(wallet);
    k[32..].copy_from_slice(&atc.to_be_bytes());
    k
}

impl Store for SledStore {
    fn head(&self, terminal: &[u8; 32]) -> Result<Option<ChainHead>, Error> {
        self.heads
            .get(terminal)
            .map_err(Error::store("read head"))?
            .map(|v| decode_head(&v))
            .transpose()
    }

    fn record_hash(&self, terminal: &[u8; 32], seq: u64) -> Result<Option<[u8; 32]>, Error> {
        let v = self
            .records
            .get(record_key(terminal, seq))
            .map_err(Error::store("read record"))?;
        v.map(|v| value_hash(&v)).transpose()
    }

    fn record(&self, terminal: &[u8; 32], seq: u64) -> Result<Option<StoredRecord>, Error> {
        let key = record_key(terminal, seq);
        let v = self.records.get(key).map_err(Error::store("read record"))?;
        v.map(|v| decode_value(&key, &v)).transpose()
    }

    fn append(
        &self,
        terminal: &[u8; 32],
        expected: Option<ChainHead>,
        records: &mut [StoredRecord],
        policy: &AtcPolicy,
    ) -> Result<(), Error> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        super::check_continues(terminal, expected, records)?;
        let base = expected.map_or(0, |h| h.seq);
        let new_head = ChainHead {
            seq: last.seq,
            hash: last.hash,
        };
        let batch: &[StoredRecord] = records;
        let trees = (
            &self.records,
            &self.heads,
            &self.taps,
            &self.wallet_atc,
            &self.wallet_high,
            &self.credentials,
        );
        let result = trees.transaction(|(rt, ht, tt, wt, hit, ct)| {
            let abort = |a| ConflictableTransactionError::Abort(a);
            let current = match ht.get(terminal)? {
                Some(v) => Some(decode_head(&v).map_err(|_| abort(Abort::Corrupt("chain head")))?),
                None => None,
            };
            if current != expected {
                return Err(abort(Abort::HeadMoved));
            }
            // Work on copies: sled may run this closure more than once.
            let mut out: Vec<StoredRecord> = batch.to_vec();
            let mut earlier: Vec<RecordRef> = Vec::new();
            for i in 0..out.len() {
                let me = out[i].reference();
                // One tap, one settlement: decided here, in the transaction
                // that appends, against every settled record.
                if let Some((reason, detail)) = settle_check(&out[i], tt, wt, hit, policy)? {
                    out[i].disposition = Disposition::Declined(reason);
                    out[i].detail = Some(detail);
                }
                if out[i].disposition != Disposition::Accepted {
                    continue;
                }
                if let Some(th1) = out[i].th1() {
                    tt.insert(&th1[..], &record_key(&me.terminal, me.seq)[..])?;
                }
                if let Some((w, atc)) = out[i].wallet_atc() {
                    wt.insert(
                        &index_key_wallet(&w, atc)[..],
                        &record_key(&me.terminal, me.seq)[..],
                    )?;
                    let high = read_atc(hit.get(w)?.as_deref())
                        .map_err(|_| abort(Abort::Corrupt("wallet ATC")))?;
                    if high.is_none_or(|h| atc > h) {
                        hit.insert(&w[..], &atc.to_be_bytes()[..])?;
                    }
                }
                if let Some(id) = out[i].credential_id() {
                    let old = ct.get(id)?;
                    let others = decode_refs(old.as_deref())
                        .map_err(|_| abort(Abort::Corrupt("index entry")))?;
                    earlier.extend(super::flag_credential_reuse(
                        &mut out, i, &others, terminal, base,
                    ));
                    ct.insert(&id[..], push_ref(old.as_deref(), &me))?;
                }
            }
            for o in earlier {
                let key = record_key(&o.terminal, o.seq);
                let Some(v) = rt.get(key)? else {
                    return Err(abort(Abort::Corrupt("index points at no record")));
                };
                let mut rec =
                    decode_value(&key, &v).map_err(|_| abort(Abort::Corrupt("record value")))?;
                rec.add_flag(Flag::CredentialReused);
                rt.insert(&key[..], encode_value(&rec))?;
            }
            for r in &out {
                rt.insert(&record_key(terminal, r.seq)[..], encode_value(r))?;
            }
            ht.insert(&terminal[..], &encode_head(&new_head)[..])?;
            Ok(out)
        });
        match result {
            Ok(out) => {
                for (r, o) in records.iter_mut().zip(out) {
                    *r = o;
                }
                Ok(())
            }
            Err(TransactionError::Abort(Abort::HeadMoved)) => Err(Error::HeadMoved),
            Err(TransactionError::Abort(Abort::Corrupt(what))) => Err(Error::Corrupt { what }),
            Err(TransactionError::Storage(e)) => Err(Error::Store {
                op: "append",
                source: e,
            }),
        }
    }

    fn sync(&self) -> Result<(), Error> {
        self.flusher.flush(|| {
            self.db.flush().map_err(Error::store("flush"))?;
            self.device.sync()
        })
    }

    fn records(&self) -> Result<Vec<StoredRecord>, Error> {
        self.records
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(Error::store("scan records"))?;
                decode_value(&k, &v)
            })
            .collect()
    }

    fn wallet_uses(&self, wallet: &[u8; 32], atc: u32) -> Result<Vec<RecordRef>, Error> {
        Self::refs(&self.wallet_atc, &index_key_wallet(wallet, atc))
    }

    fn tap(&self, th1: &[u8; 32]) -> Result<Option<RecordRef>, Error> {
        Ok(Self::refs(&self.taps, th1)?.into_iter().next())
    }

    fn highest_atc(&self, wallet: &[u8; 32]) -> Result<Option<u32>, Error> {
        let v = self
            .wallet_high
            .get(wallet)
            .map_err(Error::store("read index"))?;
        read_atc(v.as_deref())
    }

    fn credential_uses(&self, id: &[u8; 16]) -> Result<Vec<RecordRef>, Error> {
        Self::refs(&self.credentials, id)
    }
}

fn read_atc(v: Option<&[u8]>) -> Result<Option<u32>, Error> {
    v.map(|v| {
        <[u8; 4]>::try_from(v)
            .map(u32::from_be_bytes)
            .map_err(|_| corrupt("wallet ATC"))
    })
    .transpose()
}

type TxResult<T> = Result<T, ConflictableTransactionError<Abort>>;

/// [`super::settle_verdict`] with the lookups in sled's trees.
fn settle_check(
    r: &StoredRecord,
    taps: &sled::transaction::TransactionalTree,
    wallet_atc: &sled::transaction::TransactionalTree,
    wallet_high: &sled::transaction::TransactionalTree,
    policy: &AtcPolicy,
) -> TxResult<Option<(Reason, String)>> {
    let abort = |w| ConflictableTransactionError::Abort(Abort::Corrupt(w));
    if r.disposition != Disposition::Accepted {
        return Ok(None);
    }
    let same_tap = match r.th1() {
        Some(th1) => decode_refs(taps.get(th1)?.as_deref())
            .map_err(|_| abort("index entry"))?
            .first()
            .copied(),
        None => None,
    };
    let (same_atc, high) = match r.wallet_atc() {
        Some((w, atc)) => (
            decode_refs(wallet_atc.get(index_key_wallet(&w, atc))?.as_deref())
                .map_err(|_| abort("index entry"))?
                .first()
                .copied(),
            read_atc(wallet_high.get(w)?.as_deref()).map_err(|_| abort("wallet ATC"))?,
        ),
        None => (None, None),
    };
    Ok(super::settle_verdict(r, same_tap, same_atc, high, policy))
}

/// Device syncs started and completed by a [`SledStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounts {
    pub started: u64,
    pub completed: u64,
}

/// `fdatasync` of sled's files: the log `db` and every blob file (values
/// too large for the log; sled never syncs those itself).
#[derive(Debug)]
struct DeviceSync {
    dir: PathBuf,
    log: File,
    blobs_synced: Mutex<HashSet<std::ffi::OsString>>,
}

impl DeviceSync {
    fn open(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("db");
        let log = File::open(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        // The directory entries of a new store must be durable too.
        let d = File::open(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        d.sync_all().map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(DeviceSync {
            dir: dir.to_owned(),
            log,
            blobs_synced: Mutex::new(HashSet::new()),
        })
    }

    fn sync(&self) -> Result<(), Error> {
        let io = |path: PathBuf| move |source| Error::Io { path, source };
        let blobs = self.dir.join("blobs");
        let mut synced = self
            .blobs_synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut new_blob = false;
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            let names: HashSet<_> = entries
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect();
            for name in &names {
                if !synced.contains(name) {
                    let path = blobs.join(name);
                    // A blob sled removed meanwhile needs no sync.
                    if let Ok(f) = File::open(&path) {
                        f.sync_data().map_err(io(path))?;
                    }
                    new_blob = true;
                }
            }
            // Forget blobs sled garbage-collected.
            *synced = names;
        }
        if new_blob {
            File::open(&blobs)
                .and_then(|d| d.sync_all())
                .map_err(io(blobs.clone()))?;
        }
        self.log.sync_data().map_err(io(self.dir.join("db")))
    }
}

/// Group commit: one device sync shared by concurrent callers.
#[derive(Debug, Default)]
struct GroupFlush {
    state: Mutex<FlushState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct FlushState {
    /// Tickets handed out (one per `flush` call, taken after its writes).
    requested: u64,
    /// Every ticket up to this one is durable.
    completed: u64,
    /// A sync is running.
    running: bool,
    counts: SyncCounts,
}

impl GroupFlush {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn counts(&self) -> SyncCounts {
        self.lock().counts
    }

    /// Return once a run of `sync` that started after this call has
    /// succeeded (leading one if none is running).
    fn flush(&self, sync: impl Fn() -> Result<(), Error>) -> Result<(), Error> {
        let mut s = self.lock();
        s.requested += 1;
        let ticket = s.requested;
        loop {
            if s.completed >= ticket {
                return Ok(());
            }
            if !s.running {
                // Lead a sync covering every ticket handed out so far: all
                // their writes happened before this point.
                s.running = true;
                s.counts.started += 1;
                let target = s.requested;
                drop(s);
                let result = sync();
                s = self.lock();
                s.running = false;
                if result.is_ok() {
                    s.completed = s.completed.max(target);
                    s.counts.completed += 1;
                }
                self.done.notify_all();
                result?;
                continue;
            }
            s = self
                .done
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}
