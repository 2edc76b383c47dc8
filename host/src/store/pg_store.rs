//! The shared [`Store`]: PostgreSQL, for several `tap-host` instances on one
//! database (`--store postgres://…`). Schema: `host/migrations/*.sql`,
//! applied in order by [`PgStore::migrate`] (`tap-host migrate`, and at
//! start); the versions applied are in `tapstack_migrations`.
//!
//! Every [`Store::append`] is one SERIALIZABLE transaction: it reads the
//! terminal's head, applies the settlement rules against the indices (the
//! transaction sees its own earlier inserts), inserts the records and the
//! index rows and moves the head. What exactly-once rests on is the
//! database's own: `records (terminal, seq)`, `taps (th1)` and
//! `wallet_atc (wallet, atc)` are primary keys, so two instances racing on
//! one terminal, one tap or one wallet cannot both commit. A transaction
//! that loses such a race (serialization failure, deadlock, unique
//! violation) is reported as [`Error::HeadMoved`]: the ingest re-reads and
//! tries again, and then sees the winner. Committed means durable
//! (PostgreSQL's WAL, `synchronous_commit` on): [`Store::sync`] has nothing
//! left to do.
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
    settle_verdict, AtcPolicy, ChainHead, Disposition, Meta, RecordRef, Store, StoredRecord,
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
    move |source| {
        if source.code().is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::UNIQUE_VIOLATION
        }) {
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

fn record_ref(row: &tokio_postgres::Row) -> Result<RecordRef, Error> {
    Ok(RecordRef {
        terminal: bytes(row.get::<_, &[u8]>(0), "index entry")?,
        seq: seq_of(row.get(1))?,
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
            .map(record_ref)
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

    async fn head_in(
        c: &impl GenericClient,
        terminal: &[u8; 32],
    ) -> Result<Option<ChainHead>, Error> {
        let row = c
            .query_opt(
                "SELECT seq, hash FROM heads WHERE terminal = $1",
                &[&&terminal[..]],
            )
            .await
            .map_err(db("read the chain head"))?;
        row.map(|r| {
            Ok(ChainHead {
                seq: seq_of(r.get(0))?,
                hash: bytes(r.get::<_, &[u8]>(1), "chain head")?,
            })
        })
        .transpose()
    }

    async fn append_tx(
        &self,
        terminal: &[u8; 32],
        expected: Option<ChainHead>,
        batch: &[StoredRecord],
        policy: &AtcPolicy,
    ) -> Result<Vec<StoredRecord>, Error> {
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::Serializable)
            .start()
            .await
            .map_err(db("begin"))?;
        if Self::head_in(&tx, terminal).await? != expected {
            return Err(Error::HeadMoved);
        }
        let base = expected.map_or(0, |h| h.seq);
        let mut out: Vec<StoredRecord> = batch.to_vec();
        let mut earlier: Vec<RecordRef> = Vec::new();
        for i in 0..out.len() {
            let me = out[i].reference();
            let seq = sql_seq(me.seq)?;
            if out[i].disposition == Disposition::Accepted {
                let same_tap = match out[i].th1() {
                    Some(th1) => Self::refs(
                        &tx,
                        "SELECT terminal, seq FROM taps WHERE th1 = $1",
                        &[&&th1[..]],
                    )
                    .await?
                    .first()
                    .copied(),
                    None => None,
                };
                let (same_atc, high) = match out[i].wallet_atc() {
                    Some((w, atc)) => (
                        Self::refs(
                            &tx,
                            "SELECT terminal, seq FROM wallet_atc WHERE wallet = $1 AND atc = $2",
                            &[&&w[..], &i64::from(atc)],
                        )
                        .await?
                        .first()
                        .copied(),
                        Self::highest(&tx, &w).await?,
                    ),
                    None => (None, None),
                };
                if let Some((reason, detail)) =
                    settle_verdict(&out[i], same_tap, same_atc, high, policy)
                {
                    out[i].disposition = Disposition::Declined(reason);
                    out[i].detail = Some(detail);
                }
            }
            if out[i].disposition != Disposition::Accepted {
                continue;
            }
            if let Some(th1) = out[i].th1() {
                tx.execute(
                    "INSERT INTO taps (th1, terminal, seq) VALUES ($1, $2, $3)",
                    &[&&th1[..], &&terminal[..], &seq],
                )
                .await
                .map_err(db("index the tap"))?;
            }
            if let Some((w, atc)) = out[i].wallet_atc() {
                tx.execute(
                    "INSERT INTO wallet_atc (wallet, atc, terminal, seq) VALUES ($1, $2, $3, $4)",
                    &[&&w[..], &i64::from(atc), &&terminal[..], &seq],
                )
                .await
                .map_err(db("index the wallet's ATC"))?;
                tx.execute(
                    "INSERT INTO wallet_high (wallet, atc) VALUES ($1, $2)
                     ON CONFLICT (wallet) DO UPDATE SET atc = GREATEST(wallet_high.atc, EXCLUDED.atc)",
                    &[&&w[..], &i64::from(atc)],
                )
                .await
                .map_err(db("index the wallet's highest ATC"))?;
            }
            if let Some(id) = out[i].credential_id() {
                let others = Self::refs(
                    &tx,
                    "SELECT terminal, seq FROM credential_uses WHERE credential = $1 ORDER BY terminal, seq",
                    &[&&id[..]],
                )
                .await?;
                if !others.is_empty() {
                    out[i].add_flag(Flag::CredentialReused);
                    for o in others {
                        if &o.terminal == terminal && o.seq > base {
                            // An earlier record of this same append.
                            if let Some(r) = usize::try_from(o.seq - base - 1)
                                .ok()
                                .and_then(|j| out.get_mut(j))
                            {
                                r.add_flag(Flag::CredentialReused);
                            }
                        } else {
                            earlier.push(o);
                        }
                    }
                }
                tx.execute(
                    "INSERT INTO credential_uses (credential, terminal, seq) VALUES ($1, $2, $3)",
                    &[&&id[..], &&terminal[..], &seq],
                )
                .await
                .map_err(db("index the credential"))?;
            }
        }
        for o in earlier {
            let oseq = sql_seq(o.seq)?;
            let row = tx
                .query_opt(
                    "SELECT hash, meta::text, bytes FROM records WHERE terminal = $1 AND seq = $2 FOR UPDATE",
                    &[&&o.terminal[..], &oseq],
                )
                .await
                .map_err(db("read a record"))?
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
            .map_err(db("flag a record"))?;
        }
        for r in &out {
            tx.execute(
                "INSERT INTO records (terminal, seq, hash, received_at, meta, bytes)
                 VALUES ($1, $2, $3, $4, $5::text::jsonb, $6)",
                &[
                    &&terminal[..],
                    &sql_seq(r.seq)?,
                    &&r.hash[..],
                    &i64::try_from(r.received_at).unwrap_or(i64::MAX),
                    &meta_text(r)?,
                    &r.bytes,
                ],
            )
            .await
            .map_err(db("insert a record"))?;
        }
        let Some(last) = out.last() else {
            return Ok(out);
        };
        let moved = tx
            .execute(
                "INSERT INTO heads (terminal, seq, hash) VALUES ($1, $2, $3)
                 ON CONFLICT (terminal) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash
                 WHERE heads.seq = $4",
                &[
                    &&terminal[..],
                    &sql_seq(last.seq)?,
                    &&last.hash[..],
                    &sql_seq(base)?,
                ],
            )
            .await
            .map_err(db("move the chain head"))?;
        if moved != 1 {
            return Err(Error::HeadMoved);
        }
        tx.commit().await.map_err(db("commit"))?;
        Ok(out)
    }
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
    fn head(&self, terminal: &[u8; 32]) -> Result<Option<ChainHead>, Error> {
        self.block_on(async { Self::head_in(&self.client().await?, terminal).await })
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
        let base = expected.map_or(0, |h| h.seq);
        for (i, r) in records.iter().enumerate() {
            if &r.terminal != terminal || Some(r.seq) != base.checked_add(i as u64 + 1) {
                return Err(Error::Invalid {
                    field: "append",
                    reason: "records must continue the terminal's chain",
                });
            }
        }
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
