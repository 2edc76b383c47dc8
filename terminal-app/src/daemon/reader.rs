//! The reader thread: one intent at a time, the tap, the outcome.

use super::*;

/// How long the reader rests after a reader error before it waits again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// How long an intent waits for the start-up sync of a fresh queue.
const SYNC_WAIT: Duration = Duration::from_secs(5);

/// Store a decline under the intent's idempotency key (so a retry after a
/// restart gets it); a failure to store is logged, not fatal.
fn remember_decline(queue: &dyn QueueStore, cell: &IntentCell, d: &Decline) {
    let Some(key) = &cell.key else { return };
    let key = IntentKey {
        key: key.clone(),
        request: serde_json::to_vec(&cell.request).unwrap_or_default(),
    };
    if let Err(e) = queue.remember_decline(&key, d.code(), &d.to_string()) {
        tracing::warn!(intent = %cell.id, error = %e, "could not remember the decline for its idempotency key");
    }
}

/// How one tap ended, for the reader loop.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Approved,
    Declined,
    Confirm,
}

pub(super) struct Reader {
    pub(super) engine: Engine,
    pub(super) field: Field,
    pub(super) intents: mpsc::Receiver<Arc<IntentCell>>,
    pub(super) updates: mpsc::Receiver<Update>,
    pub(super) shared: Arc<Shared>,
    /// Cancelled at shutdown: ends every wait, and the loop.
    pub(super) stop: Cancel,
    pub(super) wake: Wake,
    pub(super) open_command: Vec<String>,
    pub(super) approved_since_kick: u32,
}

impl Reader {
    pub(super) fn run(mut self) {
        lock(&self.shared.reader).running = true;
        loop {
            let cell = match self.intents.recv_timeout(Duration::from_secs(1)) {
                Ok(cell) => cell,
                // Idle: keep the revocation list and risk state current.
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.apply_updates();
                    if self.engine.queue.integrity().storage_error.is_some() {
                        // Try to recover (disk has room again?).
                        let _ = self.engine.queue.ready();
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if self.stop.is_cancelled() {
                cell.settle(State::Cancelled(CancelReason::Shutdown));
                continue;
            }
            lock(&self.shared.reader).active_intent = Some(cell.id.clone());
            self.run_intent(&cell);
            lock(&self.shared.reader).active_intent = None;
        }
        lock(&self.shared.reader).running = false;
        tracing::info!("reader stopped");
    }

    fn apply_updates(&mut self) {
        let mut rebuild = false;
        while let Ok(u) = self.updates.try_recv() {
            match u {
                Update::Revocations(list) => {
                    if self
                        .engine
                        .ctx
                        .revocations
                        .as_ref()
                        .is_none_or(|cur| list.number > cur.number)
                    {
                        tracing::info!(number = list.number, "new revocation list");
                        self.engine.ctx.revocations = Some(list);
                    }
                }
                Update::Synced => rebuild = true,
            }
        }
        if rebuild {
            match crate::tap::risk_state(self.engine.queue.as_ref()) {
                Ok(state) => self.engine.risk = state,
                Err(e) => {
                    tracing::error!(error = %e, "could not rebuild the risk state from the queue; keeping the old one")
                }
            }
        }
    }

    /// Decline `cell` without a tap, remembering the outcome under its key.
    fn decline(&self, cell: &IntentCell, d: &Decline) {
        tracing::info!(intent = %cell.id, code = d.code(), "declined");
        remember_decline(self.engine.queue.as_ref(), cell, d);
        cell.settle(State::Declined {
            code: d.code().into(),
            message: d.to_string(),
        });
    }

    /// Before asking for a phone: can the terminal approve at all? A queue
    /// that has not learnt the host's head yet gets a few seconds for the
    /// start-up sync.
    fn check_ready(&mut self, cell: &IntentCell) -> bool {
        let mut waited = Duration::ZERO;
        loop {
            match self.engine.ready() {
                Ok(()) => return true,
                Err(Decline::SyncRequired) if waited < SYNC_WAIT => {
                    if let Some(up) = &self.shared.uploader {
                        up.kick.notify_one();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    waited += Duration::from_millis(50);
                    if cell.is_final() {
                        return false;
                    }
                }
                Err(d) => {
                    self.decline(cell, &d);
                    return false;
                }
            }
        }
    }

    fn run_intent(&mut self, cell: &Arc<IntentCell>) {
        if !cell.activate() {
            return; // cancelled or expired while queued
        }
        if !self.check_ready(cell) {
            return;
        }
        let key = cell.key.as_ref().map(|k| IntentKey {
            key: k.clone(),
            request: serde_json::to_vec(&cell.request).unwrap_or_default(),
        });
        loop {
            // Armed first: whatever changes after the look below ends the wait.
            let wait = self.wake.arm(&self.stop);
            self.apply_updates();
            if cell.is_final() {
                return;
            }
            if self.stop.is_cancelled() {
                cell.settle(State::Cancelled(CancelReason::Shutdown));
                return;
            }
            let now = Instant::now();
            if cell.expire_if_due(now) {
                return;
            }
            let left = cell
                .deadline
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            let mut outcome: Option<Outcome> = None;
            let engine = &mut self.engine;
            let open_command = &self.open_command;
            // The phone's leaving is waited for until shutdown only: a
            // phone resting on the reader must not tap the next intent.
            let result = self.field.with_phone(left, &wait, &self.stop, &mut |link| {
                if !cell.begin_reading() {
                    // Cancelled or expired a moment ago: leave the phone alone.
                    return TapResult::Declined(Decline::BadIntent {
                        detail: "intent no longer open".into(),
                    });
                }
                let r = engine.tap_keyed(&cell.intent, key.clone(), link, unix_now(), &mut OsRng);
                // Publish at once: the field may wait a while for the phone
                // to leave before `with_phone` returns.
                match &r {
                    TapResult::Approved(a) => {
                        tracing::info!(intent = %cell.id, seq = a.seq, "approved");
                        if let Some(slot) = a.slot {
                            open_slot(open_command, slot, a.seq);
                        }
                        cell.settle(State::Approved(Box::new(a.clone())));
                        outcome = Some(Outcome::Approved);
                    }
                    TapResult::Declined(d) => {
                        tracing::info!(intent = %cell.id, code = d.code(), "declined");
                        remember_decline(engine.queue.as_ref(), cell, d);
                        cell.settle(State::Declined {
                            code: d.code().into(),
                            message: d.to_string(),
                        });
                        outcome = Some(Outcome::Declined);
                    }
                    TapResult::ConfirmOnPhone => {
                        cell.settle(State::ConfirmOnPhone);
                        outcome = Some(Outcome::Confirm);
                    }
                }
                r
            });
            if let Err(e) = &result {
                tracing::warn!(error = %e, "reader");
                let mut st = lock(&self.shared.reader);
                st.ok = false;
                st.last_error = Some(e.to_string());
                st.last_error_at = Some(unix_now());
            } else {
                lock(&self.shared.reader).ok = true;
            }
            if outcome.is_some() {
                lock(&self.shared.reader).taps += 1;
            }
            match outcome {
                Some(Outcome::Approved) => {
                    self.approved();
                    return;
                }
                Some(Outcome::Declined) => return,
                Some(Outcome::Confirm) => {}
                None if result.is_err() => {
                    // The reader failed (unplugged, daemon gone): retry in a
                    // while, still watching for cancellation and expiry.
                    wait.sleep(ERROR_PAUSE);
                }
                None => {}
            }
        }
    }

    fn approved(&mut self) {
        let Some(up) = &self.shared.uploader else {
            return;
        };
        if up.after_taps == 0 {
            return;
        }
        self.approved_since_kick += 1;
        if self.approved_since_kick >= up.after_taps {
            self.approved_since_kick = 0;
            up.kick.notify_one();
        }
    }
}

/// The kiosk's slot-open hook, off the reader thread (a slow hook must
/// not hold up the next customer). Failures are logged; the pickup is
/// recorded either way.
fn open_slot(open_command: &[String], slot: u16, seq: u64) {
    let Some(mut cmd) = crate::config::open_slot_command(open_command, slot) else {
        tracing::info!(slot, seq, "open slot (no open_command configured)");
        return;
    };
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let spawned = std::thread::Builder::new().name("open-slot".into()).spawn(move || match cmd.status() {
        Ok(s) if s.success() => tracing::info!(slot, seq, "slot opened"),
        Ok(s) => tracing::error!(slot, seq, status = %s, "open_command failed: open the slot by hand"),
        Err(e) => tracing::error!(slot, seq, error = %e, command = %prog, "open_command could not run: open the slot by hand"),
    });
    if let Err(e) = spawned {
        tracing::error!(slot, seq, error = %e, "open_command thread: open the slot by hand");
    }
}
