//! PC/SC driver (pcsc-lite through the `pcsc` crate): `pcsc:<reader name>`.
//!
//! - Waiting uses `SCardGetStatusChange` on the reader and on pcscd's PnP
//!   notification pseudo-reader, in slices so a [`Cancel`] is seen promptly.
//! - A reader that disappears, or pcscd itself stopping (context invalid,
//!   service stopped), is waited for: the context is established again and
//!   the wait goes on until its timeout ([`ReaderError::ReaderGone`] then).
//! - Transmit runs on a per-session worker thread so that the transmit
//!   timeout holds even though `SCardTransmit` has none; receive buffers are
//!   sized for extended APDUs.
//! - Presence is read with `SCardGetStatusChange` (never through the card
//!   handle, which may be busy), comparing pcscd's event counter so a card
//!   swapped for another counts as removed.

use std::ffi::CString;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ::pcsc::{
    Attribute, Card, Context, Disposition, Error as PcscError, Protocols, ReaderState, Scope,
    ShareMode, State,
};

use crate::{
    remaining, sleep_cancellable, wait_for, Cancel, Capabilities, Connection, Driver, OpenOptions,
    Reader, ReaderDescriptor, ReaderError, ReaderInfo, Session, Step, TargetInfo, TargetProtocol,
};

/// Longest status-change wait before looking at the cancel token again.
const SLICE: Duration = Duration::from_millis(100);
/// Pause before trying to reach a pcscd that is gone.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);
/// Longest extended APDU (4 header + 3 Lc + 65535 + 2 Le) and response.
pub const MAX_APDU: usize = 65_544;

/// A PC/SC reader.
pub struct PcscReader {
    ctx: Option<Context>,
    /// The name asked for; `None`: the first reader.
    wanted: Option<String>,
    name: Option<CString>,
    connection: String,
    share: ShareMode,
    timeout: Duration,
}

impl std::fmt::Debug for PcscReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcscReader")
            .field("connection", &self.connection)
            .field("connected", &self.ctx.is_some())
            .finish_non_exhaustive()
    }
}

fn is_service_gone(e: PcscError) -> bool {
    matches!(
        e,
        PcscError::NoService
            | PcscError::ServiceStopped
            | PcscError::InvalidHandle
            | PcscError::CommError
    )
}

impl PcscReader {
    /// Reach pcscd and find the reader (`None`: the first one).
    pub fn open(reader: Option<&str>, opts: &OpenOptions) -> Result<Self, ReaderError> {
        let mut r = PcscReader {
            ctx: None,
            wanted: reader.map(str::to_owned),
            name: None,
            connection: Connection::Pcsc {
                reader: reader.map(str::to_owned),
            }
            .to_string(),
            share: if opts.exclusive {
                ShareMode::Exclusive
            } else {
                ShareMode::Shared
            },
            timeout: opts.transmit_timeout,
        };
        r.resolve()?;
        Ok(r)
    }

    fn gone(&self, source: Option<PcscError>) -> ReaderError {
        ReaderError::ReaderGone {
            reader: self.connection.clone(),
            source: source.map(|e| Box::new(e) as crate::BoxError),
        }
    }

    fn map(&mut self, e: PcscError) -> ReaderError {
        match e {
            PcscError::RemovedCard
            | PcscError::NoSmartcard
            | PcscError::ResetCard
            | PcscError::UnpoweredCard => ReaderError::Removed,
            PcscError::Timeout => ReaderError::Timeout,
            PcscError::Cancelled => ReaderError::Cancelled,
            PcscError::SharingViolation => ReaderError::Busy {
                reader: self.connection.clone(),
            },
            e if is_service_gone(e) => {
                self.ctx = None;
                self.gone(Some(e))
            }
            PcscError::UnknownReader
            | PcscError::ReaderUnavailable
            | PcscError::NoReadersAvailable => {
                self.name = None;
                self.gone(Some(e))
            }
            e => ReaderError::Transport {
                reader: self.connection.clone(),
                source: Box::new(e),
            },
        }
    }

    fn context(&mut self) -> Result<&Context, ReaderError> {
        if self.ctx.as_ref().is_some_and(|c| c.is_valid().is_err()) {
            self.ctx = None;
        }
        if self.ctx.is_none() {
            let ctx = Context::establish(Scope::User).map_err(|e| self.gone(Some(e)))?;
            self.ctx = Some(ctx);
        }
        self.ctx.as_ref().ok_or_else(|| self.gone(None))
    }

    /// Find the reader's name among those attached now.
    fn resolve(&mut self) -> Result<CString, ReaderError> {
        let listed = match self.context()?.list_readers_owned() {
            Ok(l) => l,
            Err(PcscError::NoReadersAvailable) => Vec::new(),
            Err(e) => return Err(self.map(e)),
        };
        let found = match &self.wanted {
            Some(w) => listed
                .into_iter()
                .find(|n| n.to_str().is_ok_and(|s| s == w)),
            None => listed.into_iter().next(),
        };
        match found {
            Some(n) => {
                self.name = Some(n.clone());
                if self.wanted.is_none() {
                    self.connection = format!("pcsc:{}", n.to_string_lossy());
                    self.wanted = Some(n.to_string_lossy().into_owned());
                }
                Ok(n)
            }
            None => Err(ReaderError::NoReader {
                connection: self.connection.clone(),
            }),
        }
    }

    /// The reader's state now (PRESENT, MUTE, …) and pcscd's event counter.
    fn state(
        &mut self,
        name: &CString,
        wait: Duration,
        current: Option<&ReaderState>,
    ) -> Result<ReaderState, ReaderError> {
        let mut states = vec![current
            .map(|s| ReaderState::new(name.clone(), s.event_state() & !State::CHANGED))
            .unwrap_or_else(|| ReaderState::new(name.clone(), State::UNAWARE))];
        let r = self.context()?.get_status_change(wait, &mut states);
        match r {
            Ok(()) | Err(PcscError::Timeout) => states.pop().ok_or_else(|| self.gone(None)),
            Err(e) => Err(self.map(e)),
        }
    }

    fn capabilities_of(card: &Card) -> Capabilities {
        let max = card
            .get_attribute_owned(Attribute::Maxinput)
            .ok()
            .and_then(|v| {
                v.get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            })
            .filter(|n| *n >= 261);
        match max {
            Some(n) => Capabilities {
                max_apdu: n.min(MAX_APDU),
                extended_length: n > 261,
                baud: None,
            },
            // The reader does not say: pcsc-lite passes extended APDUs on.
            None => Capabilities {
                max_apdu: MAX_APDU,
                extended_length: true,
                baud: None,
            },
        }
    }

    fn open_card(
        &mut self,
        name: &CString,
        state: &ReaderState,
    ) -> Result<(Card, TargetInfo, Capabilities), ReaderError> {
        let share = self.share;
        let card = match self
            .context()?
            .connect(name, share, Protocols::T0 | Protocols::T1)
        {
            Ok(c) => c,
            Err(e) => return Err(self.map(e)),
        };
        let status = card.status2_owned();
        let (atr, protocol) = match &status {
            Ok(s) => (s.atr().to_vec(), s.protocol2()),
            Err(_) => (state.atr().to_vec(), None),
        };
        let protocol = match protocol {
            Some(::pcsc::Protocol::T0) => TargetProtocol::T0,
            Some(::pcsc::Protocol::T1) => TargetProtocol::T1,
            _ => TargetProtocol::Other,
        };
        let capabilities = Self::capabilities_of(&card);
        let target = TargetInfo {
            uid: Vec::new(),
            atr: Some(atr),
            ats: None,
            protocol,
        };
        Ok((card, target, capabilities))
    }
}

impl Reader for PcscReader {
    fn info(&self) -> ReaderInfo {
        ReaderInfo {
            name: self.wanted.clone().unwrap_or_default(),
            connection: self.connection.clone(),
            driver: Driver::Pcsc,
            capabilities: Capabilities {
                max_apdu: MAX_APDU,
                extended_length: true,
                baud: None,
            },
        }
    }

    fn wait_for_target(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Box<dyn Session + '_>, ReaderError> {
        let mut last: Option<ReaderState> = None;
        let (name, count, card, target, capabilities) = wait_for(timeout, cancel, |left| {
            let name = match self.name.clone() {
                Some(n) => n,
                None => match self.resolve() {
                    Ok(n) => n,
                    Err(e) => {
                        last = None;
                        wait_pnp_change(RECONNECT_PAUSE.min(left), cancel);
                        return Step::Trouble(e, Duration::ZERO);
                    }
                },
            };
            // Waits up to SLICE for a change: no pause after it.
            let state = match self.state(&name, SLICE.min(left), last.as_ref()) {
                Ok(s) => s,
                Err(e) => {
                    last = None;
                    return Step::Trouble(e, RECONNECT_PAUSE);
                }
            };
            let ev = state.event_state();
            if ev.intersects(State::UNKNOWN | State::IGNORE | State::UNAVAILABLE) {
                self.name = None;
                last = None;
                return Step::Trouble(self.gone(None), Duration::ZERO);
            }
            let mut step = Step::Idle(Duration::ZERO);
            if ev.contains(State::PRESENT) && !ev.contains(State::MUTE) {
                match self.open_card(&name, &state) {
                    Ok((card, target, capabilities)) => {
                        let count = state.event_count();
                        return Step::Found((name, count, card, target, capabilities));
                    }
                    Err(ReaderError::Removed) => {}
                    Err(e @ ReaderError::ReaderGone { .. }) => {
                        step = Step::Trouble(e, Duration::ZERO)
                    }
                    Err(e) => return Step::Stop(e),
                }
            }
            last = Some(state);
            step
        })?;
        Ok(Box::new(PcscSession {
            name,
            count,
            reader: self,
            target,
            capabilities,
            worker: Worker::spawn(card),
            stale: None,
        }))
    }

    fn set_transmit_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

type Reply = Result<Vec<u8>, PcscError>;

/// The thread that owns the card handle and runs `SCardTransmit`.
#[derive(Debug)]
struct Worker {
    jobs: Option<mpsc::Sender<(Vec<u8>, mpsc::SyncSender<Reply>)>>,
}

impl Worker {
    fn spawn(card: Card) -> Self {
        let (tx, rx) = mpsc::channel::<(Vec<u8>, mpsc::SyncSender<Reply>)>();
        let spawned = std::thread::Builder::new()
            .name("pcsc-card".into())
            .spawn(move || {
                let mut buf = vec![0u8; ::pcsc::MAX_BUFFER_SIZE_EXTENDED];
                while let Ok((apdu, reply)) = rx.recv() {
                    let r = card.transmit(&apdu, &mut buf).map(<[u8]>::to_vec);
                    let _ = reply.send(r);
                }
                if let Err((_, e)) = card.disconnect(Disposition::LeaveCard) {
                    tracing::debug!(error = %e, "PC/SC: disconnect failed");
                }
            });
        Worker {
            jobs: spawned.ok().map(|_| tx),
        }
    }
}

struct PcscSession<'r> {
    reader: &'r mut PcscReader,
    name: CString,
    count: u32,
    target: TargetInfo,
    capabilities: Capabilities,
    worker: Worker,
    /// The reply channel of a transmit that timed out.
    stale: Option<mpsc::Receiver<Reply>>,
}

impl PcscSession<'_> {
    fn present_now(
        &mut self,
        wait: Duration,
        last: Option<&ReaderState>,
    ) -> Result<(bool, ReaderState), ReaderError> {
        let name = self.name.clone();
        let s = self.reader.state(&name, wait, last)?;
        let ev = s.event_state();
        let present = ev.contains(State::PRESENT)
            && !ev.contains(State::MUTE)
            && s.event_count() == self.count;
        if ev.intersects(State::UNKNOWN | State::IGNORE | State::UNAVAILABLE) {
            return Err(self.reader.gone(None));
        }
        Ok((present, s))
    }
}

impl Session for PcscSession<'_> {
    fn transport(&self) -> Duration {
        // pcscd's socket and the reader's USB frames.
        Duration::from_millis(1)
    }
    fn target(&self) -> &TargetInfo {
        &self.target
    }

    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ReaderError> {
        if apdu.len() > self.capabilities.max_apdu {
            return Err(ReaderError::ApduTooLong {
                len: apdu.len(),
                max: self.capabilities.max_apdu,
            });
        }
        let timeout = self.reader.timeout;
        if let Some(stale) = self.stale.take() {
            // The card is still busy with an exchange that timed out.
            if stale.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
                self.stale = Some(stale);
                return Err(ReaderError::Timeout);
            }
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let sent = self
            .worker
            .jobs
            .as_ref()
            .is_some_and(|j| j.send((apdu.to_vec(), tx)).is_ok());
        if !sent {
            return Err(self.reader.gone(None));
        }
        match rx.recv_timeout(timeout) {
            // vpcd answers nothing when the card vanished mid-exchange, and
            // pcscd may not have noticed the removal yet.
            Ok(Ok(r)) if r.len() < 2 => {
                let (present, s) = self.present_now(Duration::ZERO, None)?;
                if !present || !self.present_now(Duration::from_secs(1), Some(&s))?.0 {
                    return Err(ReaderError::Removed);
                }
                Ok(r)
            }
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.reader.map(e)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.stale = Some(rx);
                Err(ReaderError::Timeout)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(self.reader.gone(None)),
        }
    }

    fn is_present(&mut self) -> Result<bool, ReaderError> {
        Ok(self.present_now(Duration::ZERO, None)?.0)
    }

    fn wait_removed(&mut self, timeout: Duration, cancel: &Cancel) -> Result<(), ReaderError> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            let left = remaining(deadline, cancel)?;
            match self.present_now(SLICE.min(left), last.as_ref()) {
                Ok((false, _)) => return Ok(()),
                Ok((true, s)) => last = Some(s),
                // pcscd or the reader went away: so did the card.
                Err(ReaderError::ReaderGone { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }
}

/// PC/SC readers attached now.
pub fn discover() -> Vec<ReaderDescriptor> {
    let Ok(ctx) = Context::establish(Scope::User) else {
        return Vec::new();
    };
    ctx.list_readers_owned()
        .unwrap_or_default()
        .into_iter()
        .map(|n| {
            let name = n.to_string_lossy().into_owned();
            ReaderDescriptor {
                connection: format!("pcsc:{name}"),
                name,
                driver: Driver::Pcsc,
            }
        })
        .collect()
}

/// Wait up to `d` for pcscd's reader list to change (PnP notification);
/// returns early on cancel. Sleeps when pcscd is not there.
pub fn wait_pnp_change(d: Duration, cancel: &Cancel) {
    let end = Instant::now() + d;
    let Ok(ctx) = Context::establish(Scope::User) else {
        sleep_cancellable(d, cancel);
        return;
    };
    let mut states = vec![ReaderState::new(::pcsc::PNP_NOTIFICATION(), State::UNAWARE)];
    // The first call reports the current state.
    if ctx.get_status_change(Duration::ZERO, &mut states).is_err() {
        sleep_cancellable(d, cancel);
        return;
    }
    states.iter_mut().for_each(ReaderState::sync_current_state);
    while !cancel.is_cancelled() {
        let now = Instant::now();
        if now >= end {
            return;
        }
        match ctx.get_status_change(SLICE.min(end - now), &mut states) {
            Ok(()) => return,
            Err(PcscError::Timeout) => {}
            Err(_) => {
                sleep_cancellable(end.saturating_duration_since(Instant::now()), cancel);
                return;
            }
        }
    }
}
