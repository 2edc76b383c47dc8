//! The PN532 host controller: commands over any [`Port`] (an async byte
//! line) framed with [`HsuCodec`], with ACK handling, resend, NACK on a
//! garbled response, abort (host ACK) on a timeout or a cancel, and the few
//! commands a reader needs. Every wait is a future: for a frame, raced
//! against its deadline (`tokio::time`, so a paused test clock drives it)
//! and, where the caller gave one, against [`Cancel::cancelled`]. A port
//! that has nothing more to say ends every wait at its deadline (so the fuzz
//! target never hangs).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use futures_sink::Sink;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_util::codec::Framed;

use super::codec::{HsuCodec, Outgoing};
use crate::Cancel;
use tapstack_pn532::frame::{Frame, FrameError, TFI_CHIP, TFI_HOST};
pub use tapstack_pn532::{cmd, status, MAX_EXCHANGE_DATA, WAKE_UP};

/// The serial line, as the host controller needs it: bytes both ways
/// (async), and the two line controls.
pub trait Port: AsyncRead + AsyncWrite + Unpin {
    /// Drop input not read yet (in the OS; the host drops its own buffers).
    fn discard_input(&mut self) -> io::Result<()>;
    /// Switch the host side of the line to `baud`.
    fn set_baud(&mut self, baud: u32) -> io::Result<()>;
}

/// How long the chip gets to ACK a frame before it is sent again.
pub const ACK_TIMEOUT: Duration = Duration::from_millis(150);
/// Sends of one frame at most.
const MAX_SENDS: u32 = 3;
/// NACKs sent for garbled responses to one command at most.
const MAX_NACKS: u32 = 2;
/// Frames read while waiting for one answer at most (stale frames, noise).
const MAX_FRAMES: u32 = 64;
/// Bound on writing one frame (a line that takes nothing is gone).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors of the PN532 host controller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pn532Error {
    #[error("timed out")]
    Timeout,
    #[error("cancelled")]
    Cancelled,
    #[error("no ACK for command {command:#04x} after {sends} sends")]
    NoAck { command: u8, sends: u32 },
    #[error("the PN532 answered command {command:#04x} with its error frame")]
    ErrorFrame { command: u8 },
    #[error("bad frame from the PN532: {0}")]
    Frame(FrameError),
    #[error("the PN532 answered command {command:#04x} with something else: {what}")]
    Unexpected { command: u8, what: &'static str },
    #[error("command {command:#04x} failed with PN532 status {status:#04x}")]
    Status { command: u8, status: u8 },
    #[error("IC {ic:#04x} is not a PN532")]
    NotPn532 { ic: u8 },
    #[error("too many frames without an answer to command {command:#04x}")]
    Noise { command: u8 },
    #[error("serial line: {0}")]
    Io(#[from] io::Error),
}

impl Pn532Error {
    /// Whether the serial line itself is gone (port closed, unplugged):
    /// any I/O error on a serial port (timeouts are not I/O errors here).
    pub fn is_line_gone(&self) -> bool {
        matches!(self, Pn532Error::Io(_))
    }
}

/// A target found by InListPassiveTarget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedTarget {
    pub atqa: [u8; 2],
    pub sak: u8,
    pub uid: Vec<u8>,
    /// ATS when the chip did RATS (ISO 14443-4 targets).
    pub ats: Option<Vec<u8>>,
}

impl ListedTarget {
    /// Whether the target speaks ISO 14443-4 (SAK bit 6).
    pub fn is_iso_dep(&self) -> bool {
        self.sak & 0x20 != 0
    }

    /// Parse InListPassiveTarget's answer (106 kbps type A, one target).
    pub fn parse(d: &[u8]) -> Result<Option<Self>, &'static str> {
        let [nb, rest @ ..] = d else {
            return Err("empty answer");
        };
        if *nb == 0 {
            return Ok(None);
        }
        let [_tg, a0, a1, sak, uid_len, rest @ ..] = rest else {
            return Err("short target data");
        };
        let n = usize::from(*uid_len);
        if n == 0 || n > 10 || rest.len() < n {
            return Err("bad UID length");
        }
        let (uid, rest) = rest.split_at(n);
        let ats = match rest.split_first() {
            None => None,
            Some((&tl, _)) if usize::from(tl) <= rest.len() && tl > 0 => {
                Some(rest[..usize::from(tl)].to_vec())
            }
            Some(_) => return Err("bad ATS length"),
        };
        Ok(Some(ListedTarget {
            atqa: [*a0, *a1],
            sak: *sak,
            uid: uid.to_vec(),
            ats,
        }))
    }
}

/// How one exchange with the target ended, as the chip reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// The response APDU.
    Data(Vec<u8>),
    /// The chip's status for a failed exchange (0x01: the target did not
    /// answer; 0x27/0x29: no target).
    Failed(u8),
}

/// A PN532 behind a serial line.
#[derive(Debug)]
pub struct Pn532<P> {
    line: Framed<P, HsuCodec>,
    baud: u32,
    /// Firmware IC, version, revision, support.
    pub firmware: Option<[u8; 4]>,
}

enum AckWait {
    Ack,
    Resend(Pn532Error),
}

impl<P: Port> Pn532<P> {
    pub fn new(port: P, baud: u32) -> Self {
        Pn532 {
            line: Framed::new(port, HsuCodec::new()),
            baud,
            firmware: None,
        }
    }

    /// The port, for a caller that takes over the line (bytes read but not
    /// yet taken as frames are dropped).
    pub fn into_port(self) -> P {
        self.line.into_inner()
    }

    pub fn port_mut(&mut self) -> &mut P {
        self.line.get_mut()
    }

    /// The host port was switched to `baud` by the caller.
    pub fn assume_baud(&mut self, baud: u32) {
        self.baud = baud;
    }

    /// The line speed in use.
    pub fn baud(&self) -> u32 {
        self.baud
    }

    /// Write one frame (or the wake-up), within [`WRITE_TIMEOUT`].
    async fn send(&mut self, out: Outgoing<'_>) -> Result<(), Pn532Error> {
        let line = &mut self.line;
        let write = async {
            poll_fn(|cx| Sink::<Outgoing<'_>>::poll_ready(Pin::new(&mut *line), cx)).await?;
            Pin::new(&mut *line).start_send(out)?;
            poll_fn(|cx| Sink::<Outgoing<'_>>::poll_flush(Pin::new(&mut *line), cx)).await
        };
        match timeout(WRITE_TIMEOUT, write).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Pn532Error::Io(io::ErrorKind::TimedOut.into())),
        }
    }

    /// The next frame from the chip, or `None` once `deadline` passed (a
    /// frame already read is returned even then). The end of the line is an
    /// I/O error. Cancel-safe: bytes read stay in the framed buffer.
    async fn next_frame(&mut self, deadline: Instant) -> Result<Option<Frame>, Pn532Error> {
        let line = &mut self.line;
        match timeout_at(deadline, poll_fn(|cx| Pin::new(&mut *line).poll_next(cx))).await {
            Err(_) => Ok(None),
            Ok(None) => Err(Pn532Error::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(Some(r)) => Ok(Some(r?)),
        }
    }

    /// Drop what the chip sent and was not read yet: in the OS, in the
    /// framed read buffer, in the frame parser.
    fn discard_input(&mut self) -> Result<(), Pn532Error> {
        self.line.get_mut().discard_input()?;
        self.line.read_buffer_mut().clear();
        self.line.codec_mut().clear();
        Ok(())
    }

    /// Abort the command the chip is running (the host's ACK).
    pub async fn abort(&mut self) -> Result<(), Pn532Error> {
        self.send(Outgoing::Ack).await
    }

    /// Wake the chip from power-down / first use (HSU).
    pub async fn wake(&mut self) -> Result<(), Pn532Error> {
        self.send(Outgoing::WakeUp).await
    }

    async fn wait_ack(&mut self, code: u8, deadline: Instant) -> Result<AckWait, Pn532Error> {
        for _ in 0..MAX_FRAMES {
            match self.next_frame(deadline).await? {
                Some(Frame::Ack) => return Ok(AckWait::Ack),
                Some(f) if f.is_error_frame() => {
                    return Ok(AckWait::Resend(Pn532Error::ErrorFrame { command: code }))
                }
                // A response before our ACK belongs to an earlier command
                // (one that timed out): skip it.
                Some(Frame::Info { tfi: TFI_CHIP, .. }) => {}
                Some(Frame::Info { tfi, .. }) => {
                    return Ok(AckWait::Resend(Pn532Error::Frame(FrameError::WrongTfi(
                        tfi,
                    ))))
                }
                Some(Frame::Nack) => {
                    return Ok(AckWait::Resend(Pn532Error::Unexpected {
                        command: code,
                        what: "NACK",
                    }))
                }
                Some(Frame::Bad(e)) => return Ok(AckWait::Resend(Pn532Error::Frame(e))),
                None => {
                    return Ok(AckWait::Resend(Pn532Error::NoAck {
                        command: code,
                        sends: 1,
                    }))
                }
            }
        }
        Err(Pn532Error::Noise { command: code })
    }

    /// Send a command and wait for its response (the data after the
    /// response code) until `timeout`; the wait for the response ends at
    /// once when `cancel` is set (the chip is told to abort).
    /// Commands that may not run twice (`idempotent == false`) are sent
    /// again only when the chip refused the frame, not when its ACK is late.
    pub async fn command(
        &mut self,
        code: u8,
        params: &[u8],
        timeout: Duration,
        cancel: Option<&Cancel>,
        idempotent: bool,
    ) -> Result<Vec<u8>, Pn532Error> {
        let deadline = Instant::now() + timeout;
        let mut data = Vec::with_capacity(params.len() + 1);
        data.push(code);
        data.extend_from_slice(params);
        let frame = Outgoing::Info {
            tfi: TFI_HOST,
            data: &data,
        };
        self.discard_input()?;
        let mut sends = 0;
        loop {
            sends += 1;
            self.send(frame).await?;
            let ack_deadline = if idempotent {
                (Instant::now() + ACK_TIMEOUT).min(deadline)
            } else {
                deadline
            };
            match self.wait_ack(code, ack_deadline).await? {
                AckWait::Ack => break,
                AckWait::Resend(_) if sends < MAX_SENDS && Instant::now() < deadline => {
                    tracing::debug!(command = code, sends, "PN532: frame sent again");
                }
                AckWait::Resend(Pn532Error::NoAck { .. }) => {
                    return Err(if Instant::now() >= deadline && !idempotent {
                        Pn532Error::Timeout
                    } else {
                        Pn532Error::NoAck {
                            command: code,
                            sends,
                        }
                    })
                }
                AckWait::Resend(e) => return Err(e),
            }
        }
        let mut nacks = 0;
        let mut frames = 0;
        while frames < MAX_FRAMES {
            // `None`: cancelled; `Some(None)`: the deadline passed.
            let got = match cancel {
                None => Some(self.next_frame(deadline).await?),
                Some(c) => tokio::select! {
                    biased;
                    () = c.cancelled() => None,
                    f = self.next_frame(deadline) => Some(f?),
                },
            };
            let Some(frame) = got else {
                self.abort().await?;
                return Err(Pn532Error::Cancelled);
            };
            frames += u32::from(frame.is_some());
            match frame {
                None => {
                    self.abort().await?;
                    return Err(if cancel.is_some_and(Cancel::is_cancelled) {
                        Pn532Error::Cancelled
                    } else {
                        Pn532Error::Timeout
                    });
                }
                Some(f) if f.is_error_frame() => {
                    return Err(Pn532Error::ErrorFrame { command: code })
                }
                Some(Frame::Info {
                    tfi: TFI_CHIP,
                    data,
                }) => match data.split_first() {
                    Some((&c, rest)) if c == code.wrapping_add(1) => return Ok(rest.to_vec()),
                    _ => {}
                },
                Some(Frame::Ack) | Some(Frame::Nack) => {}
                Some(Frame::Info { tfi, .. }) => {
                    return Err(Pn532Error::Frame(FrameError::WrongTfi(tfi)))
                }
                Some(Frame::Bad(e)) => {
                    if nacks >= MAX_NACKS {
                        return Err(Pn532Error::Frame(e));
                    }
                    nacks += 1;
                    // Ask for the response again.
                    self.send(Outgoing::Nack).await?;
                }
            }
        }
        Err(Pn532Error::Noise { command: code })
    }

    /// Wake the chip and configure it as a reader: SAM off (normal mode),
    /// firmware check, automatic RATS, endless passive activation retries
    /// (aborted by the host), RF field on.
    pub async fn init(&mut self, timeout: Duration) -> Result<(), Pn532Error> {
        self.wake().await?;
        self.command(
            cmd::SAM_CONFIGURATION,
            &[0x01, 0x14, 0x01],
            timeout,
            None,
            true,
        )
        .await?;
        let fw = self
            .command(cmd::GET_FIRMWARE_VERSION, &[], timeout, None, true)
            .await?;
        let fw: [u8; 4] = fw
            .as_slice()
            .try_into()
            .map_err(|_| Pn532Error::Unexpected {
                command: cmd::GET_FIRMWARE_VERSION,
                what: "not 4 bytes",
            })?;
        if fw[0] != 0x32 {
            return Err(Pn532Error::NotPn532 { ic: fw[0] });
        }
        self.firmware = Some(fw);
        // fAutomaticATR_RES | fAutomaticRATS
        self.command(cmd::SET_PARAMETERS, &[0x14], timeout, None, true)
            .await?;
        // MxRtyATR, MxRtyPSL, MxRtyPassiveActivation = endless
        self.command(
            cmd::RF_CONFIGURATION,
            &[0x05, 0xFF, 0x01, 0xFF],
            timeout,
            None,
            true,
        )
        .await?;
        self.command(cmd::RF_CONFIGURATION, &[0x01, 0x01], timeout, None, true)
            .await?;
        Ok(())
    }

    /// Switch the line to `baud` (SetSerialBaudRate, ACK, host switch) and
    /// check the chip answers at the new speed.
    pub async fn set_baud(&mut self, baud: u32, timeout: Duration) -> Result<(), Pn532Error> {
        let Some(br) = crate::connection::PN532_BAUD_RATES
            .iter()
            .position(|b| *b == baud)
        else {
            return Err(Pn532Error::Unexpected {
                command: cmd::SET_SERIAL_BAUD_RATE,
                what: "not a PN532 rate",
            });
        };
        if baud == self.baud {
            return Ok(());
        }
        self.command(cmd::SET_SERIAL_BAUD_RATE, &[br as u8], timeout, None, true)
            .await?;
        // The chip switches once it sees our ACK.
        self.send(Outgoing::Ack).await?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.line.get_mut().set_baud(baud)?;
        self.baud = baud;
        self.command(cmd::GET_FIRMWARE_VERSION, &[], timeout, None, true)
            .await?;
        Ok(())
    }

    /// InListPassiveTarget, one type A target at 106 kbps, waiting until
    /// `timeout` for one to come; a cancel ends the wait at once.
    pub async fn list_passive_target(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Option<ListedTarget>, Pn532Error> {
        let d = self
            .command(
                cmd::IN_LIST_PASSIVE_TARGET,
                &[0x01, 0x00],
                timeout,
                Some(cancel),
                true,
            )
            .await?;
        ListedTarget::parse(&d).map_err(|what| Pn532Error::Unexpected {
            command: cmd::IN_LIST_PASSIVE_TARGET,
            what,
        })
    }

    /// One APDU to target 1 through InDataExchange: sent in pieces with the
    /// MI bit when longer than the chip's buffer, the response collected
    /// over MI.
    pub async fn exchange(
        &mut self,
        apdu: &[u8],
        timeout: Duration,
    ) -> Result<Exchange, Pn532Error> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let mut pieces = apdu.chunks(MAX_EXCHANGE_DATA).peekable();
        let mut answer = Vec::new();
        if apdu.is_empty() {
            answer = self
                .command(cmd::IN_DATA_EXCHANGE, &[0x01], left(), None, false)
                .await?;
        }
        while let Some(piece) = pieces.next() {
            let last = pieces.peek().is_none();
            let mut p = Vec::with_capacity(piece.len() + 1);
            p.push(if last { 0x01 } else { 0x01 | status::MI });
            p.extend_from_slice(piece);
            answer = self
                .command(cmd::IN_DATA_EXCHANGE, &p, left(), None, false)
                .await?;
            let st = answer.first().copied().unwrap_or(0xFF);
            if !last && st & 0x3F != status::OK {
                return Ok(Exchange::Failed(st & 0x3F));
            }
        }
        let mut response = Vec::new();
        for _ in 0..=(65_538 / MAX_EXCHANGE_DATA + 1) {
            let Some((&st, data)) = answer.split_first() else {
                return Err(Pn532Error::Unexpected {
                    command: cmd::IN_DATA_EXCHANGE,
                    what: "no status byte",
                });
            };
            if st & 0x3F != status::OK {
                return Ok(Exchange::Failed(st & 0x3F));
            }
            response.extend_from_slice(data);
            if st & status::MI == 0 {
                return Ok(Exchange::Data(response));
            }
            answer = self
                .command(cmd::IN_DATA_EXCHANGE, &[0x01], left(), None, false)
                .await?;
        }
        Err(Pn532Error::Unexpected {
            command: cmd::IN_DATA_EXCHANGE,
            what: "endless MI chain",
        })
    }

    /// Whether the activated ISO-DEP target still answers (Diagnose 06,
    /// the PN532's card presence check).
    pub async fn target_present(&mut self, timeout: Duration) -> Result<bool, Pn532Error> {
        let d = self
            .command(cmd::DIAGNOSE, &[0x06], timeout, None, true)
            .await?;
        Ok(d.first() == Some(&status::OK))
    }

    /// InRelease of every target.
    pub async fn release(&mut self, timeout: Duration) -> Result<(), Pn532Error> {
        self.command(cmd::IN_RELEASE, &[0x00], timeout, None, true)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::task::{Context, Poll, Waker};
    use tapstack_pn532::frame::{ACK, NACK};
    use tokio::io::ReadBuf;

    /// A scripted chip: for each frame the host writes, the next canned
    /// answer bytes become readable (7 at most per read); with nothing to
    /// read, a read waits (until the host's deadline ends it).
    #[derive(Default)]
    struct Script {
        answers: VecDeque<Vec<u8>>,
        readable: VecDeque<u8>,
        written: Vec<Vec<u8>>,
        reader: Option<Waker>,
    }

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.readable.is_empty() {
                self.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = buf.remaining().min(self.readable.len()).min(7);
            for _ in 0..n {
                let b = self.readable.pop_front().unwrap_or(0);
                buf.put_slice(&[b]);
            }
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Script {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written.push(bytes.to_vec());
            // Every frame but our ACK and the wake-up releases the next answer.
            if bytes != ACK && bytes != WAKE_UP {
                if let Some(a) = self.answers.pop_front() {
                    self.readable.extend(a);
                    if let Some(w) = self.reader.take() {
                        w.wake();
                    }
                }
            }
            Poll::Ready(Ok(bytes.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Port for Script {
        fn discard_input(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn set_baud(&mut self, _baud: u32) -> io::Result<()> {
            Ok(())
        }
    }

    fn written(h: &Pn532<Script>) -> &[Vec<u8>] {
        &h.line.get_ref().written
    }

    fn resp(data: &[u8]) -> Vec<u8> {
        tapstack_pn532::frame::encode(TFI_CHIP, data)
    }

    fn ack_then(data: &[u8]) -> Vec<u8> {
        let mut a = ACK.to_vec();
        a.extend(resp(data));
        a
    }

    #[tokio::test(start_paused = true)]
    async fn resends_on_error_frame_nacks_a_garbled_response_and_skips_stale_ones() {
        let mut s = Script::default();
        // 1st send: error frame; 2nd: stale response, ACK, garbled response;
        // after NACK: the good response.
        s.answers
            .push_back(vec![0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00]);
        let mut second = resp(&[0x41, 0x00, 0x90, 0x00]);
        second.extend_from_slice(&ACK);
        let mut garbled = resp(&[0x03, 0x32, 0x01, 0x06, 0x07]);
        garbled[7] ^= 0xFF;
        second.extend(garbled);
        s.answers.push_back(second);
        s.answers.push_back(resp(&[0x03, 0x32, 0x01, 0x06, 0x07]));
        let mut h = Pn532::new(s, 115_200);
        let fw = h
            .command(
                cmd::GET_FIRMWARE_VERSION,
                &[],
                Duration::from_secs(1),
                None,
                true,
            )
            .await
            .unwrap();
        assert_eq!(fw, [0x32, 0x01, 0x06, 0x07]);
        assert_eq!(written(&h).last().map(Vec::as_slice), Some(&NACK[..]));
    }

    #[tokio::test(start_paused = true)]
    async fn chains_long_apdus_and_collects_mi_responses() {
        let mut s = Script::default();
        s.answers.push_back(ack_then(&[0x41, 0x00]));
        let mut first = vec![0x41, status::MI];
        first.extend_from_slice(&[0xAB; 262]);
        s.answers.push_back(ack_then(&first));
        s.answers
            .push_back(ack_then(&[0x41, 0x00, 0xCD, 0x90, 0x00]));
        let mut h = Pn532::new(s, 115_200);
        let r = h
            .exchange(&[0x11; 300], Duration::from_secs(1))
            .await
            .unwrap();
        let Exchange::Data(d) = r else {
            panic!("{r:?}")
        };
        assert_eq!(d.len(), 265);
        assert_eq!(&d[262..], &[0xCD, 0x90, 0x00]);
        let w = written(&h);
        assert_eq!(w[0][9..11], [cmd::IN_DATA_EXCHANGE, 0x41]);
        assert_eq!(w[1][6..8], [cmd::IN_DATA_EXCHANGE, 0x01]);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_a_timeout_with_an_abort() {
        let mut h = Pn532::new(Script::default(), 115_200);
        h.line.get_mut().answers.push_back(ACK.to_vec());
        let e = h
            .exchange(&[0, 0xA4, 4, 0], Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, Pn532Error::Timeout), "{e}");
        assert_eq!(written(&h).last().map(Vec::as_slice), Some(&ACK[..]));
        // No ACK at all: three sends, ACK_TIMEOUT apart, then NoAck.
        let e = h
            .command(
                cmd::GET_FIRMWARE_VERSION,
                &[],
                Duration::from_secs(1),
                None,
                true,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, Pn532Error::NoAck { sends: 3, .. }), "{e}");
    }

    /// A cancel from another thread ends the wait for a target at once (not
    /// at the deadline, not at a polling slice), and the chip is told to
    /// abort. Real time: only a bound against hanging is asserted.
    #[tokio::test]
    async fn a_cancel_from_another_thread_ends_the_wait_for_a_target() {
        let mut s = Script::default();
        s.answers.push_back(ACK.to_vec()); // ACKed, then no target comes
        let mut h = Pn532::new(s, 115_200);
        let cancel = Cancel::new();
        let c2 = cancel.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let at = std::time::Instant::now();
            c2.cancel();
            at
        });
        let r = h
            .list_passive_target(Duration::from_secs(30), &cancel)
            .await;
        let ended = std::time::Instant::now();
        let cancelled_at = canceller.join().unwrap();
        assert!(matches!(r, Err(Pn532Error::Cancelled)), "{r:?}");
        assert!(
            ended.saturating_duration_since(cancelled_at) < Duration::from_secs(1),
            "ended {:?} after the cancel",
            ended.saturating_duration_since(cancelled_at)
        );
        assert_eq!(written(&h).last().map(Vec::as_slice), Some(&ACK[..]));
    }

    #[test]
    fn parses_listed_targets() {
        let d = [
            1, 1, 0x00, 0x04, 0x20, 4, 8, 1, 2, 3, 5, 0x78, 0x80, 0x70, 0x02,
        ];
        let t = ListedTarget::parse(&d).unwrap().unwrap();
        assert_eq!(t.uid, [8, 1, 2, 3]);
        assert_eq!(t.ats.as_deref(), Some(&[5, 0x78, 0x80, 0x70, 0x02][..]));
        assert!(t.is_iso_dep());
        assert_eq!(ListedTarget::parse(&[0]).unwrap(), None);
        assert!(ListedTarget::parse(&[1, 1, 0, 4]).is_err());
        assert!(ListedTarget::parse(&[1, 1, 0, 4, 0x20, 11]).is_err());
        assert!(ListedTarget::parse(&[1, 1, 0, 4, 0x20, 4, 8, 1, 2, 3, 9, 1]).is_err());
    }
}
