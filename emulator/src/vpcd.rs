//! The vpcd front-end: the phone as a card in vsmartcard's virtual reader.
//!
//! pcscd's vpcd driver listens on TCP (35963 by default); the card connects
//! to it. Every message is a 2-byte big-endian length and a payload. A
//! 1-byte payload from the reader is a control message — `00` power off,
//! `01` power on, `02` reset, `04` get ATR (answered with the ATR) — any
//! other payload is a command APDU, answered with the response APDU.
//! Closing the socket removes the card.
//!
//! Delayed ACKs would cost about 40 ms per APDU, so the socket sets
//! `TCP_NODELAY` and re-arms `TCP_QUICKACK` after every read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use socket2::SockRef;

use crate::phone::{PhoneQueue, Reply, ATR};
use crate::Error;

/// Largest APDU accepted from the reader side (extended length + header).
pub const MAX_FRAME: usize = 65_544;

#[derive(Debug, Clone)]
pub struct VpcdOptions {
    pub addr: SocketAddr,
    /// Stop after this many taps.
    pub taps: Option<usize>,
    /// Leave the field after this long without a command, once the phone
    /// has answered at least one.
    pub idle: Duration,
    /// Time between one phone leaving and the next one arriving. pcscd
    /// polls card presence about every 400 ms; a shorter gap can go unseen.
    pub gap: Duration,
    /// How long to keep trying to reach vpcd.
    pub connect_timeout: Duration,
}

impl Default for VpcdOptions {
    fn default() -> Self {
        VpcdOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 35963)),
            taps: None,
            idle: Duration::from_millis(1500),
            gap: Duration::from_millis(1000),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

fn connect(opts: &VpcdOptions, stop: &AtomicBool) -> Result<TcpStream, Error> {
    let deadline = Instant::now() + opts.connect_timeout;
    loop {
        match TcpStream::connect_timeout(&opts.addr, Duration::from_secs(2)) {
            Ok(s) => {
                s.set_nodelay(true).map_err(|source| Error::Net { addr: opts.addr, source })?;
                return Ok(s);
            }
            Err(source) => {
                if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                    return Err(Error::Net { addr: opts.addr, source });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// How one presence in the field ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The phone left (idle, fault, presence time) — the card is removed.
    Left,
    /// vpcd closed the connection (pcscd stopped).
    ReaderGone,
    Stopped,
}

/// Serve phones from `queue` to vpcd until `opts.taps` taps are done or
/// `stop` is set.
pub fn run(queue: &mut PhoneQueue, opts: &VpcdOptions, stop: &AtomicBool) -> Result<(), Error> {
    if queue.is_empty() {
        return Ok(());
    }
    while !stop.load(Ordering::Relaxed) && opts.taps.is_none_or(|n| queue.taps() < n) {
        let mut stream = connect(opts, stop)?;
        queue.enter();
        let ending = serve(&mut stream, queue, opts, stop);
        queue.leave();
        drop(stream);
        match ending {
            Ok(Ending::Stopped) => break,
            Ok(Ending::Left) | Ok(Ending::ReaderGone) => {}
            Err(e) => tracing::warn!(error = %e, "vpcd connection failed"),
        }
        std::thread::sleep(opts.gap);
    }
    Ok(())
}

fn serve(stream: &mut TcpStream, queue: &mut PhoneQueue, opts: &VpcdOptions, stop: &AtomicBool) -> Result<Ending, Error> {
    let net = |source| Error::Net { addr: opts.addr, source };
    let mut last = Instant::now();
    let mut answered = 0usize;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(Ending::Stopped);
        }
        if queue.should_leave() || (answered > 0 && last.elapsed() >= opts.idle) {
            return Ok(Ending::Left);
        }
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(50u8)).map_err(|e| net(std::io::Error::from(e)))?;
        if ready == 0 {
            continue;
        }
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(net)?;
        let mut len = [0u8; 2];
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Ending::ReaderGone),
            Err(e) => return Err(net(e)),
        }
        let n = usize::from(u16::from_be_bytes(len));
        if n == 0 || n > MAX_FRAME {
            // Nothing the driver sends; treat as a broken reader.
            return Ok(Ending::ReaderGone);
        }
        let mut msg = vec![0u8; n];
        stream.read_exact(&mut msg).map_err(net)?;
        let _ = SockRef::from(&*stream).set_quickack(true);
        // vpcd polls presence with control messages (about every 400 ms):
        // only APDUs count as activity for the idle timer.
        let reply = match msg.as_slice() {
            [0x00] | [0x01] | [0x02] => {
                if let Some(p) = queue.current() {
                    // Power cycling the card is a new card session.
                    p.enter_field();
                }
                continue;
            }
            [0x04] => ATR.to_vec(),
            [_] => continue,
            apdu => match queue.transmit(apdu) {
                Reply::Data(d) => {
                    answered += 1;
                    last = Instant::now();
                    d
                }
                Reply::Removed => return Ok(Ending::Left),
            },
        };
        let mut frame = Vec::with_capacity(reply.len() + 2);
        frame.extend_from_slice(&u16::try_from(reply.len()).unwrap_or(u16::MAX).to_be_bytes());
        frame.extend_from_slice(&reply);
        stream.write_all(&frame).map_err(net)?;
    }
}
