//! The shared [`Store`]: PostgreSQL, for several `tap-host` instances on one
//! database (`--store postgres://…`). Schema: `host/migrations/*.sql`,
//! applied in order by [`PgStore::migrate`] (`tap-host migrate`, and at
//! start); the versions applied are in `tapstack_migrations`.
//!
//! Every [`Store::append`] is one READ COMMITTED transaction that takes
//! the locks its rules need: the terminal's head row (`FOR UPDATE`), and a
//! transaction-scoped advisory lock per wallet and per pickup credential it
//! touches, so appends of one chain, one wallet or one credential take
//! turns on whichever instance they run, and unrelated terminals do not
//! wait for each other. Inside, it applies the settlement rules against the
//! indices (seeing its own earlier rows), inserts the records and the index
//! rows and moves the head. What exactly-once rests on is the database's
//! own: `records (terminal, seq)`, `taps (th1)` and `wallet_atc (wallet,
//! atc)` are primary keys, so two instances racing on one terminal or one
//! tap cannot both commit: the second insert waits for the first
//! transaction and fails when it commits. A transaction that loses such a
//! race (unique violation, deadlock, serialization failure) is reported as
//! [`Error::HeadMoved`]: the ingest re-reads and tries again, and then sees
//! the winner. (SERIALIZABLE was tried first: with 64 terminals uploading
//! at once its predicate locks on the shared index pages failed unrelated
//! appends faster than the ingest's retries could absorb.) Committed means
//! durable (PostgreSQL's WAL, `synchronous_commit` on): [`Store::sync`] has
//! nothing left to do.
//!
//! The trait is blocking (the ingest runs on blocking threads); the store
//! drives `tokio-postgres` through a `deadpool-postgres` pool on a small
//! runtime of its own, so it also works from plain threads.

use std::future::Future;

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, NoTls};

use super::{
    flag_credential_reuse, settle_verdict, AtcPolicy, ChainHead, Disposition, Meta, RecordRef,
    Store, StoredRecord,
};
use crate::wire::Flag;
use crate::Error;

/// The schema, version by version.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../../migrations/0001_init.sql"))];

/// Default connections per instance.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    rt: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// The connection target without its password, for messages.
    target: String,
}

impl core::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime may block; inside another runtime it must not.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn db(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| Error::Database { op, source }
}

/// Inside an append: losing a race to another writer is [`Error::HeadMoved`]
/// (the ingest re-reads and tries again) — a deadlock, a serialization
/// failure, or a unique violation on the keys two writers race for; any
/// other failure, a unique violation elsewhere included, is what it is.
fn db_append(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
    move |source| {
        let raced = source.as_db_error().is_some_and(|e| {
            *e.code() == SqlState::T_R_SERIALIZATION_FAILURE
                || *e.code() == SqlState::T_R_DEADLOCK_DETECTED
                || (*e.code() == SqlState::UNIQUE_VIOLATION
                    && matches!(
                        e.constraint(),
                        Some("records_pkey" | "taps_pkey" | "wallet_atc_pkey" | "heads_pkey")
                    ))
        });
        if raced {
            Error::HeadMoved
        } else {
            Error::Database { op, source }
        }
    }
}

fn bytes<const N: usize>(v: &[u8], what: &'static str) -> Result<[u8; N], Error> {
    v.try_into().map_err(|_| Error::Corrupt { what })
}

fn seq_of(v: i64) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| Error::Corrupt { what: "seq" })
}

fn sql_seq(seq: u64) -> Result<i64, Error> {
    i64::try_from(seq).map_err(|_| Error::Invalid {
        field: "seq",
        reason: "above 2^63",
    })
}

impl PgStore {
    /// Connect (`postgres://user:password@host:port/db`, or libpq's
    /// `host=/run/pg port=5432 user=tap dbname=tap`) with a pool of
    /// `pool_size` connections, and bring the schema up to date.
    pub fn open(url: &str, pool_size: usize) -> Result<Self, Error> {
        let store = Self::connect(url, pool_size)?;
        store.migrate()?;
        Ok(store)
    }

    /// Connect to a database that already holds a tapstack store, changing
    /// nothing (`tap-host ledger`): refused when its schema is missing.
    pub fn open_existing(url: &str, pool_size: usize) -> Result<Self, Error> {
        let store = Self::connect(url, pool_size)?;
        let version = store.block_on(async {
            let c = store.client().await?;
            let row = c
                .query_one("SELECT to_regclass('tapstack_migrations') IS NOT NULL", &[])
                .await
                .map_err(db("look for the schema"))?;
            Ok(row.get::<_, bool>(0))
        })?;
        if !version {
            return Err(Error::Invalid {
                field: "store",
                reason: "the database holds no tapstack store (tap-host migrate creates one)",
            });
        }
        Ok(store)
    }

    fn connect(url: &str, pool_size: usize) -> Result<Self, Error> {
        let config: tokio_postgres::Config = url.parse().map_err(|source| Error::Database {
            op: "parse the connection string",
            source,
        })?;
        let target = format!(
            "{}{}",
            config
                .get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            config
                .get_dbname()
                .map(|d| format!("/{d}"))
                .unwrap_or_default()
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pg-store")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                path: "pg-store runtime".into(),
                source,
            })?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|_| Error::Invalid {
                field: "store",
                reason: "cannot build the connection pool",
            })?;
        Ok(PgStore {
            rt: Some(rt),
            pool,
            target,
        })
    }

    /// `tap-host migrate`: connect, migrate; (schema version, applied now).
    pub fn connect_and_migrate(url: &str) -> Result<(i32, usize), Error> {
        let store = Self::connect(url, 1)?;
        let applied = store.migrate()?;
        Ok((store.schema_version()?, applied))
    }

    /// Where it is connected (host or socket directory, database).
    pub fn target(&self) -> &str {
        &self.target
    }

    fn block_on<T>(&self, f: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => Err(Error::Invalid {
                field: "store",
                reason: "closed",
            }),
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(source) => Error::Database {
                op: "connect",
                source,
            },
            _ => Error::Timeout {
                what: "a database connection",
            },
        })
    }

    /// Apply the migrations not applied yet; the number applied. Safe to
    /// run from several instances at once (an advisory lock serialises them).
    pub fn migrate(&self) -> Result<usize, Error> {
        self.block_on(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(db("begin"))?;
            tx.batch_execute(
                "SELECT pg_advisory_xact_lock(7300730073);
                 CREATE TABLE IF NOT EXISTS tapstack_migrations (
                     version    INTEGER PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await
            .map_err(db("migrate"))?;
            let mut applied = 0;
            for (version, sql) in MIGRATIONS {
                let done = tx
                    .query_opt(
                        "SELECT 1 FROM tapstack_migrations WHERE version = $1",
                        &[version],
                    )
                    .await
                    .map_err(db("migrate"))?
                    .is_some();
                if done {
                    continue;
                }
                tx.batch_execute(sql).await.map_err(db("migrate"))?;
                tx.execute(
                    "INSERT INTO tapstack_migrations (version) VALUES ($1)",
                    &[version],
                )
                .await
                .map_err(db("migrate"))?;
                applied += 1;
            }
            tx.commit().await.map_err(db("migrate"))?;
            Ok(applied)
        })
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i32, Error> {
        self.block_on(async {
            let c = self.client().await?;
            let row = c
                .query_one(
                    "SELECT COALESCE(MAX(version), 0) FROM tapstack_migrations",
                    &[],
                )
                .await
                .map_err(db("read the schema version"))?;
            Ok(row.get(0))
        })
    }

    async fn refs(
        c: &impl GenericClient,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<RecordRef>, Error> {
        c.query(sql, params)
            .await
            .map_err(db("read index"))?
            .iter()
            .map(|r| ref_at(r, 0))
            .collect()
    }

    async fn highest(c: &impl GenericClient, wallet: &[u8; 32]) -> Result<Option<u32>, Error> {
        let row = c
            .query_opt(
                "SELECT atc FROM wallet_high WHERE wallet = $1",
                &[&&wallet[..]],
            )
            .await
            .map_err(db("read index"))?;
        row.map(|r| {
            u32::try_from(r.get::<_, i64>(0)).map_err(|_| Error::Corrupt { what: "wallet ATC" })
        })
        .transpose()
    }

    /// The head; `lock` is `""` or `"FOR UPDATE"`.
    async fn head_in(
        c: &impl GenericClient,
        terminal: &[u8; 32],
        lock: &str,
    ) -> Result<Option<ChainHead>, Error> {
        let row = c
            .query_opt(
                &format!("SELECT seq, hash FROM heads WHERE terminal = $1 {lock}"),
                &[&&terminal[..]],
            )
            .await
            .map_err(db_append("read the chain head"))?;
        row.map(|r| {
            Ok(ChainHead {
                seq: seq_of(r.get(0))?,
                hash: bytes(r.get::<_, &[u8]>(1), "chain head")?,
            })
        })
        .transpose()
    }

    /// One append in a fixed number of round trips, whatever the batch
    /// size: lock the head; take the wallet and credential locks in one
    /// sorted statement; read what the batch's taps, ATCs, wallets and
    /// credentials already have in four queries; decide every record in
    /// memory (in order, each seeing the batch's earlier records, as the
    /// sled store does); write with one multi-row insert per table.
    async fn append_tx(
        &self,
        terminal: &[u8; 32],
        expected: Option<ChainHead>,
        batch: &[StoredRecord],
        policy: &AtcPolicy,
    ) -> Result<Vec<StoredRecord>, Error> {
        use std::collections::{BTreeSet, HashMap};
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(db_append("begin"))?;
        // The chain: its head row locked until commit (a first append has
        // none; a racing first append then fails on the records' key).
        if Self::head_in(&tx, terminal, "FOR UPDATE").await? != expected {
            return Err(Error::HeadMoved);
        }
        let base = expected.map_or(0, |h| h.seq);
        let mut out: Vec<StoredRecord> = batch.to_vec();

        // What the accepted records of the batch will look up.
        let accepted = || {
            out.iter()
                .filter(|r| r.disposition == Disposition::Accepted)
        };
        let th1s: Vec<[u8; 32]> = accepted().filter_map(StoredRecord::th1).collect();
        let atcs: Vec<([u8; 32], u32)> = accepted().filter_map(StoredRecord::wallet_atc).collect();
        let wallets: BTreeSet<[u8; 32]> = atcs.iter().map(|(w, _)| *w).collect();
        let credentials: BTreeSet<[u8; 16]> =
            accepted().filter_map(StoredRecord::credential_id).collect();

        // Appends of one wallet or one credential take turns, on whichever
        // instance; taken in one sorted order, so they cannot deadlock.
        let mut locks: BTreeSet<(i32, i32)> = BTreeSet::new();
        locks.extend(wallets.iter().map(|w| (LOCK_WALLET, lock_id(w))));
        locks.extend(credentials.iter().map(|c| (LOCK_CREDENTIAL, lock_id(c))));
        if !locks.is_empty() {
            let (spaces, keys): (Vec<i32>, Vec<i32>) = locks.into_iter().unzip();
            tx.execute(
                "SELECT pg_advisory_xact_lock(s, k)
                 FROM (SELECT * FROM unnest($1::int4[], $2::int4[]) AS l(s, k) ORDER BY s, k) AS o",
                &[&spaces, &keys],
            )
            .await
            .map_err(db_append("take the locks"))?;
        }

        let mut taps: HashMap<[u8; 32], RecordRef> = HashMap::new();
        if !th1s.is_empty() {
            let keys: Vec<&[u8]> = th1s.iter().map(|t| &t[..]).collect();
            for row in tx
                .query(
                    "SELECT th1, terminal, seq FROM taps WHERE th1 = ANY($1)",
                    &[&keys],
                )
                .await
                .map_err(db_append("read index"))?
            {
                let th1 = bytes(row.get::<_, &[u8]>(0), "index entry")?;
                taps.insert(th1, ref_at(&row, 1)?);
            }
        }
        let mut uses: HashMap<([u8; 32], u32), RecordRef> = HashMap::new();
        let mut high: HashMap<[u8; 32], u32> = HashMap::new();
        if !atcs.is_empty() {
            let ws: Vec<&[u8]> = atcs.iter().map(|(w, _)| &w[..]).collect();
            let ns: Vec<i64> = atcs.iter().map(|(_, a)| i64::from(*a)).collect();
            for row in tx
                .query(
                    "SELECT u.wallet, u.atc, u.terminal, u.seq FROM wallet_atc u
                     JOIN unnest($1::bytea[], $2::int8[]) AS k(wallet, atc)
                       ON u.wallet = k.wallet AND u.atc = k.atc",
                    &[&ws, &ns],
                )
                .await
                .map_err(db_append("read index"))?
            {
                let w = bytes(row.get::<_, &[u8]>(0), "index entry")?;
                let atc = atc_of(row.get(1))?;
                uses.insert((w, atc), ref_at(&row, 2)?);
            }
            let distinct: Vec<&[u8]> = wallets.iter().map(|w| &w[..]).collect();
            for row in tx
                .query(
                    "SELECT wallet, atc FROM wallet_high WHERE wallet = ANY($1)",
                    &[&distinct],
                )
                .await
                .map_err(db_append("read index"))?
            {
                high.insert(
                    bytes(row.get::<_, &[u8]>(0), "index entry")?,
                    atc_of(row.get(1))?,
                );
            }
        }
        let mut creds: HashMap<[u8; 16], Vec<RecordRef>> = HashMap::new();
        if !credentials.is_empty() {
            let ids: Vec<&[u8]> = credentials.iter().map(|c| &c[..]).collect();
            for row in tx
                .query(
                    "SELECT credential, terminal, seq FROM credential_uses
                     WHERE credential = ANY($1) ORDER BY terminal, seq",
                    &[&ids],
                )
                .await
                .map_err(db_append("read index"))?
            {
                let id = bytes(row.get::<_, &[u8]>(0), "index entry")?;
                creds.entry(id).or_default().push(ref_at(&row, 1)?);
            }
        }

        // Decide, in order; the batch's own accepted records join the maps.
        let mut earlier: BTreeSet<RecordRef> = BTreeSet::new();
        let mut new_taps: Vec<([u8; 32], i64)> = Vec::new();
        let mut new_uses: Vec<([u8; 32], u32, i64)> = Vec::new();
        let mut new_creds: Vec<([u8; 16], i64)> = Vec::new();
        for i in 0..out.len() {
            let me = out[i].reference();
            let seq = sql_seq(me.seq)?;
            let same_tap = out[i].th1().and_then(|t| taps.get(&t).copied());
            let (same_atc, highest) = match out[i].wallet_atc() {
                Some((w, atc)) => (uses.get(&(w, atc)).copied(), high.get(&w).copied()),
                None => (None, None),
            };
            if let Some((reason, detail)) =
                settle_verdict(&out[i], same_tap, same_atc, highest, policy)
            {
                out[i].disposition = Disposition::Declined(reason);
                out[i].detail = Some(detail);
            }
            if out[i].disposition != Disposition::Accepted {
                continue;
            }
            if let Some(th1) = out[i].th1() {
                taps.insert(th1, me);
                new_taps.push((th1, seq));
            }
            if let Some((w, atc)) = out[i].wallet_atc() {
                uses.insert((w, atc), me);
                let h = high.entry(w).or_insert(atc);
                *h = (*h).max(atc);
                new_uses.push((w, atc, seq));
            }
            if let Some(id) = out[i].credential_id() {
                let others = creds.entry(id).or_default();
                earlier.extend(flag_credential_reuse(&mut out, i, others, terminal, base));
                others.push(me);
                new_creds.push((id, seq));
            }
        }

        // Write.
        let t: &[u8] = &terminal[..];
        if !new_taps.is_empty() {
            let keys: Vec<&[u8]> = new_taps.iter().map(|(k, _)| &k[..]).collect();
            let seqs: Vec<i64> = new_taps.iter().map(|(_, s)| *s).collect();
            tx.execute(
                "INSERT INTO taps (th1, terminal, seq)
                 SELECT k, $2, s FROM unnest($1::bytea[], $3::int8[]) AS x(k, s)",
                &[&keys, &t, &seqs],
            )
            .await
            .map_err(db_append("index the taps"))?;
        }
        if !new_uses.is_empty() {
            let ws: Vec<&[u8]> = new_uses.iter().map(|(w, _, _)| &w[..]).collect();
            let ns: Vec<i64> = new_uses.iter().map(|(_, a, _)| i64::from(*a)).collect();
            let seqs: Vec<i64> = new_uses.iter().map(|(_, _, s)| *s).collect();
            tx.execute(
                "INSERT INTO wallet_atc (wallet, atc, terminal, seq)
                 SELECT w, a, $3, s FROM unnest($1::bytea[], $2::int8[], $4::int8[]) AS x(w, a, s)",
                &[&ws, &ns, &t, &seqs],
            )
            .await
            .map_err(db_append("index the wallets' ATCs"))?;
            tx.execute(
                "INSERT INTO wallet_high (wallet, atc)
                 SELECT w, max(a) FROM unnest($1::bytea[], $2::int8[]) AS x(w, a) GROUP BY w
                 ON CONFLICT (wallet) DO UPDATE SET atc = GREATEST(wallet_high.atc, EXCLUDED.atc)",
                &[&ws, &ns],
            )
            .await
            .map_err(db_append("index the wallets' highest ATCs"))?;
        }
        if !new_creds.is_empty() {
            let ids: Vec<&[u8]> = new_creds.iter().map(|(c, _)| &c[..]).collect();
            let seqs: Vec<i64> = new_creds.iter().map(|(_, s)| *s).collect();
            tx.execute(
                "INSERT INTO credential_uses (credential, terminal, seq)
                 SELECT c, $2, s FROM unnest($1::bytea[], $3::int8[]) AS x(c, s)",
                &[&ids, &t, &seqs],
            )
            .await
            .map_err(db_append("index the credentials"))?;
        }
        for o in earlier {
            let oseq = sql_seq(o.seq)?;
            let row = tx
                .query_opt(
                    "SELECT hash, meta::text FROM records WHERE terminal = $1 AND seq = $2 FOR UPDATE",
                    &[&&o.terminal[..], &oseq],
                )
                .await
                .map_err(db_append("read a record"))?
                .ok_or(Error::Corrupt {
                    what: "index points at no record",
                })?;
            let mut rec = Meta::parse(row.get::<_, &str>(1).as_bytes())?.record(
                o.terminal,
                o.seq,
                bytes(row.get::<_, &[u8]>(0), "record hash")?,
                Vec::new(),
            );
            rec.add_flag(Flag::CredentialReused);
            tx.execute(
                "UPDATE records SET meta = $3::text::jsonb WHERE terminal = $1 AND seq = $2",
                &[&&o.terminal[..], &oseq, &meta_text(&rec)?],
            )
            .await
            .map_err(db_append("flag a record"))?;
        }
        let seqs: Vec<i64> = out
            .iter()
            .map(|r| sql_seq(r.seq))
            .collect::<Result<_, _>>()?;
        let hashes: Vec<&[u8]> = out.iter().map(|r| &r.hash[..]).collect();
        let received: Vec<i64> = out
            .iter()
            .map(|r| i64::try_from(r.received_at).unwrap_or(i64::MAX))
            .collect();
        let metas: Vec<String> = out.iter().map(meta_text).collect::<Result<_, _>>()?;
        let blobs: Vec<&[u8]> = out.iter().map(|r| r.bytes.as_slice()).collect();
        tx.execute(
            "INSERT INTO records (terminal, seq, hash, received_at, meta, bytes)
             SELECT $1, s, h, r, m::jsonb, b
             FROM unnest($2::int8[], $3::bytea[], $4::int8[], $5::text[], $6::bytea[]) AS x(s, h, r, m, b)",
            &[&t, &seqs, &hashes, &received, &metas, &blobs],
        )
        .await
        .map_err(db_append("insert the records"))?;
        let Some(last) = out.last() else {
            return Ok(out);
        };
        let moved = tx
            .execute(
                "INSERT INTO heads (terminal, seq, hash) VALUES ($1, $2, $3)
                 ON CONFLICT (terminal) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash
                 WHERE heads.seq = $4",
                &[&t, &sql_seq(last.seq)?, &&last.hash[..], &sql_seq(base)?],
            )
            .await
            .map_err(db_append("move the chain head"))?;
        if moved != 1 {
            return Err(Error::HeadMoved);
        }
        tx.commit().await.map_err(db_append("commit"))?;
        Ok(out)
    }
}

/// Advisory-lock namespaces (the first argument of the two-key form).
const LOCK_WALLET: i32 = 0x7461_7001;
const LOCK_CREDENTIAL: i32 = 0x7461_7002;

/// The advisory-lock key of a wallet or credential: its first 4 bytes (two
/// that share them only wait for each other).
fn lock_id(key: &[u8]) -> i32 {
    key.get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, i32::from_be_bytes)
}

fn ref_at(row: &tokio_postgres::Row, at: usize) -> Result<RecordRef, Error> {
    Ok(RecordRef {
        terminal: bytes(row.get::<_, &[u8]>(at), "index entry")?,
        seq: seq_of(row.get(at + 1))?,
    })
}

fn atc_of(v: i64) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::Corrupt { what: "wallet ATC" })
}

fn meta_text(r: &StoredRecord) -> Result<String, Error> {
    String::from_utf8(Meta::json(r)).map_err(|_| Error::Corrupt {
        what: "record metadata",
    })
}

fn stored(row: &tokio_postgres::Row) -> Result<StoredRecord, Error> {
    Ok(Meta::parse(row.get::<_, &str>(3).as_bytes())?.record(
        bytes(row.get::<_, &[u8]>(0), "record key")?,
        seq_of(row.get(1))?,
        bytes(row.get::<_, &[u8]>(2), "record hash")?,
        row.get::<_, Vec<u8>>(4),
    ))
}

const SELECT_RECORD: &str = "SELECT terminal, seq, hash, meta::text, bytes FROM records";

impl Store for PgStore {
    fn pool_status(&self) -> Option<super::PoolStatus> {
        let s = self.pool.status();
        Some(super::PoolStatus {
            size: s.size,
            available: s.available,
            waiting: s.waiting,
        })
    }

    fn head(&self, terminal: &[u8; 32]) -> Result<Option<ChainHead>, Error> {
        self.block_on(async { Self::head_in(&self.client().await?, terminal, "").await })
    }

    fn record_hash(&self, terminal: &[u8; 32], seq: u64) -> Result<Option<[u8; 32]>, Error> {
        self.block_on(async {
            let c = self.client().await?;
            c.query_opt(
                "SELECT hash FROM records WHERE terminal = $1 AND seq = $2",
                &[&&terminal[..], &sql_seq(seq)?],
            )
            .await
            .map_err(db("read a record"))?
            .map(|r| bytes(r.get::<_, &[u8]>(0), "record hash"))
            .transpose()
        })
    }

    fn record(&self, terminal: &[u8; 32], seq: u64) -> Result<Option<StoredRecord>, Error> {
        self.block_on(async {
            let c = self.client().await?;
            c.query_opt(
                &format!("{SELECT_RECORD} WHERE terminal = $1 AND seq = $2"),
                &[&&terminal[..], &sql_seq(seq)?],
            )
            .await
            .map_err(db("read a record"))?
            .map(|r| stored(&r))
            .transpose()
        })
    }

    fn append(
        &self,
        terminal: &[u8; 32],
        expected: Option<ChainHead>,
        records: &mut [StoredRecord],
        policy: &AtcPolicy,
    ) -> Result<(), Error> {
        if records.is_empty() {
            return Ok(());
        }
        super::check_continues(terminal, expected, records)?;
        let out = self.block_on(self.append_tx(terminal, expected, records, policy))?;
        for (r, o) in records.iter_mut().zip(out) {
            *r = o;
        }
        Ok(())
    }

    /// A committed transaction is durable already.
    fn sync(&self) -> Result<(), Error> {
        Ok(())
    }

    fn records(&self) -> Result<Vec<StoredRecord>, Error> {
        self.block_on(async {
            let c = self.client().await?;
            c.query(&format!("{SELECT_RECORD} ORDER BY terminal, seq"), &[])
                .await
                .map_err(db("scan records"))?
                .iter()
                .map(stored)
                .collect()
        })
    }

    fn wallet_uses(&self, wallet: &[u8; 32], atc: u32) -> Result<Vec<RecordRef>, Error> {
        self.block_on(async {
            let c = self.client().await?;
            Self::refs(
                &c,
                "SELECT terminal, seq FROM wallet_atc WHERE wallet = $1 AND atc = $2",
                &[&&wallet[..], &i64::from(atc)],
            )
            .await
        })
    }

    fn tap(&self, th1: &[u8; 32]) -> Result<Option<RecordRef>, Error> {
        self.block_on(async {
            let c = self.client().await?;
            Ok(Self::refs(
                &c,
                "SELECT terminal, seq FROM taps WHERE th1 = $1",
                &[&&th1[..]],
            )
            .await?
            .into_iter()
            .next())
        })
    }

    fn highest_atc(&self, wallet: &[u8; 32]) -> Result<Option<u32>, Error> {
        self.block_on(async { Self::highest(&self.client().await?, wallet).await })
    }

    fn credential_uses(&self, id: &[u8; 16]) -> Result<Vec<RecordRef>, Error> {
        self.block_on(async {
            let c = self.client().await?;
            Self::refs(
                &c,
                "SELECT terminal, seq FROM credential_uses WHERE credential = $1 ORDER BY terminal, seq",
                &[&&id[..]],
            )
            .await
        })
    }
}
