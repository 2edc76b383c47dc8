//! The durable queue of transaction records (sled).
//!
//! * A record's sequence number is taken from the durable chain head in the
//!   same sled transaction that stores the record, and the tap is approved
//!   only after [`Queue::append`] has flushed it to disk — sled's `flush()`
//!   writes its log with `sync_file_range`, which survives a crash of the
//!   process but not a power cut, so the queue also `fdatasync`s sled's data
//!   file before it returns: numbers never
//!   repeat (a crash before the flush leaves no record and no number used)
//!   and never skip (the host refuses gaps).
//! * Each stored value is `SHA-256(record) ‖ record`: the checksum is
//!   verified on every read, and is the record id and the next record's
//!   `prev_hash`.
//! * Records leave only when the host acknowledged them ([`Queue::ack`]).
//! * The last ATC seen per wallet and the pickup credentials used on this
//!   terminal are kept in the same transaction, for replay checks that
//!   survive restarts and pruning.
//!
//! [`QueueStore`] is the small trait the rest of the terminal uses, so the
//! crash tests and a future backend can stand in.

use std::path::Path;
use std::sync::Mutex;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tapstack_protocol::codec::Codec;
use tapstack_protocol::crypto::sha256;
use tapstack_protocol::record::TransactionRecord;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordFacts {
    pub wallet: [u8; 32],
    pub atc: u32,
    pub credential: Option<[u8; 16]>,
}

/// The queue as the terminal uses it.
pub trait QueueStore: Send + Sync {
    /// `(seq, hash)` of the newest record ever appended; `(0, zeros)` for none.
    fn head(&self) -> Result<(u64, [u8; 32]), Error>;
    /// Build the next record with `build(seq, prev_hash)`, store it and flush
    /// to disk. Returns only once the record is durable.
    fn append(
        &self,
        facts: RecordFacts,
        build: &mut dyn FnMut(u64, [u8; 32]) -> TransactionRecord,
    ) -> Result<Stored, Error>;
    /// Records not yet acknowledged by the host, oldest first, at most `limit`.
    fn pending(&self, limit: usize) -> Result<Vec<Stored>, Error>;
    /// The host holds every record up to `seq`, the last of which has hash
    /// `hash`: prune them.
    fn ack(&self, seq: u64, hash: [u8; 32]) -> Result<usize, Error>;
    /// Highest seq the host acknowledged.
    fn acked(&self) -> Result<u64, Error>;
    fn last_atc(&self, wallet: &[u8; 32]) -> Result<Option<u32>, Error>;
    fn credential_used(&self, id: &[u8; 16]) -> Result<bool, Error>;
}

const HEAD: &[u8] = b"head";
const ACKED: &[u8] = b"acked";

/// The sled-backed queue.
pub struct Queue {
    db: sled::Db,
    /// sled's data file, for the fdatasync after each flush.
    data: std::fs::File,
    records: sled::Tree,
    meta: sled::Tree,
    atc: sled::Tree,
    credentials: sled::Tree,
    writer: Mutex<()>,
}

impl core::fmt::Debug for Queue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Queue")
            .field("records", &self.records.len())
            .finish_non_exhaustive()
    }
}

fn db_err(e: sled::Error) -> Error {
    Error::Store {
        detail: e.to_string(),
    }
}

fn decode_head(v: &[u8]) -> Result<(u64, [u8; 32]), Error> {
    let (seq, hash) = v.split_at_checked(8).ok_or(Error::Corrupt {
        what: "head",
        detail: format!("{} bytes", v.len()),
    })?;
    let seq = u64::from_be_bytes(seq.try_into().map_err(|_| Error::Corrupt {
        what: "head",
        detail: "seq".into(),
    })?);
    let hash = hash.try_into().map_err(|_| Error::Corrupt {
        what: "head",
        detail: "hash".into(),
    })?;
    Ok((seq, hash))
}

fn decode_stored(key: &[u8], value: &[u8]) -> Result<Stored, Error> {
    let seq = u64::from_be_bytes(key.try_into().map_err(|_| Error::Corrupt {
        what: "record key",
        detail: hex::encode(key),
    })?);
    let (sum, bytes) = value.split_at_checked(32).ok_or(Error::Corrupt {
        what: "record",
        detail: format!("seq {seq} too short"),
    })?;
    let hash = sha256(&[bytes]);
    if hash.as_slice() != sum {
        return Err(Error::Corrupt {
            what: "record",
            detail: format!("seq {seq}: checksum mismatch"),
        });
    }
    Ok(Stored {
        seq,
        hash,
        bytes: bytes.to_vec(),
    })
}

impl Queue {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let db = sled::Config::new().path(path).open().map_err(db_err)?;
        let data_path = path.join("db");
        let data = std::fs::File::open(&data_path).map_err(|e| Error::Store {
            detail: format!("{}: {e}", data_path.display()),
        })?;
        let q = Queue {
            data,
            records: db.open_tree("records").map_err(db_err)?,
            meta: db.open_tree("meta").map_err(db_err)?,
            atc: db.open_tree("atc").map_err(db_err)?,
            credentials: db.open_tree("credentials").map_err(db_err)?,
            db,
            writer: Mutex::new(()),
        };
        q.check()?;
        Ok(q)
    }

    /// Startup check: the head matches the newest stored record.
    fn check(&self) -> Result<(), Error> {
        let (seq, hash) = self.head()?;
        if let Some((k, v)) = self.records.last().map_err(db_err)? {
            let s = decode_stored(&k, &v)?;
            if s.seq != seq || s.hash != hash {
                return Err(Error::Corrupt {
                    what: "head",
                    detail: format!("head says {seq}, newest record is {}", s.seq),
                });
            }
        }
        Ok(())
    }

    /// Flush sled's log and make it durable: `flush()` then `fdatasync`.
    fn sync(&self) -> Result<(), Error> {
        self.db.flush().map_err(db_err)?;
        self.data.sync_data().map_err(|e| Error::Store {
            detail: format!("fdatasync: {e}"),
        })
    }

    /// Every stored (unpruned) record, oldest first.
    pub fn all(&self) -> Result<Vec<Stored>, Error> {
        self.records
            .iter()
            .map(|kv| kv.map_err(db_err).and_then(|(k, v)| decode_stored(&k, &v)))
            .collect()
    }

    /// The newest `n` records, newest first.
    pub fn recent(&self, n: usize) -> Result<Vec<Stored>, Error> {
        self.records
            .iter()
            .rev()
            .take(n)
            .map(|kv| kv.map_err(db_err).and_then(|(k, v)| decode_stored(&k, &v)))
            .collect()
    }
}

impl QueueStore for Queue {
    fn head(&self) -> Result<(u64, [u8; 32]), Error> {
        match self.meta.get(HEAD).map_err(db_err)? {
            Some(v) => decode_head(&v),
            None => Ok((0, [0; 32])),
        }
    }

    fn append(
        &self,
        facts: RecordFacts,
        build: &mut dyn FnMut(u64, [u8; 32]) -> TransactionRecord,
    ) -> Result<Stored, Error> {
        let _w = self.writer.lock().map_err(|_| Error::Store {
            detail: "writer lock poisoned".into(),
        })?;
        let (head_seq, head_hash) = self.head()?;
        let seq = head_seq.checked_add(1).ok_or(Error::Store {
            detail: "sequence numbers exhausted".into(),
        })?;
        let record = build(seq, head_hash);
        if record.seq != seq || record.prev_hash != head_hash {
            return Err(Error::Store {
                detail: "record built for another position".into(),
            });
        }
        let bytes = record.to_bytes();
        let hash = sha256(&[&bytes]);
        let mut value = Vec::with_capacity(32 + bytes.len());
        value.extend_from_slice(&hash);
        value.extend_from_slice(&bytes);
        let mut head = Vec::with_capacity(40);
        head.extend_from_slice(&seq.to_be_bytes());
        head.extend_from_slice(&hash);
        let result: Result<(), TransactionError<Error>> =
            (&self.records, &self.meta, &self.atc, &self.credentials).transaction(
                |(records, meta, atc, creds)| {
                    let current = meta
                        .get(HEAD)?
                        .map(|v| decode_head(&v))
                        .transpose()
                        .map_err(ConflictableTransactionError::Abort)?;
                    if current.unwrap_or((0, [0; 32])) != (head_seq, head_hash) {
                        return Err(ConflictableTransactionError::Abort(Error::Store {
                            detail: "head moved during append".into(),
                        }));
                    }
                    records.insert(&seq.to_be_bytes(), value.as_slice())?;
                    meta.insert(HEAD, head.as_slice())?;
                    atc.insert(&facts.wallet, &facts.atc.to_be_bytes())?;
                    if let Some(c) = facts.credential {
                        creds.insert(&c, &seq.to_be_bytes())?;
                    }
                    Ok(())
                },
            );
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(db_err(e)),
        }
        self.sync()?;
        Ok(Stored { seq, hash, bytes })
    }

    fn pending(&self, limit: usize) -> Result<Vec<Stored>, Error> {
        let acked = self.acked()?;
        let start = acked.saturating_add(1).to_be_bytes();
        self.records
            .range(start..)
            .take(limit)
            .map(|kv| kv.map_err(db_err).and_then(|(k, v)| decode_stored(&k, &v)))
            .collect()
    }

    fn ack(&self, seq: u64, hash: [u8; 32]) -> Result<usize, Error> {
        let _w = self.writer.lock().map_err(|_| Error::Store {
            detail: "writer lock poisoned".into(),
        })?;
        if seq <= self.acked()? {
            return Ok(0);
        }
        let Some(v) = self.records.get(seq.to_be_bytes()).map_err(db_err)? else {
            return Err(Error::Store {
                detail: format!("host acknowledged seq {seq}, which this terminal does not hold"),
            });
        };
        if decode_stored(&seq.to_be_bytes(), &v)?.hash != hash {
            return Err(Error::Store {
                detail: format!("host's hash for seq {seq} differs from ours"),
            });
        }
        // Record the acknowledgement first: a crash before the pruning only
        // leaves records the next start prunes again.
        self.meta
            .insert(ACKED, &seq.to_be_bytes())
            .map_err(db_err)?;
        self.sync()?;
        let mut pruned = 0;
        for kv in self.records.range(..=seq.to_be_bytes()) {
            let (k, _) = kv.map_err(db_err)?;
            // The chain head stays: the next record needs its hash.
            self.records.remove(k).map_err(db_err)?;
            pruned += 1;
        }
        self.sync()?;
        Ok(pruned)
    }

    fn acked(&self) -> Result<u64, Error> {
        match self.meta.get(ACKED).map_err(db_err)? {
            Some(v) => Ok(u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                Error::Corrupt {
                    what: "acked",
                    detail: hex::encode(&v),
                }
            })?)),
            None => Ok(0),
        }
    }

    fn last_atc(&self, wallet: &[u8; 32]) -> Result<Option<u32>, Error> {
        self.atc
            .get(wallet)
            .map_err(db_err)?
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
    }

    fn credential_used(&self, id: &[u8; 16]) -> Result<bool, Error> {
        self.credentials.contains_key(id).map_err(db_err)
    }
}
