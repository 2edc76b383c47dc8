//! The vpcd front-end: the phone as a card in vsmartcard's virtual reader.
//!
//! pcscd's vpcd driver listens on TCP (35963 by default); the card connects
//! to it. Every message is a 2-byte big-endian length and a payload. A
//! 1-byte payload from the reader is a control message — `00` power off,
//! `01` power on, `02` reset, `04` get ATR (answered with the ATR) — any
//! other payload is a command APDU, answered with the response APDU.
//! Closing the socket removes the card.
//!
//! The framing is a pure decoder ([`next_message`], [`decode`]) and encoder
//! ([`encode`]), fuzzed by `fuzz/fuzz_targets/vpcd_frames.rs`. The reader
//! side is not trusted: a zero-length frame (nothing the driver sends) ends
//! the connection, an unknown control byte is logged and skipped, a frame
//! left incomplete for [`FRAME_TIMEOUT`] ends the connection, a reader that
//! stops reading our answers for [`WRITE_TIMEOUT`] ends it too. At most one
//! incomplete frame and one read chunk are buffered.
//!
//! Delayed ACKs would cost about 40 ms per APDU (vpcd writes the length and
//! the payload in two `send`s; with Nagle on its side the payload waits for
//! our ACK of the length), so the socket sets `TCP_NODELAY` and re-arms
//! `TCP_QUICKACK` after every read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use socket2::SockRef;

use crate::phone::{PhoneQueue, Reply, ATR};
use crate::Error;

/// Largest payload of a frame: what a 2-byte length can announce. Every
/// APDU up to this size reaches the phone, which answers `6700` for lengths
/// it does not take (an extended APDU can be up to 65 544 bytes; vpcd cannot
/// carry those).
pub const MAX_FRAME: usize = u16::MAX as usize;
/// Bytes of the length prefix.
pub const HEADER: usize = 2;
/// Control message: power the card off.
pub const CTRL_OFF: u8 = 0x00;
/// Control message: power the card on.
pub const CTRL_ON: u8 = 0x01;
/// Control message: reset (warm reset) the card.
pub const CTRL_RESET: u8 = 0x02;
/// Control message: send the ATR.
pub const CTRL_ATR: u8 = 0x04;
/// How long an incomplete frame may wait for its remaining bytes.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(1);
/// How long writing one answer may block on a reader that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 4096;

/// One message from the reader (vpcd) to the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    PowerOff,
    PowerOn,
    Reset,
    GetAtr,
    /// A command APDU (any payload of 2 bytes or more; the card judges it).
    Apdu(&'a [u8]),
}

impl Message<'_> {
    /// The payload that carries this message.
    pub fn payload(&self) -> &[u8] {
        match self {
            Message::PowerOff => &[CTRL_OFF],
            Message::PowerOn => &[CTRL_ON],
            Message::Reset => &[CTRL_RESET],
            Message::GetAtr => &[CTRL_ATR],
            Message::Apdu(a) => a,
        }
    }
}

/// A frame the card refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A length of 0: vpcd never sends one; the stream cannot be trusted.
    #[error("zero-length vpcd frame")]
    Empty,
    /// Longer than the limit: refused before its payload is read.
    #[error("vpcd frame of {len} bytes is longer than {max}")]
    TooLong { len: usize, max: usize },
    /// A 1-byte payload that is none of `00`, `01`, `02`, `04`. The frame
    /// boundary is intact: skip it ([`FrameError::skip`]) and go on.
    #[error("unknown vpcd control message {byte:02X}")]
    UnknownControl { byte: u8 },
}

impl FrameError {
    /// Bytes to drop to stay in step with the reader, or `None` when the
    /// stream cannot be trusted any more and the card must disconnect.
    pub fn skip(&self) -> Option<usize> {
        match self {
            FrameError::UnknownControl { .. } => Some(HEADER + 1),
            FrameError::Empty | FrameError::TooLong { .. } => None,
        }
    }
}

/// The message at the start of `buf` and the bytes it takes, `None` while
/// the frame is incomplete. Frames up to [`MAX_FRAME`].
pub fn next_message(buf: &[u8]) -> Result<Option<(Message<'_>, usize)>, FrameError> {
    decode(buf, MAX_FRAME)
}

/// [`next_message`] with a payload limit of `max_frame` bytes. An
/// oversized or zero length is refused as soon as the 2 length bytes are
/// in, without waiting for the payload.
pub fn decode(buf: &[u8], max_frame: usize) -> Result<Option<(Message<'_>, usize)>, FrameError> {
    let Some((&[hi, lo], rest)) = buf.split_first_chunk::<HEADER>() else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max_frame {
        return Err(FrameError::TooLong {
            len,
            max: max_frame,
        });
    }
    let Some(payload) = rest.get(..len) else {
        return Ok(None);
    };
    let msg = match payload {
        [CTRL_OFF] => Message::PowerOff,
        [CTRL_ON] => Message::PowerOn,
        [CTRL_RESET] => Message::Reset,
        [CTRL_ATR] => Message::GetAtr,
        [byte] => return Err(FrameError::UnknownControl { byte: *byte }),
        apdu => Message::Apdu(apdu),
    };
    Ok(Some((msg, HEADER + len)))
}

/// Append the frame carrying `payload` to `out` (either direction).
/// Payloads of 0 or more than [`MAX_FRAME`] bytes have no frame.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = u16::try_from(payload.len()).map_err(|_| FrameError::TooLong {
        len: payload.len(),
        max: MAX_FRAME,
    })?;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    out.reserve(HEADER + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

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
    /// Set `TCP_NODELAY` and re-arm `TCP_QUICKACK` (the default). Off only
    /// to measure what they save (`emulator/benches/transport.rs`).
    pub tcp_tuning: bool,
}

impl Default for VpcdOptions {
    fn default() -> Self {
        VpcdOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 35963)),
            taps: None,
            idle: Duration::from_millis(1500),
            gap: Duration::from_millis(1000),
            connect_timeout: Duration::from_secs(30),
            tcp_tuning: true,
        }
    }
}

fn connect(opts: &VpcdOptions, stop: &AtomicBool) -> Result<TcpStream, Error> {
    let net = |source| Error::Net {
        addr: opts.addr,
        source,
    };
    let deadline = Instant::now() + opts.connect_timeout;
    loop {
        match TcpStream::connect_timeout(&opts.addr, Duration::from_secs(2)) {
            Ok(s) => {
                s.set_nodelay(opts.tcp_tuning).map_err(net)?;
                s.set_write_timeout(Some(WRITE_TIMEOUT)).map_err(net)?;
                return Ok(s);
            }
            Err(source) => {
                if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                    return Err(net(source));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Sleep for `d`, waking early when `stop` is set.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// How one presence in the field ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The phone left (idle, fault, presence time) — the card is removed.
    Left,
    /// vpcd closed the connection (pcscd stopped) or broke the framing.
    ReaderGone,
    Stopped,
}

/// Serve phones from `queue` to vpcd until `opts.taps` taps are done or
/// `stop` is set.
pub fn run(queue: &mut PhoneQueue, opts: &VpcdOptions, stop: &AtomicBool) -> Result<(), Error> {
    if queue.is_empty() {
        return Ok(());
    }
    tracing::info!(addr = %opts.addr, "waiting for vpcd");
    while !stop.load(Ordering::Relaxed) && opts.taps.is_none_or(|n| queue.taps() < n) {
        let mut stream = match connect(opts, stop) {
            Ok(s) => s,
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(e) => return Err(e),
        };
        queue.enter();
        let ending = serve(&mut stream, queue, opts, stop);
        queue.leave();
        drop(stream);
        match ending {
            Ok(Ending::Stopped) => break,
            Ok(Ending::Left) | Ok(Ending::ReaderGone) => {}
            Err(e) => tracing::warn!(error = %e, "vpcd connection failed"),
        }
        sleep_unless_stopped(opts.gap, stop);
    }
    Ok(())
}

/// What the card does with one message: the answer to send, if any.
enum Step {
    Answer(Vec<u8>),
    Silent,
    Left,
}

fn step(msg: Message<'_>, queue: &mut PhoneQueue) -> Step {
    match msg {
        Message::PowerOff | Message::PowerOn | Message::Reset => {
            if let Some(p) = queue.current() {
                // Power cycling the card is a new card session.
                p.enter_field();
            }
            Step::Silent
        }
        Message::GetAtr => Step::Answer(ATR.to_vec()),
        Message::Apdu(apdu) => match queue.transmit(apdu) {
            Reply::Data(d) => Step::Answer(d),
            Reply::Removed => Step::Left,
        },
    }
}

fn serve(
    stream: &mut TcpStream,
    queue: &mut PhoneQueue,
    opts: &VpcdOptions,
    stop: &AtomicBool,
) -> Result<Ending, Error> {
    let net = |source| Error::Net {
        addr: opts.addr,
        source,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    let mut out: Vec<u8> = Vec::new();
    let mut last_apdu = Instant::now();
    let mut last_rx = Instant::now();
    let mut answered = 0usize;
    loop {
        // Everything complete in the buffer first.
        let mut used_total = 0;
        loop {
            let rest = buf.get(used_total..).unwrap_or_default();
            let (msg, used) = match next_message(rest) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => match e.skip() {
                    Some(n) => {
                        tracing::warn!(error = %e, "vpcd: ignoring a frame");
                        used_total += n;
                        continue;
                    }
                    None => {
                        tracing::warn!(error = %e, "vpcd: broken framing; disconnecting");
                        return Ok(Ending::ReaderGone);
                    }
                },
            };
            used_total += used;
            let is_apdu = matches!(msg, Message::Apdu(_));
            let answer = match step(msg, queue) {
                Step::Answer(a) => a,
                Step::Silent => continue,
                Step::Left => return Ok(Ending::Left),
            };
            // vpcd polls presence with control messages (about every 400
            // ms): only APDUs count as activity for the idle timer.
            if is_apdu {
                answered += 1;
                last_apdu = Instant::now();
            }
            out.clear();
            if let Err(e) = encode(&answer, &mut out) {
                tracing::warn!(error = %e, "vpcd: the answer has no frame; sending 6F00");
                out.clear();
                out.extend_from_slice(&[0x00, 0x02, 0x6F, 0x00]);
            }
            stream.write_all(&out).map_err(net)?;
        }
        buf.drain(..used_total.min(buf.len()));

        if stop.load(Ordering::Relaxed) {
            return Ok(Ending::Stopped);
        }
        if queue.should_leave() || (answered > 0 && last_apdu.elapsed() >= opts.idle) {
            return Ok(Ending::Left);
        }
        if !buf.is_empty() && last_rx.elapsed() >= FRAME_TIMEOUT {
            tracing::warn!(
                buffered = buf.len(),
                "vpcd: frame left incomplete; disconnecting"
            );
            return Ok(Ending::ReaderGone);
        }
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN)];
        let ready =
            poll(&mut fds, PollTimeout::from(50u8)).map_err(|e| net(std::io::Error::from(e)))?;
        if ready == 0 {
            continue;
        }
        // POLLIN (or a hang-up): this read does not block.
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(Ending::ReaderGone),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(Ending::ReaderGone)
            }
            Err(e) => return Err(net(e)),
        };
        if opts.tcp_tuning {
            let _ = SockRef::from(&*stream).set_quickack(true);
        }
        last_rx = Instant::now();
        // Bounded: at most one incomplete frame (< HEADER + MAX_FRAME) and
        // one chunk, as complete frames are drained above.
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(payload, &mut v).unwrap();
        v
    }

    #[test]
    fn decodes_control_messages_and_apdus() {
        assert_eq!(next_message(&[0, 1, 0]), Ok(Some((Message::PowerOff, 3))));
        assert_eq!(next_message(&[0, 1, 1]), Ok(Some((Message::PowerOn, 3))));
        assert_eq!(next_message(&[0, 1, 2]), Ok(Some((Message::Reset, 3))));
        assert_eq!(next_message(&[0, 1, 4]), Ok(Some((Message::GetAtr, 3))));
        let select = [0x00, 0xA4, 0x04, 0x00, 0x02, 0xF0, 0x54, 0x00];
        let mut line = frame(&select);
        line.extend_from_slice(&[0, 1, 4]);
        assert_eq!(next_message(&line), Ok(Some((Message::Apdu(&select), 10))));
        assert_eq!(next_message(&line[10..]), Ok(Some((Message::GetAtr, 3))));
        // Two bytes are an APDU too (the card answers 6700).
        assert_eq!(
            next_message(&[0, 2, 0x80, 0x99]),
            Ok(Some((Message::Apdu(&[0x80, 0x99]), 4)))
        );
        for m in [
            Message::PowerOff,
            Message::PowerOn,
            Message::Reset,
            Message::GetAtr,
            Message::Apdu(&select),
        ] {
            let f = frame(m.payload());
            assert_eq!(next_message(&f), Ok(Some((m, f.len()))));
        }
    }

    #[test]
    fn incomplete_frames_wait_for_more_bytes() {
        let f = frame(&[0x00, 0xA4, 0x04, 0x00, 0x00]);
        for cut in 0..f.len() {
            assert_eq!(next_message(&f[..cut]), Ok(None), "cut {cut}");
        }
        // The largest frame, one byte short.
        let mut big = vec![0xFF, 0xFF];
        big.resize(HEADER + MAX_FRAME - 1, 0x5A);
        assert_eq!(next_message(&big), Ok(None));
        big.push(0x5A);
        assert!(
            matches!(next_message(&big), Ok(Some((Message::Apdu(a), n))) if a.len() == MAX_FRAME && n == big.len())
        );
    }

    #[test]
    fn refuses_empty_oversized_and_unknown_frames_clearly() {
        assert_eq!(next_message(&[0, 0]), Err(FrameError::Empty));
        assert_eq!(next_message(&[0, 0, 1, 2, 3]), Err(FrameError::Empty));
        assert_eq!(FrameError::Empty.skip(), None);
        // Refused on the length alone.
        assert_eq!(
            decode(&[0x01, 0x00], 255),
            Err(FrameError::TooLong { len: 256, max: 255 })
        );
        assert_eq!(decode(&[0x00, 0xFF], 255), Ok(None));
        assert_eq!(FrameError::TooLong { len: 256, max: 255 }.skip(), None);
        for byte in [0x03, 0x05, 0x7F, 0xFF] {
            let e = next_message(&[0, 1, byte]).unwrap_err();
            assert_eq!(e, FrameError::UnknownControl { byte });
            assert_eq!(e.skip(), Some(3));
            assert!(e.to_string().contains(&format!("{byte:02X}")), "{e}");
        }
        assert_eq!(FrameError::Empty.to_string(), "zero-length vpcd frame");
    }

    #[test]
    fn encodes_answers_and_refuses_what_has_no_frame() {
        assert_eq!(frame(&[0x90, 0x00]), [0x00, 0x02, 0x90, 0x00]);
        let mut out = Vec::new();
        assert_eq!(encode(&[], &mut out), Err(FrameError::Empty));
        assert_eq!(
            encode(&vec![0; MAX_FRAME + 1], &mut out),
            Err(FrameError::TooLong {
                len: MAX_FRAME + 1,
                max: MAX_FRAME
            })
        );
        assert!(out.is_empty());
        encode(&vec![0; MAX_FRAME], &mut out).unwrap();
        assert_eq!(out.len(), HEADER + MAX_FRAME);
    }

    /// A reader that breaks every rule, played over loopback against the
    /// real connection loop: answers where an answer is due, silence for
    /// an unknown control byte, a clean disconnect for broken framing or a
    /// frame that never completes, and a prompt end when stopped.
    #[test]
    fn a_hostile_reader_gets_answers_or_a_clean_disconnect() {
        use std::net::TcpListener;

        use rand_core::OsRng;
        use tapstack_protocol::messages::AID;
        use tapstack_protocol::testkit::Pki;

        use crate::faults::FaultScript;
        use crate::phone::Phone;
        use crate::profile::CvmPolicy;
        use crate::state::AtcStore;

        const PATIENCE: Duration = Duration::from_secs(30);
        fn read_frame(c: &mut TcpStream) -> Vec<u8> {
            let mut len = [0u8; 2];
            c.read_exact(&mut len).unwrap();
            let mut p = vec![0u8; usize::from(u16::from_be_bytes(len))];
            c.read_exact(&mut p).unwrap();
            p
        }
        fn closed(c: &mut TcpStream) -> bool {
            let mut b = [0u8; 16];
            match c.read(&mut b) {
                Ok(n) => n == 0,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
        fn accept(l: &TcpListener) -> TcpStream {
            let (c, _) = l.accept().unwrap();
            c.set_read_timeout(Some(PATIENCE)).unwrap();
            c
        }

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let opts = VpcdOptions {
            addr: listener.local_addr().unwrap(),
            taps: Some(3),
            idle: Duration::from_secs(600),
            gap: Duration::ZERO,
            ..Default::default()
        };
        let pki = Pki::generate(&mut OsRng);
        let phone = Phone::new(
            "alice",
            pki.wallet_context(),
            AtcStore::in_memory(0),
            CvmPolicy::ConfirmOnPhone,
            Duration::ZERO,
        );
        let mut queue = PhoneQueue::new(vec![phone], FaultScript::default());
        let stop = AtomicBool::new(false);
        let mut select = vec![0x00, 0xA4, 0x04, 0x00, AID.len() as u8];
        select.extend_from_slice(&AID);
        select.push(0x00);
        std::thread::scope(|s| {
            let card = s.spawn(|| run(&mut queue, &opts, &stop));

            // Tap 1: the ATR; an APDU dribbled in byte by byte; an unknown
            // control byte (skipped, no answer); malformed APDUs get status
            // words; a zero-length frame ends the connection.
            let mut c = accept(&listener);
            c.write_all(&frame(&[CTRL_ATR])).unwrap();
            assert_eq!(read_frame(&mut c), ATR);
            for b in frame(&select) {
                c.write_all(&[b]).unwrap();
            }
            let fci = read_frame(&mut c);
            assert_eq!(fci[fci.len() - 2..], [0x90, 0x00], "{fci:02X?}");
            c.write_all(&[0x00, 0x01, 0x07]).unwrap();
            c.write_all(&frame(&[0x80, 0x99, 0x00, 0x00])).unwrap();
            assert_eq!(read_frame(&mut c), [0x6D, 0x00], "unknown instruction");
            c.write_all(&frame(&[0x00, 0xA4, 0x04])).unwrap();
            assert_eq!(read_frame(&mut c), [0x67, 0x00], "wrong length");
            c.write_all(&frame(&[0x00, 0xA4, 0x04, 0x00, 0x05, 0x01]))
                .unwrap();
            assert_eq!(read_frame(&mut c), [0x67, 0x00], "Lc beyond the data");
            c.write_all(&[0x00, 0x00, 0x00, 0x01, 0x04]).unwrap();
            assert!(closed(&mut c), "zero-length frame: disconnect");

            // Tap 2: the largest length, then silence: disconnected once
            // the frame has waited FRAME_TIMEOUT.
            let mut c = accept(&listener);
            c.write_all(&[0xFF, 0xFF, 0x00, 0xA4, 0x04]).unwrap();
            assert!(closed(&mut c), "incomplete frame: disconnect");

            // Tap 3: stopped while the reader holds the card.
            let mut c = accept(&listener);
            c.write_all(&frame(&[CTRL_ON])).unwrap();
            c.write_all(&frame(&[CTRL_ATR])).unwrap();
            assert_eq!(read_frame(&mut c), ATR);
            stop.store(true, Ordering::Relaxed);
            assert!(closed(&mut c), "stopped: disconnect");
            card.join().unwrap().unwrap();
        });
        assert_eq!(queue.taps(), 3);
        assert_eq!(queue.phones()[0].atc(), 0, "no counter spent");
    }
}
