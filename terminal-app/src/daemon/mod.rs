//! `tap-terminal serve`: the reader loop, the intents, the background
//! uploader — and, passed in by `api.rs` (`Daemon::serve`), the local
//! HTTP+JSON API, in one process. This module does not know the API.
//!
//! ```text
//!  POS / agent ──HTTP──▶ api (tokio, hyper)            reader thread (owns Engine + Field)
//!    POST /v1/intents ──▶ Registry ──intent (FIFO)──▶  activate ─▶ with_phone(deadline, wake)
//!    GET  …/{id}?wait     ▲  IntentCell (state, events) ◀── reading / confirm / outcome
//!    GET  …/{id}/events ──┘  watch ─▶ long-poll, SSE     │ approved: every N taps ─▶ kick
//!    DELETE …/{id} ─▶ cancel (not while reading) ─ wake ▼
//!    POST /v1/sync ─────────────────────────────▶ Uploader ─ upload::sync (mTLS) ─ every
//!                                                   interval, backoff with jitter on failure
//!                                                   └─▶ Update (revocations, risk rebuild) ─▶ reader
//! ```
//!
//! * One thread owns the [`Engine`] and the [`Field`]: one intent is active
//!   at a time (one phone in the field at a time); the others wait in FIFO
//!   order. The active intent waits for a phone until its deadline on a
//!   reader wait that is cancellable ([`tapstack_reader::Cancel`]): a
//!   `DELETE`, an expiry, a new revocation list or the risk state to rebuild
//!   ([`Wake`]) and shutdown end the wait at once; the reader looks at why
//!   and waits again or stops.
//! * An intent ends at its first approval or decline: a later tap cannot
//!   attach to it, so the same wallet tapping twice is charged once.
//! * An intent being read cannot be cancelled or expire: the tap runs to its
//!   end, and an approved tap is reported approved (its record is durable).
//! * On shutdown the API stops accepting connections, the reader finishes
//!   the tap in flight, cancels what waits, and stops; then the uploader.
//!
//! Like mini-redis' `server::run`, [`Daemon::serve`] takes its listener and a
//! shutdown future, so tests bind port 0 and stop it when they are done.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand_core::{OsRng, RngCore};
use serde::Serialize;
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::ScenarioKind;
use tapstack_protocol::terminal::TerminalContext;
use tapstack_reader::Cancel;
use tapstack_upload::client::HostClient;
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::field::Field;
use crate::queue::{IntentKey, QueueStore, RememberedOutcome};
use crate::tap::{Approved, Decline, Engine, Intent, TapResult};
use crate::upload::{self, SyncReport};
use crate::Error;

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Limits and timings of the daemon (the rest comes from the configuration).
#[derive(Debug, Clone)]
pub struct Options {
    /// Intents not yet finished (queued or active): 429 beyond.
    pub max_intents: usize,
    /// Finished intents remembered (for `GET` and idempotency keys).
    pub retain: usize,
    /// Largest request body: 413 beyond.
    pub max_body: usize,
    /// Time to receive a request's header block.
    pub header_timeout: Duration,
    /// Time to receive a request body once its headers are in: 408 beyond.
    pub body_timeout: Duration,
    /// Longest `?wait=` of a long-poll.
    pub max_wait: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Largest wait between failed uploads (backoff with jitter up to this).
    pub backoff_max: Duration,
    /// At shutdown: how long open connections and a running upload get to
    /// finish after the reader stopped.
    pub grace: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_intents: 64,
            retain: 1024,
            max_body: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_wait: Duration::from_secs(60),
            max_connections: 256,
            backoff_max: Duration::from_secs(300),
            grace: Duration::from_secs(5),
        }
    }
}

// ---------------------------------------------------------------- shared

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder leaves consistent data behind (every update is a
    // single assignment): keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The reader's current wait for a phone, which others end at once when
/// the reader must look again: an intent cancelled or expired, an update
/// from the uploader. Shutdown ends every wait through the reader's stop
/// token, the parent of each wait's token.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wake(Arc<Mutex<Cancel>>);

impl Wake {
    /// A new token for the next wait, ended by [`Wake::wake`] or by `stop`.
    /// Armed before the reader looks at intents and updates, so a wake that
    /// comes after that look ends the wait that follows it.
    fn arm(&self, stop: &Cancel) -> Cancel {
        let c = stop.child();
        *lock(&self.0) = c.clone();
        c
    }

    /// End the reader's current wait (it looks again).
    pub(crate) fn wake(&self) {
        lock(&self.0).cancel();
    }
}

/// Messages from the uploader to the reader thread.
#[derive(Debug)]
enum Update {
    /// A newer revocation list from the host.
    Revocations(RevocationList),
    /// The host acknowledged records: rebuild the risk state from the queue.
    Synced,
}

/// The reader as the health endpoint sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ReaderStatus {
    pub connection: String,
    pub ok: bool,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    pub active_intent: Option<String>,
    pub taps: u64,
    pub running: bool,
}

/// The last sync, as `GET /v1/queue` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct SyncStatus {
    pub attempted_at: Option<u64>,
    pub ok: Option<bool>,
    pub report: Option<SyncReport>,
    pub error: Option<String>,
    pub last_success_at: Option<u64>,
    pub consecutive_failures: u32,
    /// When the background uploader tries next (Unix seconds).
    pub next_attempt_at: Option<u64>,
    /// The last sync could not refresh the revocation list: why.
    pub revocation_refresh_error: Option<String>,
}

/// What the terminal is, for validation and `/v1/health`.
#[derive(Debug, Clone)]
pub(crate) struct TerminalInfo {
    pub name: String,
    /// Currency, floor limit, certificate validity: what every intent is
    /// checked against when it is created.
    pub terms: crate::tap::Terms,
    /// The queue caps a new intent is checked against.
    pub limits: crate::risk::RiskLimits,
    pub kiosk_site: Option<String>,
    pub tap_timeout: Duration,
}

/// State shared by the API handlers, the reader and the uploader.
#[derive(Debug)]
pub(crate) struct Shared {
    pub registry: Mutex<Registry>,
    intents_tx: Mutex<Option<mpsc::Sender<Arc<IntentCell>>>>,
    pub queue: Arc<dyn QueueStore>,
    pub uploader: Option<Arc<Uploader>>,
    pub reader: Mutex<ReaderStatus>,
    pub shutting_down: AtomicBool,
    /// Ends the reader's wait for a phone (see [`Wake`]).
    pub wake: Wake,
    pub opts: Options,
    pub terminal: TerminalInfo,
    /// The revocation list in force (kept current by the uploader).
    pub revocations: Arc<Mutex<Option<RevocationList>>>,
    /// `[trust] revocation_grace_secs`.
    pub revocation_grace: u64,
}

impl Shared {
    /// The revocation list's state for `/v1/health`.
    pub(crate) fn revocation_state(&self, now: u64) -> Option<crate::tap::RevocationState> {
        let list = lock(&self.revocations).clone()?;
        let mut state = crate::tap::RevocationState::of(&list, self.revocation_grace, now);
        state.refresh_error = self
            .uploader
            .as_ref()
            .and_then(|u| u.status().revocation_refresh_error);
        Some(state)
    }

    pub(crate) fn reader_status(&self) -> ReaderStatus {
        lock(&self.reader).clone()
    }

    /// Cancel `cell` (`DELETE`): a reader waiting for a phone for it stops
    /// waiting at once.
    pub(crate) fn cancel(&self, cell: &IntentCell) -> Result<(), CancelRefused> {
        let r = cell.cancel();
        if r.is_ok() {
            self.wake.wake();
        }
        r
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<IntentCell>> {
        lock(&self.registry).intents.get(id).cloned()
    }

    /// The outcome the queue remembers for `key` (durable across restarts).
    fn recall(
        &self,
        key: &str,
        request: &serde_json::Value,
    ) -> Result<Option<State>, CreateRefused> {
        let remembered = match self.queue.recall(key) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "could not look up an idempotency key");
                return Ok(None);
            }
        };
        if serde_json::from_str::<serde_json::Value>(&remembered.request)
            .ok()
            .as_ref()
            != Some(request)
        {
            return Err(CreateRefused::KeyConflict(
                "an intent from before the last restart".into(),
            ));
        }
        Ok(Some(match remembered.outcome {
            RememberedOutcome::Approved { record } => {
                match hex::decode(&record)
                    .ok()
                    .and_then(|b| crate::tap::Approved::from_record(&b).ok())
                {
                    Some(a) => State::Approved(Box::new(a)),
                    None => return Ok(None),
                }
            }
            RememberedOutcome::Declined { code, message } => State::Declined { code, message },
        }))
    }

    /// Whether an intent was created under this idempotency key (a retry:
    /// it gets that intent back, whatever changed since) — in memory, or
    /// remembered by the queue from before a restart.
    pub(crate) fn knows_key(&self, key: &str) -> bool {
        lock(&self.registry).keys.contains_key(key) || matches!(self.queue.recall(key), Ok(Some(_)))
    }

    /// Create the intent, or return the one created under the same key
    /// (`Ok((cell, false))`).
    pub(crate) fn create(
        &self,
        cell: IntentCell,
    ) -> Result<(Arc<IntentCell>, bool), CreateRefused> {
        let mut reg = lock(&self.registry);
        if let Some(key) = cell.key.clone() {
            let key = &key;
            if let Some(existing) = reg.keys.get(key).and_then(|id| reg.intents.get(id)) {
                if existing.request == cell.request {
                    return Ok((existing.clone(), false));
                }
                return Err(CreateRefused::KeyConflict(existing.id.clone()));
            }
            // Not in memory: an intent from before a restart?
            if let Some(state) = self.recall(key, &cell.request)? {
                cell.settle(state);
                let cell = Arc::new(cell);
                reg.keys.insert(key.clone(), cell.id.clone());
                reg.intents.insert(cell.id.clone(), cell.clone());
                return Ok((cell, false));
            }
        }
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(CreateRefused::ShuttingDown);
        }
        let open = reg.intents.values().filter(|c| !c.is_final()).count();
        if open >= self.opts.max_intents {
            return Err(CreateRefused::TooMany(self.opts.max_intents));
        }
        let cell = Arc::new(cell);
        let sent = lock(&self.intents_tx)
            .as_ref()
            .is_some_and(|tx| tx.send(cell.clone()).is_ok());
        if !sent {
            return Err(CreateRefused::ShuttingDown);
        }
        if let Some(key) = &cell.key {
            reg.keys.insert(key.clone(), cell.id.clone());
        }
        reg.intents.insert(cell.id.clone(), cell.clone());
        Ok((cell, true))
    }

    /// Intents not finished, oldest first, and the one the reader works on.
    pub(crate) fn open_intents(&self) -> Vec<Arc<IntentCell>> {
        let reg = lock(&self.registry);
        let mut open: Vec<_> = reg
            .intents
            .values()
            .filter(|c| !c.is_final())
            .cloned()
            .collect();
        open.sort_by_key(|c| c.deadline);
        open
    }

    /// Expire what is due; forget the oldest finished intents past `retain`.
    fn housekeeping(&self) {
        let now = Instant::now();
        let mut reg = lock(&self.registry);
        let mut expired = false;
        for c in reg.intents.values() {
            expired |= c.expire_if_due(now);
        }
        if expired {
            self.wake.wake();
        }
        let mut finished: Vec<(Instant, String, Option<String>)> = reg
            .intents
            .values()
            .filter_map(|c| c.finished_at().map(|t| (t, c.id.clone(), c.key.clone())))
            .collect();
        if finished.len() > self.opts.retain {
            finished.sort();
            let excess = finished.len() - self.opts.retain;
            for (_, id, key) in finished.into_iter().take(excess) {
                reg.intents.remove(&id);
                if let Some(k) = key {
                    reg.keys.remove(&k);
                }
            }
        }
    }
}

mod intents;
mod reader;
mod uploader;

pub(crate) use intents::*;
use reader::Reader;
use uploader::UploadInner;
pub(crate) use uploader::Uploader;

// ---------------------------------------------------------------- daemon

/// The daemon, assembled and ready to serve.
pub struct Daemon {
    shared: Arc<Shared>,
    reader: Reader,
    /// Cancelled at shutdown: ends the reader's waits, and it stops.
    stop: Cancel,
}

impl core::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Daemon")
            .field("terminal", &self.shared.terminal)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// A daemon for `config` with its engine and reader (from
    /// [`crate::app::engine`] and [`crate::app::field`]). With a `[host]`
    /// section it uploads in the background.
    pub fn new(
        config: &Config,
        engine: Engine,
        field: Field,
        opts: Options,
    ) -> Result<Self, Error> {
        let wake = Wake::default();
        let (intents_tx, intents_rx) = mpsc::channel();
        let (updates_tx, updates_rx) = mpsc::channel();
        let revocations = Arc::new(Mutex::new(engine.ctx.revocations.clone()));
        let uploader = match &config.host {
            Some(host) => {
                let client = upload::client(config, &engine.ctx)?;
                let key = tapstack_certs::read_private_key(&config.path(&config.terminal.key))?;
                let mut ctx = TerminalContext::with_backend(
                    engine.ctx.certificate.clone(),
                    &key,
                    engine.ctx.trust.clone(),
                    engine.ctx.backend(),
                )
                .map_err(|e| Error::Upload {
                    detail: format!("terminal key: {e}"),
                })?;
                ctx.revocations = engine.ctx.revocations.clone();
                Some(Arc::new(Uploader {
                    inner: tokio::sync::Mutex::new(UploadInner { client, ctx }),
                    status: Mutex::new(SyncStatus::default()),
                    kick: Notify::new(),
                    queue: engine.queue.clone(),
                    batch: host.batch_size,
                    interval: Duration::from_secs(host.sync_interval_secs),
                    after_taps: host.sync_after_taps,
                    revocations_path: config.trust.revocations.as_ref().map(|p| config.path(p)),
                    updates: updates_tx,
                    wake: wake.clone(),
                    revocations: revocations.clone(),
                }))
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry::default()),
            intents_tx: Mutex::new(Some(intents_tx)),
            queue: engine.queue.clone(),
            uploader,
            reader: Mutex::new(ReaderStatus {
                connection: field.describe(),
                ok: true,
                running: true,
                ..Default::default()
            }),
            shutting_down: AtomicBool::new(false),
            wake: wake.clone(),
            revocations,
            revocation_grace: engine.revocation_grace,
            terminal: TerminalInfo {
                name: engine.ctx.certificate.common_name().to_string(),
                terms: engine.terms(),
                limits: engine.limits.clone(),
                kiosk_site: config.kiosk.as_ref().map(|k| k.site.clone()),
                tap_timeout: Duration::from_secs(config.terminal.tap_timeout_secs),
            },
            opts: opts.clone(),
        });
        let stop = Cancel::new();
        let reader = Reader {
            engine,
            field,
            intents: intents_rx,
            updates: updates_rx,
            shared: shared.clone(),
            stop: stop.clone(),
            wake,
            open_command: config
                .kiosk
                .as_ref()
                .map(|k| k.open_command.clone())
                .unwrap_or_default(),
            approved_since_kick: 0,
        };
        Ok(Daemon {
            shared,
            reader,
            stop,
        })
    }

    /// Run with `front` (the local API: `api.rs` passes its HTTP server,
    /// see `Daemon::serve`) until `shutdown` completes (or the reader thread
    /// dies: an error). Then: stop `front` and the reader (it finishes a tap
    /// in flight and cancels what waits), let open requests finish (up to
    /// [`Options::grace`]), stop the uploader.
    pub(crate) async fn serve_with<F, Fut>(
        self,
        front: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error>
    where
        F: FnOnce(Arc<Shared>, watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Daemon {
            shared,
            reader,
            stop,
        } = self;
        // Should this future be dropped half-way, the reader still stops.
        let _guard = StopReader {
            shared: shared.clone(),
            stop: stop.clone(),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("tap-reader".into())
            .spawn(move || {
                reader.run();
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::Store {
                detail: format!("reader thread: {e}"),
            })?;
        let uploader = shared
            .uploader
            .clone()
            .map(|u| tokio::spawn(u.run(stop_rx.clone(), shared.opts.backoff_max)));
        let janitor = {
            let shared = shared.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tokio::select! {
                        _ = tick.tick() => shared.housekeeping(),
                        () = crate::daemon::stopped(&mut stop) => return,
                    }
                }
            })
        };
        let http = tokio::spawn(front(shared.clone(), stop_rx.clone()));

        tokio::pin!(shutdown);
        let reader_died = tokio::select! {
            () = &mut shutdown => false,
            _ = &mut done_rx => true,
        };
        tracing::info!("shutting down");
        shared.shutting_down.store(true, Ordering::SeqCst);
        stop.cancel();
        let _ = stop_tx.send(true);
        // No new intents reach the reader; it drains and cancels the queue.
        lock(&shared.intents_tx).take();
        if !reader_died {
            let _ = done_rx.await;
        }
        // Whatever the reader did not take up is cancelled too.
        for c in shared.open_intents() {
            c.settle(State::Cancelled(CancelReason::Shutdown));
        }
        let grace = shared.opts.grace;
        let _ = tokio::time::timeout(grace, async {
            let _ = janitor.await;
        })
        .await;
        let http_abort = http.abort_handle();
        if tokio::time::timeout(grace, http).await.is_err() {
            http_abort.abort();
        }
        if let Some(u) = uploader {
            let abort = u.abort_handle();
            if tokio::time::timeout(grace, u).await.is_err() {
                abort.abort();
            }
        }
        if reader_died {
            return Err(Error::Store {
                detail: "the reader thread stopped unexpectedly".into(),
            });
        }
        Ok(())
    }
}

/// Tells the reader thread to stop (finishing a tap in flight) when dropped.
struct StopReader {
    shared: Arc<Shared>,
    stop: Cancel,
}

impl Drop for StopReader {
    fn drop(&mut self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.stop.cancel();
        lock(&self.shared.intents_tx).take();
    }
}

/// Completes once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
