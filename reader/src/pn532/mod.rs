//! Native PN532 driver over a serial line (HSU): `pn532:<path>[?baud=N|max]`.
//!
//! - [`frame`]: the HSU frame codec (pure, fuzzed; `tapstack-pn532`);
//! - [`codec`]: that codec as a `tokio_util` [`Decoder`](tokio_util::codec::Decoder)
//!   / [`Encoder`](tokio_util::codec::Encoder), bounded on hostile input;
//! - [`host`]: the host controller, async, over any [`Port`] framed with
//!   the codec: ACK with resend, NACK on a garbled response, abort on
//!   timeout or cancel, InListPassiveTarget, InDataExchange with MI
//!   chaining both ways, Diagnose presence check, SetSerialBaudRate;
//! - [`Pn532Reader`]: the blocking [`Reader`] on a real port, a
//!   `tokio_serial::SerialStream` driven by a current-thread runtime the
//!   reader owns. Each wait (for a target, an answer, a removal) is a future
//!   raced against its deadline and [`Cancel::cancelled`], so a cancel from
//!   another thread ends it at once.
//!
//! The line starts at the PN532's power-on 115,200 baud (other rates are
//! probed if the chip does not answer, as it stays at a raised rate until
//! power-off) and is raised to the fastest rate the host port accepts
//! (921,600) unless `?baud=N` pins one: at 115,200 the line costs as much per
//! byte as the 106 kbit/s air interface.

pub use tapstack_pn532::frame;
pub mod codec;
pub mod host;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_serial::{ClearBuffer, SerialPort, SerialStream};

pub use codec::{HsuCodec, Outgoing};
pub use host::{Exchange, ListedTarget, Pn532, Pn532Error, Port};

use crate::connection::PN532_BAUD_RATES;
use crate::{
    remaining, wait_for_pausing, BaudChoice, Cancel, Capabilities, Connection, Driver, OpenOptions,
    Reader, ReaderDescriptor, ReaderError, ReaderInfo, Session, Step, TargetInfo, TargetProtocol,
};

/// The PN532's rate after power-on.
pub const POWER_ON_BAUD: u32 = 115_200;
/// Longest APDU sent (MI chaining; extended length).
pub const MAX_APDU: usize = 65_544;
/// Bound on the commands of initialisation and housekeeping.
const INIT_TIMEOUT: Duration = Duration::from_millis(500);
/// Presence polling interval of `wait_removed`.
const PRESENCE_POLL: Duration = Duration::from_millis(50);
/// Pause between attempts to reach a chip that is gone.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

impl Port for SerialStream {
    fn discard_input(&mut self) -> io::Result<()> {
        self.clear(ClearBuffer::Input).map_err(io::Error::from)
    }

    fn set_baud(&mut self, baud: u32) -> io::Result<()> {
        self.set_baud_rate(baud).map_err(io::Error::from)
    }
}

/// Open a serial port as an async [`Port`] (8N1, no flow control, exclusive),
/// registered with `rt`'s I/O driver: only `rt` drives it.
pub fn open_port(rt: &LineRuntime, path: &Path, baud: u32) -> io::Result<SerialStream> {
    let _in = rt.rt().enter();
    SerialStream::open(&tokio_serial::new(path.to_string_lossy(), baud)).map_err(io::Error::from)
}

/// The runtime a blocking caller drives a serial line's futures with: a
/// current-thread tokio runtime (I/O and timers), run on the calling thread
/// only while a blocking method waits.
#[derive(Debug)]
pub struct LineRuntime(Option<tokio::runtime::Runtime>);

impl LineRuntime {
    pub fn new() -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        Ok(LineRuntime(Some(rt)))
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        // Taken out only in `drop`.
        self.0.as_ref().unwrap_or_else(|| unreachable!())
    }

    /// Run `f` to completion, blocking this thread. Called from inside
    /// another tokio runtime (a blocking call made from async code, as
    /// before with a blocking port), `f` runs on a scoped thread instead,
    /// since a runtime cannot block a thread that drives another one.
    pub fn block_on<F>(&self, f: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        let rt = self.rt();
        if tokio::runtime::Handle::try_current().is_err() {
            return rt.block_on(f);
        }
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(f))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Sleep `d`, ending at once when `cancel` is set.
    pub fn pause(&self, d: Duration, cancel: &Cancel) {
        self.block_on(async {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(d) => {}
            }
        });
    }
}

impl Drop for LineRuntime {
    fn drop(&mut self) {
        // Never blocks, so a reader may be dropped inside async code too.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A PN532 on a serial port.
#[derive(Debug)]
pub struct Pn532Reader {
    path: PathBuf,
    baud: BaudChoice,
    connection: String,
    host: Option<Pn532<SerialStream>>,
    timeout: Duration,
    /// Drives `host`'s line; after it, so the line goes first on drop.
    rt: Arc<LineRuntime>,
}

impl Pn532Reader {
    /// Open the port and initialise the chip.
    pub fn open(path: &Path, baud: BaudChoice, opts: &OpenOptions) -> Result<Self, ReaderError> {
        let mut r = Pn532Reader {
            path: path.to_path_buf(),
            baud,
            connection: Connection::Pn532 {
                path: path.to_path_buf(),
                baud,
            }
            .to_string(),
            host: None,
            timeout: opts.transmit_timeout,
            rt: Arc::new(LineRuntime::new().map_err(|e| ReaderError::Transport {
                reader: path.display().to_string(),
                source: Box::new(e),
            })?),
        };
        if !path.exists() {
            return Err(ReaderError::NoReader {
                connection: r.connection,
            });
        }
        r.connect()?;
        Ok(r)
    }

    fn gone(&self, source: Option<Pn532Error>) -> ReaderError {
        ReaderError::ReaderGone {
            reader: self.connection.clone(),
            source: source.map(|e| Box::new(e) as crate::BoxError),
        }
    }

    /// Map a host controller error; forget the line if it is gone.
    fn fail(&mut self, e: Pn532Error) -> ReaderError {
        match e {
            Pn532Error::Timeout => ReaderError::Timeout,
            Pn532Error::Cancelled => ReaderError::Cancelled,
            e if e.is_line_gone() => {
                self.host = None;
                self.gone(Some(e))
            }
            e => {
                // The chip is confused (no ACK, noise): start afresh next time.
                self.host = None;
                ReaderError::Transport {
                    reader: self.connection.clone(),
                    source: Box::new(e),
                }
            }
        }
    }

    /// Open the port, find the chip's line speed, initialise it, raise the
    /// speed.
    fn connect(&mut self) -> Result<(), ReaderError> {
        self.host = None;
        let io = open_port(&self.rt, &self.path, POWER_ON_BAUD).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => self.gone(Some(Pn532Error::Io(e))),
            _ => ReaderError::Transport {
                reader: self.connection.clone(),
                source: Box::new(e),
            },
        })?;
        let mut host = Pn532::new(io, POWER_ON_BAUD);
        let targets: Vec<u32> = match self.baud {
            BaudChoice::Fixed(b) => vec![b],
            BaudChoice::Max => vec![921_600, 460_800, 230_400, POWER_ON_BAUD],
        };
        let path = self.path.clone();
        let result = self.rt.block_on(async {
            let mut first_err = None;
            let mut candidates = vec![POWER_ON_BAUD];
            candidates.extend(
                PN532_BAUD_RATES
                    .iter()
                    .rev()
                    .filter(|b| **b != POWER_ON_BAUD),
            );
            for rate in candidates {
                if rate != host.baud() {
                    if host.port_mut().set_baud(rate).is_err() {
                        continue;
                    }
                    host.assume_baud(rate);
                }
                match host.init(INIT_TIMEOUT).await {
                    Ok(()) => {
                        first_err = None;
                        break;
                    }
                    Err(e) if e.is_line_gone() => return Err(e),
                    Err(e) => {
                        tracing::debug!(rate, error = %e, "PN532: no answer at this rate");
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
            for want in targets {
                if want == host.baud() {
                    break;
                }
                // Does the host port take this rate at all?
                let current = host.baud();
                if host.port_mut().set_baud(want).is_err() {
                    continue;
                }
                let _ = host.port_mut().set_baud(current);
                host.set_baud(want, INIT_TIMEOUT).await?;
                tracing::info!(baud = want, port = %path.display(), "PN532: line speed raised");
                break;
            }
            Ok(())
        });
        if let Err(e) = result {
            return Err(self.fail(e));
        }
        tracing::debug!(firmware = ?host.firmware, baud = host.baud(), "PN532 ready");
        self.host = Some(host);
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_apdu: MAX_APDU,
            extended_length: true,
            baud: self.host.as_ref().map(Pn532::baud),
        }
    }
}

impl Reader for Pn532Reader {
    fn info(&self) -> ReaderInfo {
        let name = match self.host.as_ref().and_then(|h| h.firmware) {
            Some([_, ver, rev, _]) => format!("PN532 v{ver}.{rev} on {}", self.path.display()),
            None => format!("PN532 on {}", self.path.display()),
        };
        ReaderInfo {
            name,
            connection: self.connection.clone(),
            driver: Driver::Pn532,
            capabilities: self.capabilities(),
        }
    }

    fn wait_for_target(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Box<dyn Session + '_>, ReaderError> {
        let rt = Arc::clone(&self.rt);
        let look = |left| {
            if self.host.is_none() {
                if let Err(e) = self.connect() {
                    tracing::debug!(error = %e, "PN532: not reachable yet");
                    return Step::Trouble(e, RECONNECT_PAUSE);
                }
            }
            let Some(host) = self.host.as_mut() else {
                return Step::Idle(Duration::ZERO);
            };
            let listed = self.rt.block_on(async {
                let listed = host.list_passive_target(left, cancel).await;
                if let Ok(Some(t)) = &listed {
                    if !t.is_iso_dep() {
                        tracing::debug!(uid = %hex::encode(&t.uid), sak = t.sak, "PN532: target without ISO 14443-4 ignored");
                        let _ = host.release(INIT_TIMEOUT).await;
                    }
                }
                listed
            });
            match listed {
                Ok(Some(t)) if t.is_iso_dep() => Step::Found(TargetInfo {
                    uid: t.uid,
                    atr: None,
                    ats: t.ats,
                    protocol: TargetProtocol::IsoDep,
                }),
                Ok(Some(_)) => Step::Idle(Duration::from_millis(100)),
                Ok(None) => Step::Idle(PRESENCE_POLL),
                Err(Pn532Error::Timeout) => Step::Stop(ReaderError::Timeout),
                Err(Pn532Error::Cancelled) => Step::Stop(ReaderError::Cancelled),
                Err(e) => {
                    let e = self.fail(e);
                    tracing::debug!(error = %e, "PN532: polling failed; reconnecting");
                    Step::Trouble(e, Duration::ZERO)
                }
            }
        };
        let target = wait_for_pausing(timeout, cancel, look, |d| rt.pause(d, cancel))?;
        Ok(Box::new(Pn532Session {
            reader: self,
            target,
        }))
    }

    fn set_transmit_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

struct Pn532Session<'r> {
    reader: &'r mut Pn532Reader,
    target: TargetInfo,
}

impl Pn532Session<'_> {
    /// The host controller and the runtime that drives it.
    fn host(&mut self) -> Result<(&mut Pn532<SerialStream>, &LineRuntime), ReaderError> {
        let gone = self.reader.gone(None);
        let host = self.reader.host.as_mut().ok_or(gone)?;
        Ok((host, &self.reader.rt))
    }
}

impl Session for Pn532Session<'_> {
    fn transport(&self) -> Duration {
        crate::pn532_serial_time(10, 6)
    }
    fn target(&self) -> &TargetInfo {
        &self.target
    }

    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ReaderError> {
        if apdu.len() > MAX_APDU {
            return Err(ReaderError::ApduTooLong {
                len: apdu.len(),
                max: MAX_APDU,
            });
        }
        let timeout = self.reader.timeout;
        let (host, rt) = self.host()?;
        let result = rt.block_on(async {
            match host.exchange(apdu, timeout).await {
                // Silent target: gone, or just slow?
                Ok(Exchange::Failed(host::status::TIMEOUT)) => {
                    match host.target_present(INIT_TIMEOUT).await {
                        Ok(false) => Ok(Err(ReaderError::Removed)),
                        Ok(true) => Ok(Err(ReaderError::Timeout)),
                        Err(e) => Err(e),
                    }
                }
                Ok(x) => Ok(Ok(x)),
                Err(e) => Err(e),
            }
        });
        match result {
            Ok(Err(e)) => Err(e),
            Ok(Ok(Exchange::Data(d))) => Ok(d),
            Ok(Ok(Exchange::Failed(host::status::WRONG_CONTEXT | host::status::RELEASED))) => {
                Err(ReaderError::Removed)
            }
            Ok(Ok(Exchange::Failed(status))) => Err(ReaderError::Transport {
                reader: self.reader.connection.clone(),
                source: Box::new(Pn532Error::Status {
                    command: host::cmd::IN_DATA_EXCHANGE,
                    status,
                }),
            }),
            Err(e) => Err(self.reader.fail(e)),
        }
    }

    fn is_present(&mut self) -> Result<bool, ReaderError> {
        let (host, rt) = self.host()?;
        let r = rt.block_on(host.target_present(INIT_TIMEOUT));
        r.map_err(|e| self.reader.fail(e))
    }

    /// Presence checks every 50 ms; the pause between them ends at once on
    /// a cancel (a check itself, bounded by 500 ms, runs to its end so the
    /// chip is never left mid-command).
    fn wait_removed(&mut self, timeout: Duration, cancel: &Cancel) -> Result<(), ReaderError> {
        let deadline = Instant::now() + timeout;
        let (host, rt) = self.host()?;
        let r = rt.block_on(async {
            loop {
                let left = match remaining(deadline, cancel) {
                    Ok(left) => left,
                    Err(e) => return Ok(Err(e)),
                };
                if !host.target_present(INIT_TIMEOUT).await? {
                    return Ok(Ok(()));
                }
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    () = tokio::time::sleep(PRESENCE_POLL.min(left)) => {}
                }
            }
        });
        r.unwrap_or_else(|e| Err(self.reader.fail(e)))
    }

    fn capabilities(&self) -> Capabilities {
        self.reader.capabilities()
    }
}

impl Drop for Pn532Session<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.reader.host.as_mut() {
            if let Err(e) = self.reader.rt.block_on(h.release(INIT_TIMEOUT)) {
                tracing::debug!(error = %e, "PN532: InRelease failed");
                self.reader.fail(e);
            }
        }
    }
}

/// USB serial ports (and `extra`) that answer as a PN532.
pub fn discover(extra: &[PathBuf]) -> Vec<ReaderDescriptor> {
    let mut paths: Vec<PathBuf> = tokio_serial::available_ports()
        .unwrap_or_default()
        .into_iter()
        .map(|p| PathBuf::from(p.port_name))
        .filter(|p| {
            let s = p.to_string_lossy();
            s.contains("ttyUSB") || s.contains("ttyACM")
        })
        .collect();
    for p in extra {
        if !paths.contains(p) {
            paths.push(p.clone());
        }
    }
    let Ok(rt) = LineRuntime::new() else {
        return Vec::new();
    };
    paths
        .into_iter()
        .filter_map(|path| {
            let io = open_port(&rt, &path, POWER_ON_BAUD).ok()?;
            let mut host = Pn532::new(io, POWER_ON_BAUD);
            rt.block_on(host.init(Duration::from_millis(300))).ok()?;
            let [_, ver, rev, _] = host.firmware?;
            Some(ReaderDescriptor {
                connection: Connection::Pn532 {
                    path: path.clone(),
                    baud: BaudChoice::Max,
                }
                .to_string(),
                name: format!("PN532 v{ver}.{rev} on {}", path.display()),
                driver: Driver::Pn532,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blocking method called from async code (as the blocking port
    /// allowed) runs its future on a scoped thread instead of panicking,
    /// and the runtime is dropped there without blocking.
    #[tokio::test]
    async fn the_line_runtime_works_inside_another_runtime() {
        let rt = LineRuntime::new().unwrap();
        let cancel = Cancel::new();
        let got = rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            7
        });
        assert_eq!(got, 7);
        cancel.cancel();
        rt.pause(Duration::from_secs(30), &cancel); // returns at once
        drop(rt);
    }

    #[test]
    fn a_pause_ends_on_a_cancel_from_another_thread() {
        let rt = LineRuntime::new().unwrap();
        let cancel = Cancel::new();
        let c2 = cancel.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.cancel();
        });
        let started = Instant::now();
        rt.pause(Duration::from_secs(30), &cancel);
        t.join().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "bound against hanging only"
        );
    }
}
