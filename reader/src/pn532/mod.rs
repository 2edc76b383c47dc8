//! Native PN532 driver over a serial line (HSU): `pn532:<path>[?baud=N|max]`.
//!
//! - [`frame`]: the HSU frame codec (pure, fuzzed);
//! - [`host`]: the host controller over any [`Port`]: ACK with resend, NACK
//!   on a garbled response, abort on timeout, InListPassiveTarget,
//!   InDataExchange with MI chaining both ways, Diagnose presence check,
//!   SetSerialBaudRate;
//! - [`Pn532Reader`]: the [`Reader`] on a real port (the `serialport` crate,
//!   blocking, as the trait is).
//!
//! The line starts at the PN532's power-on 115,200 baud (other rates are
//! probed if the chip does not answer, as it stays at a raised rate until
//! power-off) and is raised to the fastest rate the host port accepts
//! (921,600) unless `?baud=N` pins one: at 115,200 the line costs as much per
//! byte as the 106 kbit/s air interface.

pub use tapstack_pn532::frame;
pub mod host;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serialport::{ClearBuffer, SerialPort};

pub use host::{Exchange, ListedTarget, Pn532, Pn532Error, Port};

use crate::connection::PN532_BAUD_RATES;
use crate::{
    remaining, sleep_cancellable, wait_for, BaudChoice, Cancel, Capabilities, Connection, Driver,
    OpenOptions, Reader, ReaderDescriptor, ReaderError, ReaderInfo, Session, Step, TargetInfo,
    TargetProtocol,
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

/// A serial port as a [`Port`].
#[derive(Debug)]
pub struct SerialIo {
    port: serialport::TTYPort,
}

impl SerialIo {
    pub fn open(path: &Path, baud: u32) -> io::Result<Self> {
        let port = serialport::new(path.to_string_lossy(), baud)
            .timeout(Duration::from_millis(100))
            .open_native()
            .map_err(io::Error::from)?;
        Ok(SerialIo { port })
    }
}

impl Port for SerialIo {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.port
            .set_timeout(Duration::from_secs(1))
            .map_err(io::Error::from)?;
        io::Write::write_all(&mut self.port, bytes)
    }

    fn read(&mut self, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(0);
        }
        self.port.set_timeout(left).map_err(io::Error::from)?;
        match io::Read::read(&mut self.port, buf) {
            Ok(0) => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn discard_input(&mut self) -> io::Result<()> {
        self.port.clear(ClearBuffer::Input).map_err(io::Error::from)
    }

    fn set_baud(&mut self, baud: u32) -> io::Result<()> {
        self.port.set_baud_rate(baud).map_err(io::Error::from)
    }
}

/// A PN532 on a serial port.
#[derive(Debug)]
pub struct Pn532Reader {
    path: PathBuf,
    baud: BaudChoice,
    connection: String,
    host: Option<Pn532<SerialIo>>,
    timeout: Duration,
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
        let io = SerialIo::open(&self.path, POWER_ON_BAUD).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => self.gone(Some(Pn532Error::Io(e))),
            _ => ReaderError::Transport {
                reader: self.connection.clone(),
                source: Box::new(e),
            },
        })?;
        let mut host = Pn532::new(io, POWER_ON_BAUD);
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
            match host.init(INIT_TIMEOUT) {
                Ok(()) => {
                    first_err = None;
                    break;
                }
                Err(e) if e.is_line_gone() => return Err(self.fail(e)),
                Err(e) => {
                    tracing::debug!(rate, error = %e, "PN532: no answer at this rate");
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(self.fail(e));
        }
        let targets: Vec<u32> = match self.baud {
            BaudChoice::Fixed(b) => vec![b],
            BaudChoice::Max => vec![921_600, 460_800, 230_400, POWER_ON_BAUD],
        };
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
            match host.set_baud(want, INIT_TIMEOUT) {
                Ok(()) => {
                    tracing::info!(baud = want, port = %self.path.display(), "PN532: line speed raised");
                    break;
                }
                Err(e) => return Err(self.fail(e)),
            }
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
        let target = wait_for(timeout, cancel, |left| {
            if self.host.is_none() {
                if let Err(e) = self.connect() {
                    tracing::debug!(error = %e, "PN532: not reachable yet");
                    return Step::Trouble(e, RECONNECT_PAUSE);
                }
            }
            let Some(host) = self.host.as_mut() else {
                return Step::Idle(Duration::ZERO);
            };
            match host.list_passive_target(left, cancel) {
                Ok(Some(t)) if t.is_iso_dep() => Step::Found(TargetInfo {
                    uid: t.uid,
                    atr: None,
                    ats: t.ats,
                    protocol: TargetProtocol::IsoDep,
                }),
                Ok(Some(t)) => {
                    tracing::debug!(uid = %hex::encode(&t.uid), sak = t.sak, "PN532: target without ISO 14443-4 ignored");
                    let _ = host.release(INIT_TIMEOUT);
                    Step::Idle(Duration::from_millis(100))
                }
                Ok(None) => Step::Idle(PRESENCE_POLL),
                Err(Pn532Error::Timeout) => Step::Stop(ReaderError::Timeout),
                Err(Pn532Error::Cancelled) => Step::Stop(ReaderError::Cancelled),
                Err(e) => {
                    let e = self.fail(e);
                    tracing::debug!(error = %e, "PN532: polling failed; reconnecting");
                    Step::Trouble(e, Duration::ZERO)
                }
            }
        })?;
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
    fn host(&mut self) -> Result<&mut Pn532<SerialIo>, ReaderError> {
        let gone = self.reader.gone(None);
        self.reader.host.as_mut().ok_or(gone)
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
        let result = self.host()?.exchange(apdu, timeout);
        match result {
            Ok(Exchange::Data(d)) => Ok(d),
            Ok(Exchange::Failed(host::status::TIMEOUT)) => {
                // Silent target: gone, or just slow?
                match self.host()?.target_present(INIT_TIMEOUT) {
                    Ok(false) => Err(ReaderError::Removed),
                    Ok(true) => Err(ReaderError::Timeout),
                    Err(e) => Err(self.reader.fail(e)),
                }
            }
            Ok(Exchange::Failed(host::status::WRONG_CONTEXT | host::status::RELEASED)) => {
                Err(ReaderError::Removed)
            }
            Ok(Exchange::Failed(status)) => Err(ReaderError::Transport {
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
        let r = self.host()?.target_present(INIT_TIMEOUT);
        r.map_err(|e| self.reader.fail(e))
    }

    fn wait_removed(&mut self, timeout: Duration, cancel: &Cancel) -> Result<(), ReaderError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = remaining(deadline, cancel)?;
            if !self.is_present()? {
                return Ok(());
            }
            sleep_cancellable(PRESENCE_POLL.min(left), cancel);
        }
    }

    fn capabilities(&self) -> Capabilities {
        self.reader.capabilities()
    }
}

impl Drop for Pn532Session<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.reader.host.as_mut() {
            if let Err(e) = h.release(INIT_TIMEOUT) {
                tracing::debug!(error = %e, "PN532: InRelease failed");
                self.reader.fail(e);
            }
        }
    }
}

/// USB serial ports (and `extra`) that answer as a PN532.
pub fn discover(extra: &[PathBuf]) -> Vec<ReaderDescriptor> {
    let mut paths: Vec<PathBuf> = serialport::available_ports()
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
    paths
        .into_iter()
        .filter_map(|path| {
            let io = SerialIo::open(&path, POWER_ON_BAUD).ok()?;
            let mut host = Pn532::new(io, POWER_ON_BAUD);
            host.init(Duration::from_millis(300)).ok()?;
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
