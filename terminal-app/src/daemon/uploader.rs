//! The background uploader and `POST /v1/sync`.

use super::*;

#[derive(Debug)]
pub(super) struct UploadInner {
    pub(super) client: HostClient,
    pub(super) ctx: TerminalContext,
}

/// The background uploader and `POST /v1/sync`: one sync at a time.
#[derive(Debug)]
pub(crate) struct Uploader {
    pub(super) inner: tokio::sync::Mutex<UploadInner>,
    pub(super) status: Mutex<SyncStatus>,
    pub(super) kick: Notify,
    pub(super) queue: Arc<dyn QueueStore>,
    pub(super) batch: usize,
    pub(super) interval: Duration,
    pub(crate) after_taps: u32,
    pub(super) revocations_path: Option<PathBuf>,
    pub(super) updates: mpsc::Sender<Update>,
    /// Ends the reader's wait for a phone, so it takes the update at once.
    pub(super) wake: Wake,
    pub(super) revocations: Arc<Mutex<Option<RevocationList>>>,
}

impl Uploader {
    pub(crate) fn status(&self) -> SyncStatus {
        lock(&self.status).clone()
    }

    /// Upload now (waits for a sync already running), publish the result,
    /// hand a newer revocation list and the acknowledgement to the reader.
    pub(crate) async fn sync_now(&self) -> Result<SyncReport, Error> {
        let mut guard = self.inner.lock().await;
        let UploadInner { client, ctx } = &mut *guard;
        let started = unix_now();
        let result = upload::sync(
            &self.queue,
            client,
            self.batch,
            ctx,
            self.revocations_path.clone(),
        )
        .await;
        if let Ok(report) = &result {
            if report.revocation_list.is_some() {
                if let Some(list) = &ctx.revocations {
                    *lock(&self.revocations) = Some(list.clone());
                    let _ = self.updates.send(Update::Revocations(list.clone()));
                }
            }
        }
        // Even a failed sync may have pruned acknowledged batches.
        let _ = self.updates.send(Update::Synced);
        self.wake.wake();
        drop(guard);
        let mut s = lock(&self.status);
        s.attempted_at = Some(started);
        s.revocation_refresh_error = match &result {
            Err(e @ Error::RevocationRefresh { .. }) => Some(e.to_string()),
            // A sync that failed before the refresh says nothing new about it.
            Err(_) => s.revocation_refresh_error.take(),
            Ok(_) => None,
        };
        match &result {
            Ok(report) => {
                s.ok = Some(true);
                s.report = Some(report.clone());
                s.error = None;
                s.last_success_at = Some(unix_now());
                s.consecutive_failures = 0;
            }
            Err(e) => {
                s.ok = Some(false);
                s.error = Some(e.to_string());
                s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            }
        }
        result
    }

    /// Sync at start-up, then every `interval`, after every `after_taps`
    /// approvals, and after failures with exponential backoff and jitter.
    pub(super) async fn run(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
        backoff_max: Duration,
    ) {
        let mut failures = 0u32;
        let mut wait = Duration::ZERO;
        loop {
            lock(&self.status).next_attempt_at = Some(unix_now().saturating_add(wait.as_secs()));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.kick.notified() => {}
                () = crate::daemon::stopped(&mut stop) => return,
            }
            lock(&self.status).next_attempt_at = None;
            match self.sync_now().await {
                Ok(report) => {
                    failures = 0;
                    tracing::info!(
                        uploaded = report.uploaded,
                        acked = report.acked_seq,
                        "synced"
                    );
                    wait = self.interval;
                }
                Err(e) => {
                    wait = upload::backoff(failures, backoff_max, &mut OsRng);
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, retry_in = ?wait, "sync failed");
                }
            }
        }
    }
}
