//! ISO/IEC 7816-4 command and response APDUs.
//!
//! Two layers, as in iso7816/piv-authenticator: [`CommandView`] borrows the
//! received bytes and only splits them into header, body and `Le`;
//! [`Command`] owns its body and encodes itself in the short form when it fits
//! and in the extended form otherwise.
//!
//! Long exchanges use the two ISO mechanisms on both sides, in this module so
//! both ends share one implementation:
//! * command chaining (CLA bit `0x10`) — [`TerminalLink`] splits, [`CardLink`]
//!   reassembles;
//! * `61xx` + GET RESPONSE — [`CardLink`] splits, [`TerminalLink`] collects.

use std::collections::VecDeque;

use crate::codec::DecodeError;

/// CLA bit announcing that more command data follows in the next APDU.
pub const CLA_CHAINING: u8 = 0x10;
/// GET RESPONSE instruction.
pub const INS_GET_RESPONSE: u8 = 0xC0;
/// Bound of the data one chained command or one collected response may reach.
pub const MAX_ASSEMBLED: usize = 8192;

/// A status word, typed where tapstack gives it a meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatusWord {
    /// `9000`
    Ok,
    /// `61xx`: `xx` more bytes (00 = 256 or more) wait for GET RESPONSE.
    MoreData(u8),
    /// `6Cxx`: wrong Le, resend with Le = `xx`.
    WrongLe(u8),
    /// `6700`
    WrongLength,
    /// `6883`: the last command of a chain was expected (chain interrupted).
    ChainingError,
    /// `6982`: MAC or signature check failed.
    SecurityNotSatisfied,
    /// `6985`: command out of order in the handshake.
    ConditionsNotSatisfied,
    /// `6A80`: malformed or invalid data field.
    WrongData,
    /// `6A82`: application (AID) not found.
    FileNotFound,
    /// `6A86`: wrong P1/P2.
    WrongP1P2,
    /// `6D00`
    InsNotSupported,
    /// `6E00`
    ClaNotSupported,
    /// `6F00`: internal error.
    Unknown,
    /// `9101`: the user must confirm on the phone, then tap again.
    ConfirmOnPhone,
    /// `9102`: the wallet does not hold the terminal certificate named by hash.
    CertificateNeeded,
    /// `9103`: the user (or the wallet's policy) declined.
    Declined,
    /// `9104`: the terminal certificate or its signature was not accepted.
    TerminalNotTrusted,
    /// `9105`: scenario or protocol version not supported by this wallet.
    ScenarioUnsupported,
    /// `9106`: no pickup credential for this site.
    NoCredential,
    /// `9107`: terminal time too far from the phone's clock.
    TimeSkew,
    /// Any other value.
    Other(u16),
}

impl StatusWord {
    pub fn from_u16(sw: u16) -> Self {
        let [sw1, sw2] = sw.to_be_bytes();
        match (sw1, sw2) {
            (0x90, 0x00) => Self::Ok,
            (0x61, n) => Self::MoreData(n),
            (0x6C, n) => Self::WrongLe(n),
            (0x67, 0x00) => Self::WrongLength,
            (0x68, 0x83) => Self::ChainingError,
            (0x69, 0x82) => Self::SecurityNotSatisfied,
            (0x69, 0x85) => Self::ConditionsNotSatisfied,
            (0x6A, 0x80) => Self::WrongData,
            (0x6A, 0x82) => Self::FileNotFound,
            (0x6A, 0x86) => Self::WrongP1P2,
            (0x6D, 0x00) => Self::InsNotSupported,
            (0x6E, 0x00) => Self::ClaNotSupported,
            (0x6F, 0x00) => Self::Unknown,
            (0x91, 0x01) => Self::ConfirmOnPhone,
            (0x91, 0x02) => Self::CertificateNeeded,
            (0x91, 0x03) => Self::Declined,
            (0x91, 0x04) => Self::TerminalNotTrusted,
            (0x91, 0x05) => Self::ScenarioUnsupported,
            (0x91, 0x06) => Self::NoCredential,
            (0x91, 0x07) => Self::TimeSkew,
            _ => Self::Other(sw),
        }
    }

    pub fn to_u16(self) -> u16 {
        match self {
            Self::Ok => 0x9000,
            Self::MoreData(n) => 0x6100 | u16::from(n),
            Self::WrongLe(n) => 0x6C00 | u16::from(n),
            Self::WrongLength => 0x6700,
            Self::ChainingError => 0x6883,
            Self::SecurityNotSatisfied => 0x6982,
            Self::ConditionsNotSatisfied => 0x6985,
            Self::WrongData => 0x6A80,
            Self::FileNotFound => 0x6A82,
            Self::WrongP1P2 => 0x6A86,
            Self::InsNotSupported => 0x6D00,
            Self::ClaNotSupported => 0x6E00,
            Self::Unknown => 0x6F00,
            Self::ConfirmOnPhone => 0x9101,
            Self::CertificateNeeded => 0x9102,
            Self::Declined => 0x9103,
            Self::TerminalNotTrusted => 0x9104,
            Self::ScenarioUnsupported => 0x9105,
            Self::NoCredential => 0x9106,
            Self::TimeSkew => 0x9107,
            Self::Other(sw) => sw,
        }
    }

    pub fn is_ok(self) -> bool {
        self == Self::Ok
    }

    /// What the status word means, in plain words for the person at the
    /// counter (the hex stays in the message beside it for support).
    pub fn meaning(self) -> &'static str {
        match self {
            Self::Ok => "done",
            Self::MoreData(_) => "more data waits",
            Self::WrongLe(_) => "wrong expected length",
            Self::WrongLength => "the phone refused the message length",
            Self::ChainingError => "the message was cut off on the way",
            Self::SecurityNotSatisfied => "the phone could not verify the terminal's message",
            Self::ConditionsNotSatisfied => "the phone got the steps out of order",
            Self::WrongData => "the phone could not read the terminal's message",
            Self::FileNotFound => "no tapstack wallet on this phone",
            Self::WrongP1P2 | Self::InsNotSupported | Self::ClaNotSupported => {
                "the phone does not know this command"
            }
            Self::Unknown => "the phone reported an internal error",
            Self::ConfirmOnPhone => "confirm on the phone, then tap again",
            Self::CertificateNeeded => "the phone needs the terminal's certificate",
            Self::Declined => "declined on the phone",
            Self::TerminalNotTrusted => "this phone does not trust this terminal",
            Self::ScenarioUnsupported => "this phone's wallet does not support this kind of tap",
            Self::NoCredential => "the phone holds nothing to collect here",
            Self::TimeSkew => "the terminal's clock is too far from the phone's",
            Self::Other(_) => "an unknown answer from the phone",
        }
    }
}

impl core::fmt::Display for StatusWord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:04X}", self.to_u16())
    }
}

/// A received command, borrowed: header, body and expected length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandView<'a> {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    pub data: &'a [u8],
    /// Expected response length; `Some(256)` for short `Le = 00`,
    /// `Some(65536)` for extended `Le = 0000`.
    pub le: Option<usize>,
    /// Whether the command used the extended-length form.
    pub extended: bool,
}

impl<'a> CommandView<'a> {
    /// Split `bytes` into a command (ISO 7816-3 cases 1–4, short and extended).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let (header, body) = match bytes.split_first_chunk::<4>() {
            Some(x) => x,
            None => {
                return Err(DecodeError::Truncated {
                    needed: 4 - bytes.len(),
                })
            }
        };
        let [cla, ins, p1, p2] = *header;
        let mk = |data, le, extended| CommandView {
            cla,
            ins,
            p1,
            p2,
            data,
            le,
            extended,
        };
        let short_le = |b: u8| if b == 0 { 256 } else { usize::from(b) };
        let ext_le = |hi: u8, lo: u8| {
            let v = usize::from(u16::from_be_bytes([hi, lo]));
            if v == 0 {
                65536
            } else {
                v
            }
        };
        match body {
            [] => Ok(mk(&[], None, false)),
            [le] => Ok(mk(&[], Some(short_le(*le)), false)),
            [0, rest @ ..] if rest.len() >= 2 => {
                let (lc_bytes, after) = rest.split_at(2);
                let lc = usize::from(u16::from_be_bytes([lc_bytes[0], lc_bytes[1]]));
                if after.is_empty() {
                    // case 2E: 00 Le1 Le2
                    return Ok(mk(&[], Some(ext_le(lc_bytes[0], lc_bytes[1])), true));
                }
                if lc == 0 {
                    return Err(DecodeError::InvalidValue {
                        field: "extended Lc",
                    });
                }
                match after.len().checked_sub(lc) {
                    Some(0) => Ok(mk(after, None, true)),
                    Some(2) => {
                        let (data, le) = after.split_at(lc);
                        Ok(mk(data, Some(ext_le(le[0], le[1])), true))
                    }
                    Some(n) => Err(DecodeError::TrailingBytes { count: n }),
                    None => Err(DecodeError::Truncated {
                        needed: lc - after.len(),
                    }),
                }
            }
            [lc, rest @ ..] => {
                let lc = usize::from(*lc);
                if lc == 0 {
                    return Err(DecodeError::InvalidValue { field: "short Lc" });
                }
                match rest.len().checked_sub(lc) {
                    Some(0) => Ok(mk(rest, None, false)),
                    Some(1) => {
                        let (data, le) = rest.split_at(lc);
                        Ok(mk(data, Some(short_le(le[0])), false))
                    }
                    Some(n) => Err(DecodeError::TrailingBytes { count: n - 1 }),
                    None => Err(DecodeError::Truncated {
                        needed: lc - rest.len(),
                    }),
                }
            }
        }
    }

    /// Whether CLA announces that another chained command follows.
    pub fn is_chained(&self) -> bool {
        self.cla & CLA_CHAINING != 0
    }

    pub fn to_owned(&self) -> Command {
        Command {
            cla: self.cla,
            ins: self.ins,
            p1: self.p1,
            p2: self.p2,
            data: self.data.to_vec(),
            le: self.le,
        }
    }
}

/// An owned command; encodes in the short form when it fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub cla: u8,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    pub data: Vec<u8>,
    pub le: Option<usize>,
}

impl Command {
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8, data: Vec<u8>, le: Option<usize>) -> Self {
        Command {
            cla,
            ins,
            p1,
            p2,
            data,
            le,
        }
    }

    /// Whether this command needs the extended-length form.
    pub fn needs_extended(&self) -> bool {
        self.data.len() > 255 || self.le.is_some_and(|le| le > 256)
    }

    /// Encode; data above 65,535 bytes is not representable and is truncated
    /// by no one: callers chain long bodies first (see [`chain`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        let n = self.data.len();
        if !self.needs_extended() {
            if n > 0 {
                out.push(n as u8);
                out.extend_from_slice(&self.data);
            }
            if let Some(le) = self.le {
                out.push(if le >= 256 { 0 } else { le as u8 });
            }
            return;
        }
        out.push(0);
        if n > 0 {
            out.extend_from_slice(&(n.min(0xFFFF) as u16).to_be_bytes());
            out.extend_from_slice(&self.data);
        }
        if let Some(le) = self.le {
            let v = if le >= 65536 { 0 } else { le as u16 };
            out.extend_from_slice(&v.to_be_bytes());
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 9);
        self.encode(&mut out);
        out
    }
}

/// A response: data and status word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub data: Vec<u8>,
    pub sw: StatusWord,
}

impl Response {
    pub fn ok(data: Vec<u8>) -> Self {
        Response {
            data,
            sw: StatusWord::Ok,
        }
    }

    pub fn status(sw: StatusWord) -> Self {
        Response {
            data: Vec::new(),
            sw,
        }
    }

    /// Split received bytes into data and status word.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some((data, sw)) = bytes.split_last_chunk::<2>() else {
            return Err(DecodeError::Truncated {
                needed: 2 - bytes.len(),
            });
        };
        Ok(Response {
            data: data.to_vec(),
            sw: StatusWord::from_u16(u16::from_be_bytes(*sw)),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 2);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.sw.to_u16().to_be_bytes());
        out
    }
}

/// Split `cmd` into commands of at most `max_data` bytes of data, all but the
/// last with the chaining bit set.
pub fn chain(cmd: &Command, max_data: usize) -> Vec<Command> {
    let max_data = max_data.max(1);
    if cmd.data.len() <= max_data {
        return vec![cmd.clone()];
    }
    let chunks: Vec<&[u8]> = cmd.data.chunks(max_data).collect();
    let last = chunks.len() - 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, c)| Command {
            cla: if i == last {
                cmd.cla
            } else {
                cmd.cla | CLA_CHAINING
            },
            ins: cmd.ins,
            p1: cmd.p1,
            p2: cmd.p2,
            data: c.to_vec(),
            le: if i == last { cmd.le } else { None },
        })
        .collect()
}

/// What a reader transport can carry, as the terminal link sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkLimits {
    /// Whether both ends accept extended-length APDUs.
    pub extended: bool,
    /// Largest command data field sent in one APDU.
    pub max_command_data: usize,
}

impl LinkLimits {
    pub const SHORT: LinkLimits = LinkLimits {
        extended: false,
        max_command_data: 255,
    };
    pub const EXTENDED: LinkLimits = LinkLimits {
        extended: true,
        max_command_data: 4096,
    };
}

/// Error in the APDU transport layer (not a status word from the application).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("malformed response: {0}")]
    Malformed(DecodeError),
    #[error("response exceeds {max} bytes")]
    TooLong { max: usize },
    #[error("no command is in flight")]
    Idle,
}

/// Most wire APDUs one logical exchange may take (chained pieces plus GET
/// RESPONSEs): a hostile card answering `61 00` forever ends here.
pub const MAX_EXCHANGE_APDUS: usize = 256;

/// Why [`TerminalLink::exchange`] did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError<E> {
    /// The transport (reader, socket, loopback) failed.
    Transport(E),
    /// The card's answers did not make a response.
    Link(LinkError),
}

/// Terminal side: turns logical commands into wire APDUs (chaining) and wire
/// responses into logical responses (GET RESPONSE).
#[derive(Debug)]
pub struct TerminalLink {
    limits: LinkLimits,
    queue: VecDeque<Command>,
    last: Option<Command>,
    collected: Vec<u8>,
    in_flight: bool,
}

impl TerminalLink {
    pub fn new(limits: LinkLimits) -> Self {
        TerminalLink {
            limits,
            queue: VecDeque::new(),
            last: None,
            collected: Vec::new(),
            in_flight: false,
        }
    }

    pub fn set_limits(&mut self, limits: LinkLimits) {
        self.limits = limits;
    }

    /// Start sending a logical command.
    pub fn send(&mut self, mut cmd: Command) {
        if !self.limits.extended {
            cmd.le = cmd.le.map(|le| le.min(256));
        }
        let max = if self.limits.extended {
            self.limits.max_command_data
        } else {
            255
        };
        self.queue = chain(&cmd, max.min(self.limits.max_command_data.max(1))).into();
        self.collected.clear();
        self.in_flight = true;
    }

    /// The next wire APDU to transmit, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let cmd = self.queue.pop_front()?;
        let bytes = cmd.to_bytes();
        self.last = Some(cmd);
        Some(bytes)
    }

    /// Carry `cmd` to the card over `transmit` (one wire APDU in, its
    /// response out) until the logical response is complete: chaining and
    /// GET RESPONSE included, at most [`MAX_EXCHANGE_APDUS`] wire APDUs.
    pub fn exchange<E>(
        &mut self,
        cmd: Command,
        mut transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, E>,
    ) -> Result<Response, ExchangeError<E>> {
        self.send(cmd);
        for _ in 0..MAX_EXCHANGE_APDUS {
            let Some(wire) = self.poll_transmit() else {
                break;
            };
            let reply = transmit(&wire).map_err(ExchangeError::Transport)?;
            if let Some(resp) = self.handle_response(&reply).map_err(ExchangeError::Link)? {
                return Ok(resp);
            }
        }
        self.queue.clear();
        self.in_flight = false;
        Err(ExchangeError::Link(LinkError::Idle))
    }

    /// Feed the wire response to the last transmitted APDU. Returns the
    /// logical response once complete; `None` means more APDUs are queued.
    pub fn handle_response(&mut self, bytes: &[u8]) -> Result<Option<Response>, LinkError> {
        if !self.in_flight {
            return Err(LinkError::Idle);
        }
        let resp = Response::parse(bytes).map_err(LinkError::Malformed)?;
        let chained = self
            .last
            .as_ref()
            .is_some_and(|c| c.cla & CLA_CHAINING != 0);
        if chained && !self.queue.is_empty() {
            if resp.sw.is_ok() && resp.data.is_empty() {
                return Ok(None);
            }
            // The card stopped the chain: report its answer.
            self.queue.clear();
            self.in_flight = false;
            return Ok(Some(resp));
        }
        if self.collected.len().saturating_add(resp.data.len()) > MAX_ASSEMBLED {
            self.queue.clear();
            self.in_flight = false;
            return Err(LinkError::TooLong { max: MAX_ASSEMBLED });
        }
        self.collected.extend_from_slice(&resp.data);
        match resp.sw {
            StatusWord::MoreData(n) => {
                let le = if n == 0 { 256 } else { usize::from(n) };
                let cla = self
                    .last
                    .as_ref()
                    .map_or(0, |c| c.cla & !CLA_CHAINING & 0x03);
                self.queue.push_back(Command::new(
                    cla,
                    INS_GET_RESPONSE,
                    0,
                    0,
                    Vec::new(),
                    Some(le),
                ));
                Ok(None)
            }
            StatusWord::WrongLe(n) if self.collected.is_empty() => {
                if let Some(mut c) = self.last.clone() {
                    c.le = Some(if n == 0 { 256 } else { usize::from(n) });
                    self.queue.push_back(c);
                }
                Ok(None)
            }
            sw => {
                self.in_flight = false;
                Ok(Some(Response {
                    data: std::mem::take(&mut self.collected),
                    sw,
                }))
            }
        }
    }
}

/// What the card link made of one wire APDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardInput {
    /// Answer these bytes on the wire directly (chaining ack, GET RESPONSE
    /// piece, transport error).
    Reply(Vec<u8>),
    /// A complete logical command for the application.
    Command(Command),
}

/// Card side: reassembles chained commands and serves long responses in
/// `61xx` pieces.
#[derive(Debug, Default)]
pub struct CardLink {
    chain: Option<Command>,
    pending: Vec<u8>,
    pending_pos: usize,
    /// Whether this card accepts extended-length APDUs.
    pub extended: bool,
}

impl CardLink {
    pub fn new(extended: bool) -> Self {
        CardLink {
            extended,
            ..Default::default()
        }
    }

    /// Forget any partial chain or unread response (new card session).
    pub fn reset(&mut self) {
        self.chain = None;
        self.pending.clear();
        self.pending_pos = 0;
    }

    pub fn handle_command(&mut self, bytes: &[u8]) -> CardInput {
        let reply = |sw: StatusWord| CardInput::Reply(sw.to_u16().to_be_bytes().to_vec());
        let view = match CommandView::parse(bytes) {
            Ok(v) => v,
            Err(_) => {
                self.reset();
                return reply(StatusWord::WrongLength);
            }
        };
        if view.extended && !self.extended {
            self.reset();
            return reply(StatusWord::WrongLength);
        }
        if view.ins == INS_GET_RESPONSE && view.cla & 0x80 == 0 {
            return self.get_response(view.le.unwrap_or(256));
        }
        // Any other command discards an unread response.
        self.pending.clear();
        self.pending_pos = 0;
        let chained = view.cla & CLA_CHAINING != 0;
        let base_cla = view.cla & !CLA_CHAINING;
        if let Some(partial) = self.chain.as_mut() {
            if (partial.cla, partial.ins, partial.p1, partial.p2)
                != (base_cla, view.ins, view.p1, view.p2)
            {
                self.chain = None;
                return reply(StatusWord::ChainingError);
            }
            if partial.data.len().saturating_add(view.data.len()) > MAX_ASSEMBLED {
                self.chain = None;
                return reply(StatusWord::WrongLength);
            }
            partial.data.extend_from_slice(view.data);
            if chained {
                return reply(StatusWord::Ok);
            }
            let mut cmd = self.chain.take().unwrap_or_else(|| view.to_owned());
            cmd.le = view.le;
            return CardInput::Command(cmd);
        }
        if chained {
            let mut cmd = view.to_owned();
            cmd.cla = base_cla;
            cmd.le = None;
            self.chain = Some(cmd);
            return reply(StatusWord::Ok);
        }
        CardInput::Command(view.to_owned())
    }

    /// Encode the application's response, keeping what does not fit in `le`
    /// for GET RESPONSE.
    pub fn respond(&mut self, resp: Response, le: Option<usize>) -> Vec<u8> {
        let limit = le.unwrap_or(256).max(1);
        if resp.data.len() <= limit || !resp.sw.is_ok() {
            return resp.to_bytes();
        }
        self.pending = resp.data;
        self.pending_pos = 0;
        self.serve(limit)
    }

    fn get_response(&mut self, le: usize) -> CardInput {
        if self.pending_pos >= self.pending.len() {
            return CardInput::Reply(
                StatusWord::ConditionsNotSatisfied
                    .to_u16()
                    .to_be_bytes()
                    .to_vec(),
            );
        }
        CardInput::Reply(self.serve(le))
    }

    fn serve(&mut self, le: usize) -> Vec<u8> {
        let start = self.pending_pos.min(self.pending.len());
        let end = start.saturating_add(le.min(256)).min(self.pending.len());
        let mut out = self.pending.get(start..end).unwrap_or_default().to_vec();
        self.pending_pos = end;
        let left = self.pending.len() - end;
        let sw = if left == 0 {
            self.pending.clear();
            self.pending_pos = 0;
            StatusWord::Ok
        } else {
            StatusWord::MoreData(if left >= 256 { 0 } else { left as u8 })
        };
        out.extend_from_slice(&sw.to_u16().to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn every_tapstack_status_word_has_its_own_plain_words() {
        let words: Vec<&str> = (0x9101..=0x9107)
            .map(|sw| StatusWord::from_u16(sw).meaning())
            .collect();
        let mut unique = words.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), words.len(), "{words:?}");
        assert_eq!(
            StatusWord::from_u16(0x9104).meaning(),
            "this phone does not trust this terminal"
        );
        let e = crate::error::Error::WalletRefused {
            sw: StatusWord::TerminalNotTrusted,
        };
        assert_eq!(
            e.to_string(),
            "wallet refused: this phone does not trust this terminal (9104)"
        );
    }
    use super::*;

    #[test]
    fn parse_all_cases() {
        let c = CommandView::parse(&[0, 0xA4, 4, 0]).unwrap();
        assert_eq!((c.data, c.le), (&[][..], None));
        let c = CommandView::parse(&[0, 0xB0, 0, 0, 0]).unwrap();
        assert_eq!(c.le, Some(256));
        let c = CommandView::parse(&[0, 0xA4, 4, 0, 2, 0xAA, 0xBB]).unwrap();
        assert_eq!((c.data, c.le), (&[0xAA, 0xBB][..], None));
        let c = CommandView::parse(&[0, 0xA4, 4, 0, 2, 0xAA, 0xBB, 0x10]).unwrap();
        assert_eq!((c.data, c.le), (&[0xAA, 0xBB][..], Some(16)));
        let c = CommandView::parse(&[0, 0xB0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!((c.le, c.extended), (Some(65536), true));
        let c = CommandView::parse(&[0, 0xD6, 0, 0, 0, 0, 1, 0x55]).unwrap();
        assert_eq!((c.data, c.le, c.extended), (&[0x55][..], None, true));
        let c = CommandView::parse(&[0, 0xD6, 0, 0, 0, 0, 1, 0x55, 0x01, 0x00]).unwrap();
        assert_eq!(c.le, Some(256));
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(CommandView::parse(&[0, 0xA4, 4]).is_err());
        assert!(CommandView::parse(&[0, 0xA4, 4, 0, 5, 1]).is_err());
        assert!(CommandView::parse(&[0, 0xA4, 4, 0, 1, 1, 2, 3]).is_err());
        assert!(CommandView::parse(&[0, 0xA4, 4, 0, 0, 0, 3, 1]).is_err());
        assert!(CommandView::parse(&[0, 0xA4, 4, 0, 0, 0, 0, 1]).is_err());
        assert!(Response::parse(&[0x90]).is_err());
    }

    #[test]
    fn encode_roundtrip_short_and_extended() {
        for (n, le) in [
            (0, None),
            (0, Some(256)),
            (3, None),
            (3, Some(5)),
            (300, None),
            (300, Some(256)),
            (10, Some(1000)),
        ] {
            let cmd = Command::new(0x80, 0x50, 1, 2, vec![7; n], le);
            let bytes = cmd.to_bytes();
            let view = CommandView::parse(&bytes).unwrap();
            assert_eq!(view.to_owned(), cmd);
            assert_eq!(view.extended, cmd.needs_extended());
        }
    }

    #[test]
    fn status_words_roundtrip() {
        for v in [
            0x9000u16, 0x6110, 0x6C05, 0x6700, 0x6982, 0x9101, 0x9107, 0x1234, 0x6A82,
        ] {
            assert_eq!(StatusWord::from_u16(v).to_u16(), v);
        }
    }

    fn run(
        link: &mut TerminalLink,
        card: &mut CardLink,
        cmd: Command,
        data: Vec<u8>,
    ) -> (Response, Command, usize) {
        link.send(cmd);
        let mut exchanges = 0;
        let mut app_cmd = None;
        loop {
            let wire = link.poll_transmit().expect("something to send");
            exchanges += 1;
            let reply = match card.handle_command(&wire) {
                CardInput::Reply(r) => r,
                CardInput::Command(c) => {
                    let le = c.le;
                    app_cmd = Some(c);
                    card.respond(Response::ok(data.clone()), le)
                }
            };
            if let Some(resp) = link.handle_response(&reply).unwrap() {
                return (resp, app_cmd.expect("app saw command"), exchanges);
            }
        }
    }

    #[test]
    fn chaining_and_get_response_short() {
        let mut link = TerminalLink::new(LinkLimits::SHORT);
        let mut card = CardLink::new(false);
        let body: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        let reply: Vec<u8> = (0..700u32).map(|i| (i * 7) as u8).collect();
        let cmd = Command::new(0x80, 0x50, 0, 0, body.clone(), Some(256));
        let (resp, seen, exchanges) = run(&mut link, &mut card, cmd, reply.clone());
        assert_eq!(seen.data, body);
        assert_eq!(seen.cla, 0x80);
        assert_eq!(resp, Response::ok(reply));
        // 3 chained commands + 2 GET RESPONSE
        assert_eq!(exchanges, 5);
    }

    #[test]
    fn extended_needs_one_exchange() {
        let mut link = TerminalLink::new(LinkLimits::EXTENDED);
        let mut card = CardLink::new(true);
        let cmd = Command::new(0x80, 0x50, 0, 0, vec![1; 600], Some(65536));
        let (resp, _, exchanges) = run(&mut link, &mut card, cmd, vec![2; 700]);
        assert_eq!(resp.data.len(), 700);
        assert_eq!(exchanges, 1);
    }

    #[test]
    fn card_rejects_interleaved_chain_and_extended_when_unsupported() {
        let mut card = CardLink::new(false);
        let first = Command::new(0x90, 0x50, 0, 0, vec![1; 10], None).to_bytes();
        assert_eq!(
            card.handle_command(&first),
            CardInput::Reply(vec![0x90, 0x00])
        );
        let other = Command::new(0x80, 0x52, 0, 0, vec![1; 10], None).to_bytes();
        assert_eq!(
            card.handle_command(&other),
            CardInput::Reply(vec![0x68, 0x83])
        );
        let ext = Command::new(0x80, 0x50, 0, 0, vec![1; 300], None).to_bytes();
        assert_eq!(
            card.handle_command(&ext),
            CardInput::Reply(vec![0x67, 0x00])
        );
        let gr = [0x00, 0xC0, 0, 0, 0];
        assert_eq!(card.handle_command(&gr), CardInput::Reply(vec![0x69, 0x85]));
    }
}
