//! The default [`Store`]: sled 0.34, one directory.
//!
//! Trees (keys big-endian so iteration is in chain order):
//!
//! ```text
//! records      terminal(32) ‖ seq(8)  → 01 ‖ hash(32) ‖ meta_len(4) ‖ meta JSON ‖ record bytes
//! heads        terminal(32)           → seq(8) ‖ hash(32)
//! wallet_atc   wallet(32) ‖ atc(4)    → [terminal(32) ‖ seq(8)]*   (accepted records)
//! credentials  credential id(16)      → [terminal(32) ‖ seq(8)]*   (accepted records)
//! ```
//!
//! sled makes writes durable only on `flush` (or its 500 ms background
//! flush); [`SledStore::sync`] is a group commit: concurrent callers share
//! one `flush`, and each returns only after a flush that *started* after its
//! own writes has completed.

use std::path::Path;
use std::sync::{Condvar, Mutex};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::{ChainHead, Disposition, RecordRef, RecordSummary, Store, StoredRecord};
use crate::wire::Flag;
use crate::Error;

const VALUE_FORMAT: u8 = 1;
const REF_LEN: usize = 40;

/// sled-backed [`Store`].
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    records: sled::Tree,
    heads: sled::Tree,
    wallet_atc: sled::Tree,
    credentials: sled::Tree,
    flusher: GroupFlush,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    received_at: u64,
    disposition: Disposition,
    flags: Vec<Flag>,
    summary: RecordSummary,
}

fn record_key(terminal: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(terminal);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn encode_value(r: &StoredRecord) -> Vec<u8> {
    let meta = Meta {
        received_at: r.received_at,
        disposition: r.disposition,
        flags: r.flags.clone(),
        summary: r.summary.clone(),
    };
    let meta = serde_json::to_vec(&meta).unwrap_or_default();
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
    let meta: Meta = serde_json::from_slice(v.get(37..end).ok_or(corrupt("record value"))?)
        .map_err(|_| corrupt("record metadata"))?;
    let bytes = v.get(end..).unwrap_or_default().to_vec();
    Ok(StoredRecord {
        terminal,
        seq,
        hash,
        received_at: meta.received_at,
        disposition: meta.disposition,
        flags: meta.flags,
        summary: meta.summary,
        bytes,
    })
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
        Ok(SledStore {
            records: tree("records")?,
            heads: tree("heads")?,
            wallet_atc: tree("wallet_atc")?,
            credentials: tree("credentials")?,
            db,
            flusher: GroupFlush::default(),
        })
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
    ) -> Result<(), Error> {
        let Some(last) = records.last() else {
            return Ok(());
        };
        let base = expected.map_or(0, |h| h.seq);
        for (i, r) in records.iter().enumerate() {
            if &r.terminal != terminal || Some(r.seq) != base.checked_add(i as u64 + 1) {
                return Err(Error::Invalid {
                    field: "append",
                    reason: "records must continue the terminal's chain",
                });
            }
        }
        let new_head = ChainHead {
            seq: last.seq,
            hash: last.hash,
        };
        let batch: &[StoredRecord] = records;
        let result = (
            &self.records,
            &self.heads,
            &self.wallet_atc,
            &self.credentials,
        )
            .transaction(|(rt, ht, wt, ct)| {
                let abort = |a| ConflictableTransactionError::Abort(a);
                let current = match ht.get(terminal)? {
                    Some(v) => {
                        Some(decode_head(&v).map_err(|_| abort(Abort::Corrupt("chain head")))?)
                    }
                    None => None,
                };
                if current != expected {
                    return Err(abort(Abort::HeadMoved));
                }
                let mut flags: Vec<Vec<Flag>> = batch.iter().map(|r| r.flags.clone()).collect();
                let mut earlier: Vec<(RecordRef, Flag)> = Vec::new();
                for (i, r) in batch.iter().enumerate() {
                    let me = r.reference();
                    let indexed: [(Option<Vec<u8>>, Flag, &sled::transaction::TransactionalTree);
                        2] = [
                        (
                            r.wallet_atc()
                                .map(|(w, a)| index_key_wallet(&w, a).to_vec()),
                            Flag::CloneSuspected,
                            wt,
                        ),
                        (
                            r.credential_id().map(|id| id.to_vec()),
                            Flag::CredentialReused,
                            ct,
                        ),
                    ];
                    for (key, flag, tree) in indexed {
                        let Some(key) = key else { continue };
                        let old = tree.get(&key)?;
                        let others = decode_refs(old.as_deref())
                            .map_err(|_| abort(Abort::Corrupt("index entry")))?;
                        if !others.is_empty() {
                            add(&mut flags[i], flag);
                            for o in others {
                                if &o.terminal == terminal && o.seq > base {
                                    // An earlier record of this same append.
                                    if let Some(f) = usize::try_from(o.seq - base - 1)
                                        .ok()
                                        .and_then(|j| flags.get_mut(j))
                                    {
                                        add(f, flag);
                                    }
                                } else {
                                    earlier.push((o, flag));
                                }
                            }
                        }
                        tree.insert(key, push_ref(old.as_deref(), &me))?;
                    }
                }
                for (o, flag) in earlier {
                    let key = record_key(&o.terminal, o.seq);
                    let Some(v) = rt.get(key)? else {
                        return Err(abort(Abort::Corrupt("index points at no record")));
                    };
                    let mut rec = decode_value(&key, &v)
                        .map_err(|_| abort(Abort::Corrupt("record value")))?;
                    rec.add_flag(flag);
                    rt.insert(&key[..], encode_value(&rec))?;
                }
                for (r, f) in batch.iter().zip(&flags) {
                    let mut r = r.clone();
                    r.flags = f.clone();
                    rt.insert(&record_key(terminal, r.seq)[..], encode_value(&r))?;
                }
                ht.insert(&terminal[..], &encode_head(&new_head)[..])?;
                Ok(flags)
            });
        match result {
            Ok(flags) => {
                for (r, f) in records.iter_mut().zip(flags) {
                    r.flags = f;
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
        self.flusher.flush(&self.db)
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

    fn credential_uses(&self, id: &[u8; 16]) -> Result<Vec<RecordRef>, Error> {
        Self::refs(&self.credentials, id)
    }
}

fn add(flags: &mut Vec<Flag>, flag: Flag) {
    if !flags.contains(&flag) {
        flags.push(flag);
        flags.sort();
    }
}

/// Group commit over `sled::Db::flush`.
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
    /// A flush is running.
    running: bool,
}

impl GroupFlush {
    fn flush(&self, db: &sled::Db) -> Result<(), Error> {
        fn lock(m: &Mutex<FlushState>) -> std::sync::MutexGuard<'_, FlushState> {
            m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }
        let mut s = lock(&self.state);
        s.requested += 1;
        let ticket = s.requested;
        loop {
            if s.completed >= ticket {
                return Ok(());
            }
            if !s.running {
                // Lead a flush covering every ticket handed out so far: all
                // their writes happened before this point.
                s.running = true;
                let target = s.requested;
                drop(s);
                let result = db.flush().map(|_| ()).map_err(Error::store("flush"));
                s = lock(&self.state);
                s.running = false;
                if result.is_ok() {
                    s.completed = s.completed.max(target);
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
