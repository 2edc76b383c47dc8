//! The async edge: a [`Reader`] on a dedicated blocking thread, driven from
//! tokio. The thread owns the reader and, between
//! [`AsyncReader::wait_for_target`] and the end of the tap, its session.
//!
//! Every wait takes a [`Cancel`]; dropping the future cancels too (a child
//! token is cancelled on drop), so `tokio::select!` and `tokio::time::timeout`
//! work as expected. Events (target present/removed, reader gone/back) are
//! broadcast to [`AsyncReader::subscribe`]rs.
//!
//! ```
//! # use std::time::Duration;
//! # use tapstack_reader::{asynch::AsyncReader, Cancel, LoopbackReader, ReaderError, TargetInfo, VirtualField};
//! struct Card;
//! impl VirtualField for Card {
//!     fn arrive(&mut self) -> Option<TargetInfo> { Some(TargetInfo::iso_dep(&[8, 1, 2, 3], &[5, 0x78, 0x80, 0x70, 2])) }
//!     fn transmit(&mut self, _apdu: &[u8]) -> Result<Vec<u8>, ReaderError> { Ok(vec![0x90, 0x00]) }
//!     fn depart(&mut self) {}
//! }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let reader = AsyncReader::spawn(Box::new(LoopbackReader::new(Box::new(Card))));
//! let target = reader.wait_for_target(Duration::from_secs(1), &Cancel::new()).await?;
//! assert_eq!(target.uid, [8, 1, 2, 3]);
//! assert_eq!(reader.transmit(vec![0x00, 0xA4, 0x04, 0x00]).await?, [0x90, 0x00]);
//! reader.wait_removed(Duration::from_secs(1), &Cancel::new()).await?;
//! # Ok::<(), ReaderError>(()) }).unwrap();
//! ```

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tapstack_protocol::apdu::{Command, LinkLimits, Response};
use tokio::sync::{broadcast, oneshot};

use crate::{Cancel, Reader, ReaderError, ReaderEvent, ReaderInfo, Session, TargetInfo};

type Reply<T> = oneshot::Sender<Result<T, ReaderError>>;

enum Job {
    WaitForTarget(Duration, Cancel, Reply<TargetInfo>),
    Transmit(Vec<u8>, Reply<Vec<u8>>),
    TransmitLogical(Command, Option<LinkLimits>, Reply<Response>),
    IsPresent(Reply<bool>),
    WaitRemoved(Duration, Cancel, Reply<()>),
    EndSession(oneshot::Sender<()>),
    SetTimeout(Duration),
}

/// A reader running on its own thread, with an async API.
#[derive(Debug)]
pub struct AsyncReader {
    jobs: Option<mpsc::Sender<Job>>,
    info: ReaderInfo,
    events: broadcast::Sender<ReaderEvent>,
    thread: Option<JoinHandle<()>>,
}

/// Cancels its token when dropped (the future waiting was dropped).
struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

struct Worker {
    events: broadcast::Sender<ReaderEvent>,
    connection: String,
    gone: bool,
}

impl Worker {
    fn note<T>(&mut self, r: &Result<T, ReaderError>) {
        match r {
            Err(e) if e.is_reader_gone() && !self.gone => {
                self.gone = true;
                let _ = self
                    .events
                    .send(ReaderEvent::ReaderDetached(self.connection.clone()));
            }
            Err(ReaderError::Removed) => {
                let _ = self.events.send(ReaderEvent::TargetRemoved);
            }
            Ok(_) if self.gone => {
                self.gone = false;
                let _ = self
                    .events
                    .send(ReaderEvent::ReaderAttached(self.connection.clone()));
            }
            _ => {}
        }
    }

    fn run(mut self, mut reader: Box<dyn Reader>, jobs: mpsc::Receiver<Job>) {
        let mut next = jobs.recv().ok();
        while let Some(job) = next.take() {
            match job {
                Job::WaitForTarget(timeout, cancel, reply) => {
                    match reader.wait_for_target(timeout, &cancel) {
                        Ok(session) => {
                            let target = session.target().clone();
                            let ok: Result<(), ReaderError> = Ok(());
                            self.note(&ok);
                            let _ = self.events.send(ReaderEvent::TargetPresent);
                            let _ = reply.send(Ok(target));
                            next = self.serve(session, &jobs);
                            continue;
                        }
                        Err(e) => {
                            let r = Err(e);
                            self.note(&r);
                            let _ = reply.send(r);
                        }
                    }
                }
                Job::Transmit(_, reply) => {
                    let _ = reply.send(Err(ReaderError::NoSession));
                }
                Job::TransmitLogical(_, _, reply) => {
                    let _ = reply.send(Err(ReaderError::NoSession));
                }
                Job::IsPresent(reply) => {
                    let _ = reply.send(Ok(false));
                }
                Job::WaitRemoved(_, _, reply) => {
                    let _ = reply.send(Ok(()));
                }
                Job::EndSession(done) => {
                    let _ = done.send(());
                }
                Job::SetTimeout(t) => reader.set_transmit_timeout(t),
            }
            next = jobs.recv().ok();
        }
    }

    /// Serve jobs on an open session; returns the job that ended it (a new
    /// wait), if any.
    fn serve(
        &mut self,
        mut session: Box<dyn Session + '_>,
        jobs: &mpsc::Receiver<Job>,
    ) -> Option<Job> {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Transmit(apdu, reply) => {
                    let r = session.transmit(&apdu);
                    self.note(&r);
                    let _ = reply.send(r);
                }
                Job::TransmitLogical(cmd, limits, reply) => {
                    let r = match limits {
                        Some(l) => session.transmit_logical_with(cmd, l),
                        None => session.transmit_logical(cmd),
                    };
                    self.note(&r);
                    let _ = reply.send(r);
                }
                Job::IsPresent(reply) => {
                    let r = session.is_present();
                    self.note(&r);
                    let _ = reply.send(r);
                }
                Job::WaitRemoved(timeout, cancel, reply) => {
                    let r = session.wait_removed(timeout, &cancel);
                    if r.is_ok() {
                        let _ = self.events.send(ReaderEvent::TargetRemoved);
                    }
                    let _ = reply.send(r);
                }
                Job::EndSession(done) => {
                    drop(session);
                    let _ = done.send(());
                    return None;
                }
                Job::SetTimeout(_) => {
                    tracing::debug!("transmit timeout change ignored during a session");
                }
                job @ Job::WaitForTarget(..) => return Some(job),
            }
        }
        None
    }
}

impl AsyncReader {
    /// Move `reader` to a new thread.
    pub fn spawn(reader: Box<dyn Reader>) -> Self {
        let info = reader.info();
        let (events, _) = broadcast::channel(64);
        let (tx, rx) = mpsc::channel();
        let worker = Worker {
            events: events.clone(),
            connection: info.connection.clone(),
            gone: false,
        };
        let thread = std::thread::Builder::new()
            .name(format!("reader {}", info.connection))
            .spawn(move || worker.run(reader, rx))
            .ok();
        AsyncReader {
            jobs: thread.as_ref().map(|_| tx),
            info,
            events,
            thread,
        }
    }

    /// The reader's identity as it was when spawned.
    pub fn info(&self) -> &ReaderInfo {
        &self.info
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ReaderEvent> {
        self.events.subscribe()
    }

    async fn call<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, ReaderError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .as_ref()
            .ok_or(ReaderError::WorkerStopped)?
            .send(job(tx))
            .map_err(|_| ReaderError::WorkerStopped)?;
        rx.await.map_err(|_| ReaderError::WorkerStopped)?
    }

    /// Wait for a target and open a session with it (ending any open one).
    pub async fn wait_for_target(
        &self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<TargetInfo, ReaderError> {
        let guard = CancelOnDrop(cancel.child());
        let c = guard.0.clone();
        self.call(move |r| Job::WaitForTarget(timeout, c, r)).await
    }

    /// One wire APDU to the target of the open session.
    pub async fn transmit(&self, apdu: Vec<u8>) -> Result<Vec<u8>, ReaderError> {
        self.call(move |r| Job::Transmit(apdu, r)).await
    }

    /// A logical command (chaining, GET RESPONSE); `limits` as the phone allows.
    pub async fn transmit_logical(
        &self,
        cmd: Command,
        limits: Option<LinkLimits>,
    ) -> Result<Response, ReaderError> {
        self.call(move |r| Job::TransmitLogical(cmd, limits, r))
            .await
    }

    pub async fn is_present(&self) -> Result<bool, ReaderError> {
        self.call(Job::IsPresent).await
    }

    /// Wait until the target left; the session stays open until
    /// [`AsyncReader::end_session`] or the next wait.
    pub async fn wait_removed(
        &self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<(), ReaderError> {
        let guard = CancelOnDrop(cancel.child());
        let c = guard.0.clone();
        self.call(move |r| Job::WaitRemoved(timeout, c, r)).await
    }

    /// End the open session (release the target).
    pub async fn end_session(&self) {
        let (tx, rx) = oneshot::channel();
        if let Some(j) = self.jobs.as_ref() {
            if j.send(Job::EndSession(tx)).is_ok() {
                let _ = rx.await;
            }
        }
    }

    /// Bound on one wire exchange, from the next session on.
    pub fn set_transmit_timeout(&self, timeout: Duration) {
        if let Some(j) = self.jobs.as_ref() {
            let _ = j.send(Job::SetTimeout(timeout));
        }
    }
}

impl Drop for AsyncReader {
    fn drop(&mut self) {
        // The thread ends after the job it is running; do not block on it.
        self.jobs.take();
        drop(self.thread.take());
    }
}
