//! # tapstack-reader
//!
//! One small, blocking, object-safe abstraction over NFC readers, so the
//! terminal does not care whether the merchant plugged in a PC/SC USB reader,
//! a libnfc board or a bare PN532 on a serial line.
//!
//! ```text
//!   open("pcsc:…" | "libnfc:…" | "pn532:…")          LoopbackReader::new(field)
//!        │                                                  │
//!        ▼                                                  ▼
//!   Box<dyn Reader> ──wait_for_target(timeout, cancel)──▶ Box<dyn Session>
//!                                                          │ transmit(apdu) → response + SW
//!                                                          │ transmit_logical(Command) → Response
//!                                                          │   (TerminalLink: chaining, GET RESPONSE)
//!                                                          │ is_present / wait_removed
//! ```
//!
//! Every wait takes a [`Cancel`]: set from any thread, it ends the wait
//! promptly. Blocking drivers look at it between short slices; the native
//! PN532 driver, whose serial line is a tokio stream, races each wait
//! against [`Cancel::cancelled`], so a cancel ends it at once.
//!
//! Reader and transport problems are [`ReaderError`]s (timeout, removal,
//! reader gone, …); what the card application answers — every status word —
//! stays in the response bytes / [`Response`].
//!
//! ```
//! use std::time::Duration;
//! use tapstack_reader::{Cancel, ReaderError};
//! // "emu:" is the in-process emulator: built with LoopbackReader, not opened.
//! assert!(matches!(tapstack_reader::open("emu:"), Err(ReaderError::BadConnectionString { .. })));
//! let cancel = Cancel::new();
//! cancel.cancel();
//! assert!(cancel.is_cancelled());
//! # let _ = Duration::ZERO;
//! ```
//!
//! Drivers, each behind a cargo feature (all on by default): [`pcsc`]
//! (`pcsc`), [`libnfc`] (`libnfc`), [`pn532`] (`pn532`) and [`loopback`]
//! (`loopback`). See `docs/readers.md`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tapstack_protocol::apdu::{
    Command, ExchangeError, LinkError, LinkLimits, Response, TerminalLink,
};

mod connection;
#[cfg(feature = "libnfc")]
pub mod libnfc;
#[cfg(feature = "loopback")]
pub mod loopback;
#[cfg(feature = "pcsc")]
pub mod pcsc;
#[cfg(feature = "pn532")]
pub mod pn532;

pub use connection::{BaudChoice, Connection};
#[cfg(feature = "loopback")]
pub use loopback::{LoopbackReader, VirtualField};

/// Boxed error of a driver's library, kept as the source of a [`ReaderError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Default bound on one wire APDU exchange.
pub const DEFAULT_TRANSMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reader-layer errors. Status words from the card are not errors here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReaderError {
    /// Nothing came (no target, no answer) within the configured time.
    #[error("timed out")]
    Timeout,
    /// The target left the field (during or between exchanges).
    #[error("the target left the field")]
    Removed,
    /// The wait was cancelled through its [`Cancel`] token.
    #[error("cancelled")]
    Cancelled,
    /// The reader disappeared (unplugged, daemon stopped, port closed).
    #[error("reader {reader} is gone")]
    ReaderGone {
        reader: String,
        #[source]
        source: Option<BoxError>,
    },
    /// No reader matches the connection string.
    #[error("no reader matches {connection:?}")]
    NoReader { connection: String },
    /// The reader or its link failed in a way not covered above.
    #[error("reader {reader}: {source}")]
    Transport {
        reader: String,
        #[source]
        source: BoxError,
    },
    /// The connection string cannot be used.
    #[error("connection string {connection:?}: {reason}")]
    BadConnectionString {
        connection: String,
        reason: &'static str,
    },
    /// The driver was left out of this build (cargo feature).
    #[error("the {driver} driver is not built in (cargo feature {driver:?})")]
    DriverDisabled { driver: &'static str },
    /// Another program holds the reader exclusively.
    #[error("reader {reader} is in use by another program")]
    Busy { reader: String },
    /// The APDU is longer than the reader carries.
    #[error("APDU of {len} bytes exceeds the reader's limit of {max}")]
    ApduTooLong { len: usize, max: usize },
    /// The response is not an APDU response (fewer than 2 bytes, too long).
    #[error("bad response: {0}")]
    Link(#[from] LinkError),
}

impl ReaderError {
    /// Whether the reader itself (not just the target) is unusable now.
    pub fn is_reader_gone(&self) -> bool {
        matches!(
            self,
            ReaderError::ReaderGone { .. } | ReaderError::NoReader { .. }
        )
    }
}

/// A cancellation token: clone it, hand it to a wait, call [`Cancel::cancel`]
/// from anywhere. A child token is cancelled with its parent.
///
/// Blocking code asks [`Cancel::is_cancelled`] / [`Cancel::check`]; async
/// code awaits [`Cancel::cancelled`], which is woken by the cancel itself
/// (no polling), so a future raced against it ends at once.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    flag: Arc<Flag>,
    /// Cancelled with it (and with its own parents, all the way up).
    parent: Option<Box<Cancel>>,
}

/// One token's state: set once, waking whoever awaits it.
#[derive(Debug, Default)]
struct Flag {
    set: AtomicBool,
    woken: tokio::sync::Notify,
    /// The children's flags, woken with this one.
    children: std::sync::Mutex<Vec<std::sync::Weak<Flag>>>,
}

impl Flag {
    fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Wake every `cancelled()` of this token and of its descendants.
    fn wake(&self) {
        self.woken.notify_waiters();
        let children = self
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for c in children.iter().filter_map(std::sync::Weak::upgrade) {
            c.wake();
        }
    }
}

impl Cancel {
    pub fn new() -> Self {
        Cancel::default()
    }

    pub fn cancel(&self) {
        self.flag.set.store(true, Ordering::SeqCst);
        self.flag.wake();
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag.is_set() || self.parent.as_ref().is_some_and(|p| p.is_cancelled())
    }

    /// A token cancelled by this one (or any of its ancestors) or by itself.
    pub fn child(&self) -> Cancel {
        let flag = Arc::<Flag>::default();
        let mut children = self
            .flag
            .children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        children.retain(|c| c.strong_count() > 0);
        children.push(Arc::downgrade(&flag));
        drop(children);
        Cancel {
            flag,
            parent: Some(Box::new(self.clone())),
        }
    }

    /// Sleep `d` on this thread, returning early (within 20 ms) once
    /// cancelled.
    pub fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        loop {
            let now = Instant::now();
            if now >= end || self.is_cancelled() {
                return;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(20)));
        }
    }

    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<(), ReaderError> {
        if self.is_cancelled() {
            Err(ReaderError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Completes once this token (or an ancestor) is cancelled: at once if
    /// it already is. Cancel-safe; race a wait against it with
    /// `tokio::select!`.
    pub async fn cancelled(&self) {
        // A `Notified` hears `notify_waiters` from its creation on, so a
        // cancel between the check below and the await is not missed; an
        // ancestor's cancel wakes its descendants' `Notify` too.
        let own = self.flag.woken.notified();
        if self.is_cancelled() {
            return;
        }
        own.await;
    }
}

/// What a reader can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Longest wire APDU (command) the reader transmits in one exchange.
    pub max_apdu: usize,
    /// Whether extended-length APDUs pass through.
    pub extended_length: bool,
    /// Serial line speed, for readers on a serial line.
    pub baud: Option<u32>,
}

impl Capabilities {
    /// Short APDUs only (5 + 255 + 1 bytes).
    pub const SHORT: Capabilities = Capabilities {
        max_apdu: 261,
        extended_length: false,
        baud: None,
    };

    /// What the protocol's [`TerminalLink`] may send through this reader.
    pub fn link_limits(&self) -> LinkLimits {
        if self.extended_length {
            LinkLimits {
                extended: true,
                max_command_data: self
                    .max_apdu
                    .saturating_sub(9)
                    .clamp(1, LinkLimits::EXTENDED.max_command_data),
            }
        } else {
            LinkLimits {
                extended: false,
                max_command_data: self.max_apdu.saturating_sub(6).clamp(1, 255),
            }
        }
    }
}

/// Which driver runs a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Driver {
    Pcsc,
    Libnfc,
    Pn532,
    Loopback,
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Pcsc => "pcsc",
            Driver::Libnfc => "libnfc",
            Driver::Pn532 => "pn532",
            Driver::Loopback => "loopback",
        })
    }
}

/// A reader's identity and capabilities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderInfo {
    /// Human-readable name (PC/SC reader name, libnfc device name, port).
    pub name: String,
    /// The connection string that opens it again.
    pub connection: String,
    pub driver: Driver,
    pub capabilities: Capabilities,
}

/// How the reader talks to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TargetProtocol {
    /// ISO/IEC 14443-4 (ISO-DEP) type A, as phones in card emulation.
    IsoDep,
    /// PC/SC T=0.
    T0,
    /// PC/SC T=1 (how PC/SC contactless readers present ISO-DEP targets).
    T1,
    /// Anything else.
    Other,
}

/// The target in the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// UID (NFCID1); empty where the reader does not report it (PC/SC).
    pub uid: Vec<u8>,
    /// ATR, as PC/SC readers report (built from the ATS for contactless).
    pub atr: Option<Vec<u8>>,
    /// ATS (ISO 14443-4 answer to select), as PN532 and libnfc report.
    pub ats: Option<Vec<u8>>,
    pub protocol: TargetProtocol,
}

impl TargetInfo {
    /// An ISO-DEP type A target with this UID and ATS.
    pub fn iso_dep(uid: &[u8], ats: &[u8]) -> Self {
        TargetInfo {
            uid: uid.to_vec(),
            atr: None,
            ats: Some(ats.to_vec()),
            protocol: TargetProtocol::IsoDep,
        }
    }
}

/// Things that happen at a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderEvent {
    TargetPresent,
    TargetRemoved,
    /// A reader (its connection string) appeared.
    ReaderAttached(String),
    /// A reader (its connection string) went away.
    ReaderDetached(String),
}

/// A reader: waits for a target and hands out an exclusive session.
pub trait Reader: Send {
    fn info(&self) -> ReaderInfo;
    /// Wait up to `timeout` for a target in the field; `cancel` aborts the
    /// wait promptly. A reader that is gone is waited for too (it may come
    /// back within `timeout`); [`ReaderError::Timeout`] if nothing came.
    fn wait_for_target(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Box<dyn Session + '_>, ReaderError>;
    /// Bound on one wire APDU exchange ([`DEFAULT_TRANSMIT_TIMEOUT`] unless set).
    fn set_transmit_timeout(&mut self, timeout: Duration);
}

/// An exclusive session with the target in the field.
pub trait Session {
    fn target(&self) -> &TargetInfo;
    /// One wire APDU; the response including its status word.
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ReaderError>;
    /// Whether the target is still in the field.
    fn is_present(&mut self) -> Result<bool, ReaderError>;
    /// Wait until the target has left the field (`Ok`), up to `timeout`.
    fn wait_removed(&mut self, timeout: Duration, cancel: &Cancel) -> Result<(), ReaderError>;

    /// What the reader carries (short APDUs unless the driver says more).
    fn capabilities(&self) -> Capabilities {
        Capabilities::SHORT
    }

    /// What this driver's transport (a daemon hop, a serial line) adds to
    /// one short exchange beyond the radio: the terminal's relay bound
    /// counts it ([`tapstack_protocol::terminal::RelayPolicy::for_link`]).
    fn transport(&self) -> Duration {
        Duration::ZERO
    }

    /// Link limits for [`Session::transmit_logical`].
    fn link_limits(&self) -> LinkLimits {
        self.capabilities().link_limits()
    }

    /// A logical command: chained when longer than the link carries, the
    /// response collected over `61xx`/GET RESPONSE.
    fn transmit_logical(&mut self, cmd: Command) -> Result<Response, ReaderError> {
        let limits = self.link_limits();
        self.transmit_logical_with(cmd, limits)
    }

    /// [`Session::transmit_logical`] with explicit limits (for a phone that
    /// said it takes short APDUs only).
    fn transmit_logical_with(
        &mut self,
        cmd: Command,
        limits: LinkLimits,
    ) -> Result<Response, ReaderError> {
        TerminalLink::new(limits)
            .exchange(cmd, |wire| self.transmit(wire))
            .map_err(|e| match e {
                ExchangeError::Transport(e) => e,
                ExchangeError::Link(e) => ReaderError::Link(e),
            })
    }

    /// SELECT by name (`00 A4 04 00 Lc AID 00`).
    fn select(&mut self, aid: &[u8]) -> Result<Response, ReaderError> {
        self.transmit_logical(Command::new(
            0x00,
            0xA4,
            0x04,
            0x00,
            aid.to_vec(),
            Some(256),
        ))
    }
}

/// What a PN532 on a serial line at its power-on 115,200 baud adds to one
/// exchange of a `command`-byte APDU and a `response`-byte answer: the
/// InDataExchange frame (7 bytes of framing, TFI, command code, target),
/// the ACK frame (6) and the answer frame (framing, TFI, code, status) at
/// 10 bits a byte. A faster line takes less: the bound stays conservative.
pub fn pn532_serial_time(command: usize, response: usize) -> Duration {
    let bytes = (7 + 3 + command) + 6 + (7 + 3 + response);
    Duration::from_micros((bytes as u64) * 10 * 1_000_000 / 115_200)
}

/// Options for [`open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// Bound on one wire APDU exchange.
    pub transmit_timeout: Duration,
    /// PC/SC: connect exclusively (no other program may use the card).
    pub exclusive: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            transmit_timeout: DEFAULT_TRANSMIT_TIMEOUT,
            exclusive: false,
        }
    }
}

/// Open a reader by connection string: `pcsc:<reader name>` (quotes
/// optional; empty: the first reader), `libnfc:<libnfc connstring>` (empty:
/// the first device), `pn532:<serial port>[?baud=N]`. `emu:` is not opened
/// here: the in-process emulator is a [`LoopbackReader`] over its field.
pub fn open(connection: &str) -> Result<Box<dyn Reader>, ReaderError> {
    open_with(connection, &OpenOptions::default())
}

/// [`open`] with options.
pub fn open_with(connection: &str, opts: &OpenOptions) -> Result<Box<dyn Reader>, ReaderError> {
    let _ = &opts;
    let parsed = Connection::parse(connection)?;
    match parsed {
        #[cfg(feature = "pcsc")]
        Connection::Pcsc { reader } => {
            Ok(Box::new(pcsc::PcscReader::open(reader.as_deref(), opts)?))
        }
        #[cfg(not(feature = "pcsc"))]
        Connection::Pcsc { .. } => Err(ReaderError::DriverDisabled { driver: "pcsc" }),
        #[cfg(feature = "libnfc")]
        Connection::Libnfc { connstring } => Ok(Box::new(libnfc::LibnfcReader::open(
            connstring.as_deref(),
            opts,
        )?)),
        #[cfg(not(feature = "libnfc"))]
        Connection::Libnfc { .. } => Err(ReaderError::DriverDisabled { driver: "libnfc" }),
        #[cfg(feature = "pn532")]
        Connection::Pn532 { path, baud } => {
            Ok(Box::new(pn532::Pn532Reader::open(&path, baud, opts)?))
        }
        #[cfg(not(feature = "pn532"))]
        Connection::Pn532 { .. } => Err(ReaderError::DriverDisabled { driver: "pn532" }),
        Connection::Emu => Err(ReaderError::BadConnectionString {
            connection: connection.to_owned(),
            reason: "emu: is the in-process emulator; build a LoopbackReader over its field",
        }),
    }
}

/// An attached reader, as [`discover`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderDescriptor {
    /// Connection string for [`open`].
    pub connection: String,
    pub name: String,
    pub driver: Driver,
}

/// What [`discover_with`] looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoverOptions {
    /// Serial ports to probe for a PN532 besides USB serial adapters
    /// (`/dev/ttyUSB*`, `/dev/ttyACM*`).
    pub serial_paths: Vec<std::path::PathBuf>,
    /// Skip probing serial ports (probing writes a wake-up to each port).
    pub no_serial_probe: bool,
}

/// What is attached: PC/SC readers, libnfc devices, USB serial ports that
/// answer as a PN532.
pub fn discover() -> Vec<ReaderDescriptor> {
    discover_with(&DiscoverOptions::default())
}

/// [`discover`] with options.
pub fn discover_with(opts: &DiscoverOptions) -> Vec<ReaderDescriptor> {
    #[allow(unused_mut)]
    let mut found = Vec::new();
    #[cfg(feature = "pcsc")]
    found.extend(pcsc::discover());
    #[cfg(feature = "libnfc")]
    found.extend(libnfc::discover());
    #[cfg(feature = "pn532")]
    if !opts.no_serial_probe {
        found.extend(pn532::discover(&opts.serial_paths));
    }
    let _ = opts;
    found
}

/// Watches readers come and go by diffing [`discover_with`] (PC/SC readers
/// are seen through pcscd's PnP notification promptly).
#[derive(Debug)]
pub struct ReaderMonitor {
    opts: DiscoverOptions,
    known: Vec<String>,
    pending: std::collections::VecDeque<ReaderEvent>,
    interval: Duration,
}

impl ReaderMonitor {
    /// Start watching; what is attached now is reported as attached first.
    pub fn new(opts: DiscoverOptions) -> Self {
        ReaderMonitor {
            opts,
            known: Vec::new(),
            pending: Default::default(),
            interval: Duration::from_millis(500),
        }
    }

    fn rescan(&mut self) {
        let now: Vec<String> = discover_with(&self.opts)
            .into_iter()
            .map(|d| d.connection)
            .collect();
        for c in &self.known {
            if !now.contains(c) {
                self.pending
                    .push_back(ReaderEvent::ReaderDetached(c.clone()));
            }
        }
        for c in &now {
            if !self.known.contains(c) {
                self.pending
                    .push_back(ReaderEvent::ReaderAttached(c.clone()));
            }
        }
        self.known = now;
    }

    /// The next attach/detach event within `timeout`.
    pub fn next_event(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<ReaderEvent, ReaderError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            cancel.check()?;
            self.rescan();
            if !self.pending.is_empty() {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReaderError::Timeout);
            }
            let slice = self.interval.min(deadline - now);
            #[cfg(feature = "pcsc")]
            pcsc::wait_pnp_change(slice, cancel);
            #[cfg(not(feature = "pcsc"))]
            sleep_cancellable(slice, cancel);
        }
    }
}

/// Sleep `d` in short slices, returning early once `cancel` is set.
pub(crate) fn sleep_cancellable(d: Duration, cancel: &Cancel) {
    cancel.sleep(d);
}

/// One look for a target, as a driver's [`Reader::wait_for_target`] takes it
/// inside [`wait_for`].
pub(crate) enum Step<T> {
    /// A target: the wait is over.
    Found(T),
    /// The reader works and nothing is in the field yet: look again after
    /// this pause (zero when the look itself waited).
    Idle(Duration),
    /// The reader is unreachable or failed: keep the error (the wait ends
    /// with it instead of `Timeout` if nothing better comes) and look again
    /// after this pause — the driver reconnects on its next look.
    #[cfg_attr(
        not(any(feature = "pcsc", feature = "libnfc", feature = "pn532")),
        allow(dead_code)
    )]
    Trouble(ReaderError, Duration),
    /// Stop waiting with this error.
    Stop(ReaderError),
}

/// The wait-and-reconnect loop every driver shares: `look` runs until it
/// finds a target, the deadline passes or `cancel` is set; pauses are
/// cancellable. A reader that is gone is waited for (it may come back
/// within `timeout`); a wait that ends while it is still gone reports why.
#[cfg_attr(
    not(any(feature = "pcsc", feature = "libnfc", feature = "loopback")),
    allow(dead_code)
)]
pub(crate) fn wait_for<T>(
    timeout: Duration,
    cancel: &Cancel,
    look: impl FnMut(Duration) -> Step<T>,
) -> Result<T, ReaderError> {
    wait_for_pausing(timeout, cancel, look, |pause| {
        sleep_cancellable(pause, cancel)
    })
}

/// [`wait_for`] with the driver's own pause between looks: `pause(d)` waits
/// `d` at most and returns early once `cancel` is set (the native PN532
/// driver sleeps on its runtime, raced against [`Cancel::cancelled`]).
pub(crate) fn wait_for_pausing<T>(
    timeout: Duration,
    cancel: &Cancel,
    mut look: impl FnMut(Duration) -> Step<T>,
    mut pause: impl FnMut(Duration),
) -> Result<T, ReaderError> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        let left = match remaining(deadline, cancel) {
            Ok(l) => l,
            Err(ReaderError::Timeout) => return Err(last_err.unwrap_or(ReaderError::Timeout)),
            Err(e) => return Err(e),
        };
        let wait = match look(left) {
            Step::Found(t) => return Ok(t),
            Step::Stop(e) => return Err(e),
            Step::Idle(pause) => {
                last_err = None;
                pause
            }
            Step::Trouble(e, pause) => {
                last_err = Some(e);
                pause
            }
        };
        if !wait.is_zero() {
            pause(wait.min(left));
        }
    }
}

/// Time left before `deadline`, or `Timeout`; `Cancelled` first.
pub(crate) fn remaining(deadline: Instant, cancel: &Cancel) -> Result<Duration, ReaderError> {
    cancel.check()?;
    let now = Instant::now();
    if now >= deadline {
        return Err(ReaderError::Timeout);
    }
    Ok(deadline - now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grandchildren_follow_their_ancestors() {
        let root = Cancel::new();
        let grandchild = root.child().child();
        assert!(!grandchild.is_cancelled());
        root.cancel();
        assert!(grandchild.is_cancelled());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let other = Cancel::new();
        let deep = other.child().child();
        let waiter = std::thread::spawn(move || {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), deep.cancelled())
                    .await
                    .is_ok()
            })
        });
        std::thread::sleep(Duration::from_millis(50));
        other.cancel();
        assert!(waiter.join().unwrap(), "the grandchild's future ended");
    }

    #[test]
    fn cancel_children_follow_parents() {
        let parent = Cancel::new();
        let child = parent.child();
        assert!(!child.is_cancelled());
        child.cancel();
        assert!(!parent.is_cancelled());
        let other = parent.child();
        parent.cancel();
        assert!(other.is_cancelled());
        assert!(matches!(other.check(), Err(ReaderError::Cancelled)));
    }

    #[tokio::test]
    async fn cancelled_completes_on_a_cancel_from_another_thread_or_of_the_parent() {
        let bound = Duration::from_secs(10); // against hanging only
                                             // Already cancelled: at once.
        let done = Cancel::new();
        done.cancel();
        tokio::time::timeout(bound, done.cancelled()).await.unwrap();
        // Cancelled from another thread while awaited.
        let c = Cancel::new();
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.cancel();
        });
        tokio::time::timeout(bound, c.cancelled()).await.unwrap();
        t.join().unwrap();
        // A child wakes with its parent; a parent not with its child.
        let parent = Cancel::new();
        let child = parent.child();
        let sibling = parent.child();
        sibling.cancel();
        let early = tokio::time::timeout(Duration::from_millis(50), parent.cancelled()).await;
        assert!(early.is_err(), "a child's cancel does not reach the parent");
        let p2 = parent.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            p2.cancel();
        });
        tokio::time::timeout(bound, child.cancelled())
            .await
            .unwrap();
        t.join().unwrap();
        assert!(child.is_cancelled());
    }

    #[test]
    fn capabilities_give_link_limits() {
        assert_eq!(Capabilities::SHORT.link_limits(), LinkLimits::SHORT);
        let ext = Capabilities {
            max_apdu: 65_544,
            extended_length: true,
            baud: None,
        };
        assert_eq!(ext.link_limits(), LinkLimits::EXTENDED);
    }
}
