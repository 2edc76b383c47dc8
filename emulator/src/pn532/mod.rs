//! The PN532 front-end: the phone in the field of an emulated PN532 NFC chip
//! whose host interface (HSU, the UART) is a pseudo-terminal.
//!
//! `run` opens a PTY, puts it in raw mode, links a path to its slave side
//! (`/dev/pts/N`) and answers the PN532 host protocol on the master side, so
//! that libnfc's `pn532_uart` driver (`nfc-list`, the `nfc1` crate), or any
//! native PN532 driver, opens `pn532_uart:PATH` and sees a PN532 v1.6 with
//! an ISO 14443-4 type A target in its field whenever a phone taps.
//!
//! - [`frame`]: HSU framing (normal and extended information frames, ACK,
//!   NACK, error frame), pure.
//! - [`chip`]: the command set libnfc and a native driver use, pure, over a
//!   [`Field`].
//! - [`PhoneField`]: the field filled from a [`PhoneQueue`]: a phone enters
//!   at the first poll (InListPassiveTarget, InAutoPoll) after the previous
//!   one left (and `gap` passed), keeps its random UID while it stays, and
//!   leaves `idle` after its last APDU (once it answered one), when the
//!   reader switches the RF field off, or when the fault script removes it.

pub mod chip;
pub use tapstack_pn532::frame;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{
    cfmakeraw, cfsetspeed, tcgetattr, tcsetattr, BaudRate, ControlFlags, SetArg,
};

pub use chip::{Chip, Field, Presence};

use crate::phone::{PhoneQueue, Reply};
use crate::Error;

/// How long an incomplete frame waits for its next byte before it is dropped.
pub const FRAME_TIMEOUT: Duration = Duration::from_millis(100);
/// Poll interval of the PTY loop.
const TICK_MS: u8 = 10;
/// Longest time spent writing one response to a host that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Pn532Options {
    /// Symbolic link to create to the PTY's slave side (the "serial port").
    pub link: PathBuf,
    /// Stop after this many taps.
    pub taps: Option<usize>,
    /// Leave the field after this long without an APDU, once the phone has
    /// answered at least one.
    pub idle: Duration,
    /// Time between one phone leaving and the next one arriving.
    pub gap: Duration,
}

impl Pn532Options {
    pub fn new(link: impl Into<PathBuf>) -> Self {
        Pn532Options {
            link: link.into(),
            taps: None,
            idle: Duration::from_millis(1500),
            gap: Duration::from_millis(500),
        }
    }
}

/// The field of the emulated antenna, filled with the phones of a
/// [`PhoneQueue`] in turn.
#[derive(Debug)]
pub struct PhoneField<'q> {
    queue: &'q mut PhoneQueue,
    taps: Option<usize>,
    idle: Duration,
    gap: Duration,
    present: Option<Presence>,
    arrivals: u64,
    free_at: Option<Instant>,
    answered: usize,
    last: Instant,
}

impl<'q> PhoneField<'q> {
    pub fn new(queue: &'q mut PhoneQueue, opts: &Pn532Options) -> Self {
        PhoneField {
            queue,
            taps: opts.taps,
            idle: opts.idle,
            gap: opts.gap,
            present: None,
            arrivals: 0,
            free_at: None,
            answered: 0,
            last: Instant::now(),
        }
    }

    /// Let time pass: the phone leaves when its presence time is up or it
    /// has been idle long enough after answering.
    pub fn tick(&mut self, now: Instant) {
        if self.present.is_none() {
            return;
        }
        if self.queue.should_leave() {
            self.leave(now);
        } else if self.answered > 0 && now.saturating_duration_since(self.last) >= self.idle {
            tracing::debug!("no APDU for {:?}: the phone leaves", self.idle);
            self.leave(now);
        }
    }

    /// Whether no phone is in the field and none will come (taps done).
    pub fn done(&self) -> bool {
        self.present.is_none()
            && (self.queue.is_empty() || self.taps.is_some_and(|n| self.queue.taps() >= n))
    }

    pub fn queue(&self) -> &PhoneQueue {
        self.queue
    }

    fn leave(&mut self, now: Instant) {
        self.queue.leave();
        self.present = None;
        // A gap too long to represent is as good as a day.
        let next = now
            .checked_add(self.gap)
            .unwrap_or(now + Duration::from_secs(86_400));
        self.free_at = Some(next);
    }
}

impl Field for PhoneField<'_> {
    fn activate(&mut self, now: Instant) -> Option<Presence> {
        if self.present.is_some() {
            return self.present;
        }
        if self.free_at.is_some_and(|t| now < t) || self.done() {
            return None;
        }
        let uid = self.queue.enter()?.uid();
        self.arrivals += 1;
        self.present = Some(Presence {
            uid,
            id: self.arrivals,
        });
        self.answered = 0;
        self.last = now;
        self.present
    }

    fn current(&self) -> Option<Presence> {
        self.present
    }

    fn transmit(&mut self, apdu: &[u8], _now: Instant) -> Reply {
        if self.present.is_none() {
            return Reply::Removed;
        }
        let reply = self.queue.transmit(apdu);
        // The phone may have taken its time (latency, delay fault).
        let now = Instant::now();
        match &reply {
            Reply::Data(_) => {
                self.answered += 1;
                self.last = now;
            }
            Reply::Removed => self.leave(now),
        }
        reply
    }

    fn field_off(&mut self, now: Instant) {
        if self.present.is_some() {
            tracing::debug!("RF field off: the phone leaves");
            self.leave(now);
        }
    }
}

/// The pseudo-terminal and the link to it. Dropping it removes the link if
/// it still points to this PTY.
#[derive(Debug)]
struct Pty {
    master: File,
    /// Held open so that the master never sees a hang-up between hosts and
    /// the line settings stay.
    slave: OwnedFd,
    path: PathBuf,
    link: PathBuf,
    /// `<link>.lock`, held while this emulator serves `link`: a second
    /// emulator on the same link is refused instead of taking it over.
    _lock: nix::fcntl::Flock<File>,
}

/// Take `<link>.lock`. The file stays after exit (removing a lock file
/// another process may be opening races); only the lock matters.
fn lock_link(link: &Path) -> Result<nix::fcntl::Flock<File>, Error> {
    let mut name = link.as_os_str().to_owned();
    name.push(".lock");
    let path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, e)| Error::Io {
            path: link.to_path_buf(),
            source: if e == Errno::EWOULDBLOCK {
                std::io::Error::other(format!(
                    "another tap-emu serves this link (it holds {}); stop it or choose another --link",
                    path.display()
                ))
            } else {
                std::io::Error::from(e)
            },
        },
    )
}

impl Pty {
    fn open(link: &Path) -> Result<Self, Error> {
        let lock = lock_link(link)?;
        let err = |e: Errno| Error::Io {
            path: link.to_path_buf(),
            source: std::io::Error::from(e),
        };
        let pty = nix::pty::openpty(None, None).map_err(err)?;
        let mut t = tcgetattr(&pty.slave).map_err(err)?;
        cfmakeraw(&mut t);
        t.control_flags |= ControlFlags::CLOCAL | ControlFlags::CREAD;
        cfsetspeed(&mut t, BaudRate::B115200).map_err(err)?;
        tcsetattr(&pty.slave, SetArg::TCSANOW, &t).map_err(err)?;
        fcntl(pty.master.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(err)?;
        let path = nix::unistd::ttyname(&pty.slave).map_err(err)?;
        replace_link(&path, link)?;
        Ok(Pty {
            master: File::from(pty.master),
            slave: pty.slave,
            path,
            link: link.to_path_buf(),
            _lock: lock,
        })
    }

    /// Write a whole frame; give up (and drop it) if the host does not read.
    fn write(&self, mut bytes: &[u8]) {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        while !bytes.is_empty() {
            match (&self.master).write(bytes) {
                Ok(0) => break,
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    let mut fds = [PollFd::new(self.master.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(TICK_MS));
                }
                Err(e) => {
                    tracing::warn!(error = %e, dropped = bytes.len(), "PN532: cannot write to the PTY");
                    break;
                }
            }
        }
    }

    /// Switch the line speed (SetSerialBaudRate). A PTY has no real speed;
    /// the setting is what a host reading the termios sees.
    fn set_speed(&self, rate: u32) {
        let baud = match rate {
            9_600 => BaudRate::B9600,
            19_200 => BaudRate::B19200,
            38_400 => BaudRate::B38400,
            57_600 => BaudRate::B57600,
            115_200 => BaudRate::B115200,
            230_400 => BaudRate::B230400,
            460_800 => BaudRate::B460800,
            921_600 => BaudRate::B921600,
            _ => {
                tracing::info!(
                    rate,
                    "PN532: serial speed has no termios setting; line unchanged"
                );
                return;
            }
        };
        let set = tcgetattr(&self.slave).and_then(|mut t| {
            cfsetspeed(&mut t, baud)?;
            tcsetattr(&self.slave, SetArg::TCSANOW, &t)
        });
        match set {
            Ok(()) => tracing::info!(rate, "PN532: serial speed switched"),
            Err(e) => tracing::warn!(rate, error = %e, "PN532: cannot set the serial speed"),
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if std::fs::read_link(&self.link).is_ok_and(|t| t == self.path) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}

/// Point `link` at `target`, replacing an existing (stale) symbolic link
/// atomically; anything else at `link` is left alone.
fn replace_link(target: &Path, link: &Path) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: link.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(link) {
        Ok(m) if m.file_type().is_symlink() => {
            tracing::info!(link = %link.display(), "replacing the existing link");
        }
        Ok(_) => {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a symbolic link; not replacing it",
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let name = link.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    let tmp = link.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io)?;
    std::fs::rename(&tmp, link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// Serve phones from `queue` as a PN532 behind a PTY linked at `opts.link`
/// until `opts.taps` taps are done or `stop` is set.
pub fn run(queue: &mut PhoneQueue, opts: &Pn532Options, stop: &AtomicBool) -> Result<(), Error> {
    let pty = Pty::open(&opts.link)?;
    tracing::info!(pty = %pty.path.display(), link = %opts.link.display(), "PN532 ready: libnfc connstring pn532_uart:{}", opts.link.display());
    let mut chip = Chip::new();
    let mut field = PhoneField::new(queue, opts);
    let mut out = |b: &[u8]| pty.write(b);
    let mut buf = [0u8; 1024];
    let mut last_rx = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        field.tick(now);
        if field.done() {
            tracing::info!(taps = field.queue().taps(), "PN532: all taps done");
            break;
        }
        chip.poll(now, &mut field, &mut out);
        if chip.has_partial() && now.saturating_duration_since(last_rx) >= FRAME_TIMEOUT {
            chip.expire_partial(now, &mut field, &mut out);
        }
        let mut fds = [PollFd::new(pty.master.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(TICK_MS)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                return Err(Error::Io {
                    path: opts.link.clone(),
                    source: e.into(),
                })
            }
        }
        match (&pty.master).read(&mut buf) {
            Ok(n) if n > 0 => {
                last_rx = Instant::now();
                chip.feed(
                    buf.get(..n).unwrap_or_default(),
                    last_rx,
                    &mut field,
                    &mut out,
                );
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(u64::from(TICK_MS))),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            // EIO: no host has the slave open (not while we hold it).
            Err(e) if e.raw_os_error() == Some(Errno::EIO as i32) => {
                std::thread::sleep(Duration::from_millis(u64::from(TICK_MS)))
            }
            Err(e) => {
                return Err(Error::Io {
                    path: opts.link.clone(),
                    source: e,
                })
            }
        }
        if let Some(rate) = chip.take_baud_rate() {
            pty.set_speed(rate);
        }
    }
    Ok(())
}
