//! The PN532 as its host controller sees it: frames in, ACK and response
//! frames out, commands executed against a [`Field`] (the phones near the
//! antenna). Pure: no IO; the clock is passed in. Driven by the PTY loop in
//! [`super::run`], by the unit tests below and by the `pn532_frames` fuzz
//! target.
//!
//! Every correct information frame is acknowledged (`ACK`) before the command
//! runs, as the chip does; the response follows. A frame with a bad length or
//! data checksum, an empty frame or one with the wrong TFI gets the error
//! frame and nothing else; a correct frame with an unknown command or bad
//! parameters gets an ACK and then the error frame (the chip's "syntax
//! error"). A NACK from the host re-sends the last response; an ACK from the
//! host aborts a command still running (InListPassiveTarget with endless
//! retries, InAutoPoll).

use std::time::{Duration, Instant};

use crate::phone::{Reply, ATQA, ATS, SAK};
use tapstack_pn532::frame::{encode, Frame, FrameParser, ACK, ERROR_FRAME, TFI_CHIP, TFI_HOST};
pub use tapstack_pn532::{cmd, status, BAUD_RATES};

/// GetFirmwareVersion: IC PN532, version 1.6, ISO 14443-A, -B and 18092.
pub const FIRMWARE: [u8; 4] = [0x32, 0x01, 0x06, 0x07];
/// SetParameters bit: the chip sends RATS itself and reports the ATS.
pub const PARAM_AUTO_RATS: u8 = 0x10;
/// SetParameters flags at power-on (libnfc sets the same at init).
pub const DEFAULT_PARAMETERS: u8 = 0x14;
/// Most response data in one InDataExchange/InCommunicateThru answer (the
/// chip's buffer); longer responses continue with the MI bit.
pub const MAX_EXCHANGE: usize = tapstack_pn532::MAX_EXCHANGE_DATA;
/// Most command bytes a host may chain with the MI bit (an extended APDU).
pub const MAX_CHAINED: usize = 65_544;
/// Bytes parsed per step of [`Chip::feed`].
const CHUNK: usize = 64;

/// One phone's presence in the field, as the chip sees it. `id` tells two
/// presences of the same phone apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub uid: [u8; 4],
    pub id: u64,
}

/// The RF field of the antenna and the phones that come into it.
pub trait Field {
    /// The reader polls for a type A target: the phone in the field, or the
    /// next one arriving now if the field is free and one may come.
    fn activate(&mut self, now: Instant) -> Option<Presence>;
    /// The phone in the field, without letting one arrive.
    fn current(&self) -> Option<Presence>;
    /// Deliver a command APDU to the phone in the field.
    fn transmit(&mut self, apdu: &[u8], now: Instant) -> Reply;
    /// The reader switched its RF field off (RFConfiguration, PowerDown):
    /// a phone in the field loses it.
    fn field_off(&mut self, now: Instant);
}

/// The target the chip activated (Tg 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    presence: Presence,
    /// Not deselected (InDeselect, S(DESELECT), HLTA).
    selected: bool,
    /// ISO 14443-4 block number of the card (for R-blocks through
    /// InCommunicateThru).
    block: u8,
}

/// A command still running: it answers when a phone arrives or its polls run
/// out.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    ListPassive {
        uid: Option<Vec<u8>>,
    },
    AutoPoll {
        types: Vec<u8>,
        until: Option<Instant>,
    },
}

enum Answer {
    /// Response data after the response code.
    Data(Vec<u8>),
    /// Syntax error: the error frame.
    Syntax,
    /// Answer later (see [`Chip::poll`]).
    Later(Pending),
}

/// The chip's register map: CIU registers (`63xx`) and SFRs (`FFxx`), 64 KiB
/// flat. Written values are stored and read back; a few registers start
/// with plausible reset values, the rest with 0.
#[derive(Clone)]
pub struct Registers {
    values: Vec<u8>,
}

impl std::fmt::Debug for Registers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registers").finish_non_exhaustive()
    }
}

/// CIU_TxControl: Tx1RFEn | Tx2RFEn.
const REG_TX_CONTROL: u16 = 0x6304;
const RF_ON_BITS: u8 = 0x03;
/// SFR P3 and P7 (GPIO).
const REG_P3: u16 = 0xFFB0;
const REG_P7: u16 = 0xFFF7;

const REGISTER_DEFAULTS: [(u16, u8); 27] = [
    (0x6301, 0x3B), // Mode
    (0x6302, 0x80), // TxMode: TxCRCEn
    (0x6303, 0x80), // RxMode: RxCRCEn
    (0x6304, 0x80), // TxControl: InvTx2RFOn, field off
    (0x6306, 0x10), // TxSel
    (0x6307, 0x84), // RxSel
    (0x6308, 0x84), // RxThreshold
    (0x6309, 0x4D), // Demod
    (0x630C, 0x62), // MifNFC
    (0x6313, 0x88), // GsNOff
    (0x6314, 0x26), // ModWidth
    (0x6315, 0x87), // TxBitPhase
    (0x6316, 0x48), // RFCfg
    (0x6317, 0x88), // GsNOn
    (0x6318, 0x20), // CWGsP
    (0x6319, 0x20), // ModGsP
    (0x6331, 0x20), // Command: RcvOff
    (0x6332, 0x80), // CommIEn
    (0x6334, 0x14), // CommIrq
    (0x6337, 0x21), // Status1
    (0x633B, 0x08), // WaterLevel
    (0x633C, 0x10), // Control: Initiator
    (0x633E, 0x80), // Coll
    (0xFFB0, 0xFF), // P3
    (0xFFF7, 0xFF), // P7
    (0xFFFC, 0xFF), // P3CFGA
    (0xFFF4, 0xFF), // P7CFGA
];

impl Default for Registers {
    fn default() -> Self {
        let mut r = Registers {
            values: vec![0; 0x1_0000],
        };
        for (addr, value) in REGISTER_DEFAULTS {
            r.write(addr, value);
        }
        r
    }
}

impl Registers {
    pub fn read(&self, addr: u16) -> u8 {
        self.values.get(usize::from(addr)).copied().unwrap_or(0)
    }

    pub fn write(&mut self, addr: u16, value: u8) {
        if let Some(v) = self.values.get_mut(usize::from(addr)) {
            *v = value;
        }
    }
}

/// An emulated PN532 in initiator (reader) mode.
#[derive(Debug)]
pub struct Chip {
    parser: FrameParser,
    registers: Registers,
    parameters: u8,
    rf_on: bool,
    /// RFConfiguration MxRtyPassiveActivation: 0xFF polls until a target comes.
    passive_retries: u8,
    asleep: bool,
    target: Option<Target>,
    /// Command bytes chained by the host with the MI bit.
    chain_in: Vec<u8>,
    /// Response bytes still to be fetched with MI.
    chain_out: Vec<u8>,
    /// The last response frame, for a NACK.
    last_response: Option<Vec<u8>>,
    pending: Option<(u8, Pending)>,
    /// SetSerialBaudRate answered; the switch waits for the host's ACK.
    baud_pending: Option<u32>,
    baud_change: Option<u32>,
    last_status: u8,
    commands: u64,
}

impl Default for Chip {
    fn default() -> Self {
        Chip::new()
    }
}

impl Chip {
    /// A chip after power-on: RF field off, default parameters.
    pub fn new() -> Self {
        Chip {
            parser: FrameParser::new(),
            registers: Registers::default(),
            parameters: DEFAULT_PARAMETERS,
            rf_on: false,
            passive_retries: 0xFF,
            asleep: false,
            target: None,
            chain_in: Vec::new(),
            chain_out: Vec::new(),
            last_response: None,
            pending: None,
            baud_pending: None,
            baud_change: None,
            last_status: status::OK,
            commands: 0,
        }
    }

    /// Bytes from the host: parse them and answer every complete frame
    /// through `out` (the ACK goes out before the command runs).
    pub fn feed(
        &mut self,
        bytes: &[u8],
        now: Instant,
        field: &mut dyn Field,
        out: &mut dyn FnMut(&[u8]),
    ) {
        for chunk in bytes.chunks(CHUNK) {
            if self.asleep {
                tracing::debug!("PN532 wakes up");
                self.asleep = false;
            }
            self.parser.push(chunk);
            self.drain(now, field, out);
        }
    }

    /// Whether an incomplete frame is waiting for the rest of its bytes.
    pub fn has_partial(&self) -> bool {
        self.parser.has_partial()
    }

    /// The host stopped in the middle of a frame: drop it and answer frames
    /// found in what followed its start.
    pub fn expire_partial(
        &mut self,
        now: Instant,
        field: &mut dyn Field,
        out: &mut dyn FnMut(&[u8]),
    ) {
        if self.parser.has_partial() {
            tracing::debug!(
                bytes = self.parser.buffered(),
                "PN532: incomplete frame dropped"
            );
            self.parser.expire();
            self.drain(now, field, out);
        }
    }

    /// Let a running command finish if it can (a phone arrived, its polls
    /// ran out).
    pub fn poll(&mut self, now: Instant, field: &mut dyn Field, out: &mut dyn FnMut(&[u8])) {
        let Some((code, pending)) = self.pending.take() else {
            return;
        };
        let data = match &pending {
            Pending::ListPassive { uid } => self.list_type_a(now, field, uid.as_deref()),
            Pending::AutoPoll { types, until } => match self.auto_poll(types, now, field) {
                Some(d) => Some(d),
                None if until.is_some_and(|t| now >= t) => Some(vec![0]),
                None => None,
            },
        };
        match data {
            Some(d) => self.respond(code, &d, out),
            None => self.pending = Some((code, pending)),
        }
    }

    /// A serial speed the host confirmed (SetSerialBaudRate, then ACK): the
    /// line switches to it now.
    pub fn take_baud_rate(&mut self) -> Option<u32> {
        self.baud_change.take()
    }

    /// Whether the RF field is on.
    pub fn rf_on(&self) -> bool {
        self.rf_on
    }

    /// Whether the chip is powered down (until the host sends a byte).
    pub fn is_asleep(&self) -> bool {
        self.asleep
    }

    /// Whether a command is still running.
    pub fn is_busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Information frames answered so far.
    pub fn commands(&self) -> u64 {
        self.commands
    }

    pub fn registers(&self) -> &Registers {
        &self.registers
    }

    fn drain(&mut self, now: Instant, field: &mut dyn Field, out: &mut dyn FnMut(&[u8])) {
        while let Some(frame) = self.parser.next_frame() {
            self.on_frame(frame, now, field, out);
        }
    }

    fn on_frame(
        &mut self,
        frame: Frame,
        now: Instant,
        field: &mut dyn Field,
        out: &mut dyn FnMut(&[u8]),
    ) {
        match frame {
            Frame::Ack => {
                if let Some((code, _)) = self.pending.take() {
                    tracing::debug!(command = cmd::name(code), "PN532: host aborted the command");
                }
                if let Some(baud) = self.baud_pending.take() {
                    self.baud_change = Some(baud);
                }
            }
            Frame::Nack => {
                if let Some(r) = &self.last_response {
                    out(r);
                }
            }
            Frame::Bad(e) => {
                tracing::debug!(error = %e, "PN532: bad frame");
                out(&ERROR_FRAME);
            }
            Frame::Info { tfi, data } => {
                let Some((&code, params)) = data.split_first().filter(|_| tfi == TFI_HOST) else {
                    tracing::debug!(tfi, "PN532: frame is not a host command");
                    out(&ERROR_FRAME);
                    return;
                };
                if let Some((old, _)) = self.pending.take() {
                    tracing::debug!(
                        command = cmd::name(old),
                        "PN532: a new command aborts the running one"
                    );
                }
                if self.baud_pending.take().is_some() {
                    tracing::debug!(
                        "PN532: baud rate change not confirmed by an ACK; speed unchanged"
                    );
                }
                out(&ACK);
                self.commands = self.commands.saturating_add(1);
                tracing::debug!(command = cmd::name(code), params = %hex::encode(params), "PN532 command");
                match self.execute(code, params, now, field) {
                    Answer::Data(d) => self.respond(code, &d, out),
                    Answer::Syntax => {
                        tracing::debug!(command = cmd::name(code), "PN532: syntax error");
                        out(&ERROR_FRAME);
                        self.last_response = Some(ERROR_FRAME.to_vec());
                    }
                    Answer::Later(p) => self.pending = Some((code, p)),
                }
            }
        }
    }

    fn respond(&mut self, code: u8, data: &[u8], out: &mut dyn FnMut(&[u8])) {
        let mut body = Vec::with_capacity(data.len() + 1);
        body.push(code.wrapping_add(1));
        body.extend_from_slice(data);
        let frame = encode(TFI_CHIP, &body);
        out(&frame);
        self.last_response = Some(frame);
    }

    fn status(&mut self, s: u8) -> Answer {
        self.last_status = s;
        Answer::Data(vec![s])
    }

    fn execute(&mut self, code: u8, p: &[u8], now: Instant, field: &mut dyn Field) -> Answer {
        match code {
            cmd::DIAGNOSE => self.diagnose(p, field),
            cmd::GET_FIRMWARE_VERSION => Answer::Data(FIRMWARE.to_vec()),
            cmd::GET_GENERAL_STATUS => {
                let mut d = vec![self.last_status, 0x00];
                match self.target {
                    // Tg, BrRx 106, BrTx 106, type ISO 14443-A.
                    Some(_) => d.extend_from_slice(&[1, 1, 0x00, 0x00, 0x00]),
                    None => d.push(0),
                }
                d.push(0x00); // SAM status
                Answer::Data(d)
            }
            cmd::READ_REGISTER => {
                if p.is_empty() || p.len() % 2 != 0 {
                    return Answer::Syntax;
                }
                Answer::Data(
                    p.chunks_exact(2)
                        .map(|a| match a {
                            [hi, lo] => self.registers.read(u16::from_be_bytes([*hi, *lo])),
                            _ => 0,
                        })
                        .collect(),
                )
            }
            cmd::WRITE_REGISTER => {
                if p.is_empty() || p.len() % 3 != 0 {
                    return Answer::Syntax;
                }
                for w in p.chunks_exact(3) {
                    if let [hi, lo, v] = w {
                        self.registers.write(u16::from_be_bytes([*hi, *lo]), *v);
                    }
                }
                Answer::Data(Vec::new())
            }
            cmd::READ_GPIO => Answer::Data(vec![
                self.registers.read(REG_P3),
                self.registers.read(REG_P7),
                0x00,
            ]),
            cmd::WRITE_GPIO => {
                let [p3, p7] = p else { return Answer::Syntax };
                // Bit 7 validates the new value.
                if p3 & 0x80 != 0 {
                    self.registers.write(REG_P3, p3 & 0x3F);
                }
                if p7 & 0x80 != 0 {
                    self.registers.write(REG_P7, p7 & 0x06);
                }
                Answer::Data(Vec::new())
            }
            cmd::SET_SERIAL_BAUD_RATE => {
                let rate = match p {
                    [br] => BAUD_RATES.get(usize::from(*br)).copied(),
                    _ => None,
                };
                let Some(rate) = rate else {
                    return Answer::Syntax;
                };
                self.baud_pending = Some(rate);
                Answer::Data(Vec::new())
            }
            cmd::SET_PARAMETERS => {
                let [flags] = p else { return Answer::Syntax };
                self.parameters = *flags;
                Answer::Data(Vec::new())
            }
            cmd::SAM_CONFIGURATION => match p {
                [mode, ..] if (1..=4).contains(mode) && p.len() <= 3 => Answer::Data(Vec::new()),
                _ => Answer::Syntax,
            },
            cmd::POWER_DOWN => {
                if p.is_empty() || p.len() > 2 {
                    return Answer::Syntax;
                }
                self.set_rf(false, now, field);
                self.asleep = true;
                self.status(status::OK)
            }
            cmd::RF_CONFIGURATION => self.rf_configuration(p, now, field),
            cmd::IN_LIST_PASSIVE_TARGET => {
                let [max_tg, brty, init @ ..] = p else {
                    return Answer::Syntax;
                };
                if !(1..=2).contains(max_tg) || *brty > 8 {
                    return Answer::Syntax;
                }
                self.set_rf(true, now, field);
                self.release();
                if *brty != 0 {
                    // Only a type A phone is ever in this field.
                    return Answer::Data(vec![0]);
                }
                let uid = (!init.is_empty()).then(|| init.to_vec());
                match self.list_type_a(now, field, uid.as_deref()) {
                    Some(d) => Answer::Data(d),
                    None if self.passive_retries == 0xFF => {
                        Answer::Later(Pending::ListPassive { uid })
                    }
                    None => Answer::Data(vec![0]),
                }
            }
            cmd::IN_AUTO_POLL => {
                let [poll_nr, period, types @ ..] = p else {
                    return Answer::Syntax;
                };
                if *poll_nr == 0
                    || !(1..=15).contains(period)
                    || types.is_empty()
                    || types.len() > 15
                {
                    return Answer::Syntax;
                }
                self.set_rf(true, now, field);
                self.release();
                if let Some(d) = self.auto_poll(types, now, field) {
                    return Answer::Data(d);
                }
                let until = (*poll_nr != 0xFF).then(|| {
                    let each = Duration::from_millis(150) * u32::from(*period);
                    now + each * u32::from(*poll_nr) * types.len().min(15) as u32
                });
                Answer::Later(Pending::AutoPoll {
                    types: types.to_vec(),
                    until,
                })
            }
            cmd::IN_DATA_EXCHANGE => self.in_data_exchange(p, now, field),
            cmd::IN_COMMUNICATE_THRU => self.in_communicate_thru(p, now, field),
            cmd::IN_DESELECT | cmd::IN_RELEASE => {
                let [tg] = p else { return Answer::Syntax };
                match (*tg, self.target) {
                    (0, None) => self.status(status::OK),
                    (0 | 1, Some(_)) => {
                        if code == cmd::IN_RELEASE {
                            self.release();
                        } else if let Some(t) = self.target.as_mut() {
                            t.selected = false;
                            self.chain_in.clear();
                            self.chain_out.clear();
                        }
                        self.status(status::OK)
                    }
                    _ => self.status(status::WRONG_CONTEXT),
                }
            }
            cmd::IN_SELECT => {
                let [tg] = p else { return Answer::Syntax };
                let present = self.present(field);
                match self.target.as_mut() {
                    Some(t) if *tg == 1 && present => {
                        t.selected = true;
                        self.status(status::OK)
                    }
                    Some(_) if *tg == 1 => self.status(status::TIMEOUT),
                    _ => self.status(status::WRONG_CONTEXT),
                }
            }
            // Target mode, DEP, FeliCa, MIFARE, GPIO details, … are not emulated.
            _ => Answer::Syntax,
        }
    }

    fn diagnose(&mut self, p: &[u8], field: &mut dyn Field) -> Answer {
        let present = self.present(field);
        match p.first() {
            // Communication line test: echo.
            Some(0x00) => Answer::Data(p.to_vec()),
            // ROM, RAM and antenna self tests pass.
            Some(0x01 | 0x02 | 0x07) => Answer::Data(vec![status::OK]),
            // Polling test to a target: failures out of 128 polls.
            Some(0x04) => Answer::Data(vec![if present { 0 } else { 128 }]),
            // Attention request (card presence).
            Some(0x06) => match self.target {
                Some(_) if present => self.status(status::OK),
                Some(_) => self.status(status::TIMEOUT),
                None => self.status(status::WRONG_CONTEXT),
            },
            _ => Answer::Syntax,
        }
    }

    fn rf_configuration(&mut self, p: &[u8], now: Instant, field: &mut dyn Field) -> Answer {
        let Some((&item, data)) = p.split_first() else {
            return Answer::Syntax;
        };
        let expected = match item {
            0x01 => 1,  // RF field
            0x02 => 3,  // various timings
            0x04 => 1,  // MaxRtyCOM
            0x05 => 3,  // MxRtyATR, MxRtyPSL, MxRtyPassiveActivation
            0x0A => 11, // analog settings, 106 kbps type A
            0x0B => 8,  // analog settings, 212/424 kbps
            0x0C => 3,  // analog settings, type B
            0x0D => 9,  // analog settings, 212/424/848 kbps ISO 14443-4
            _ => return Answer::Syntax,
        };
        if data.len() != expected {
            return Answer::Syntax;
        }
        match (item, data) {
            (0x01, [on]) => self.set_rf(on & 0x01 != 0, now, field),
            (0x05, [_, _, passive]) => self.passive_retries = *passive,
            _ => {}
        }
        Answer::Data(Vec::new())
    }

    fn set_rf(&mut self, on: bool, now: Instant, field: &mut dyn Field) {
        let ctl = self.registers.read(REG_TX_CONTROL);
        self.registers.write(
            REG_TX_CONTROL,
            if on {
                ctl | RF_ON_BITS
            } else {
                ctl & !RF_ON_BITS
            },
        );
        if self.rf_on && !on {
            field.field_off(now);
            self.chain_in.clear();
            self.chain_out.clear();
        }
        self.rf_on = on;
    }

    /// Forget the activated target (the phone stays in the field).
    fn release(&mut self) {
        self.target = None;
        self.chain_in.clear();
        self.chain_out.clear();
    }

    /// Whether the activated target is still there to answer.
    fn present(&self, field: &dyn Field) -> bool {
        self.rf_on
            && self
                .target
                .is_some_and(|t| field.current() == Some(t.presence))
    }

    /// `SENS_RES SEL_RES NFCIDLength NFCID1 [ATS]` of the phone.
    fn type_a_data(&self, p: Presence, ats: bool) -> Vec<u8> {
        let mut d = Vec::with_capacity(16);
        d.push(1); // Tg
        d.extend_from_slice(&ATQA);
        d.push(SAK);
        d.push(p.uid.len() as u8);
        d.extend_from_slice(&p.uid);
        if ats {
            d.extend_from_slice(&ATS);
        }
        d
    }

    fn activate(
        &mut self,
        now: Instant,
        field: &mut dyn Field,
        uid: Option<&[u8]>,
    ) -> Option<Presence> {
        let p = field.activate(now)?;
        if uid.is_some_and(|u| u != p.uid) {
            return None;
        }
        self.target = Some(Target {
            presence: p,
            selected: true,
            block: 0,
        });
        Some(p)
    }

    /// InListPassiveTarget at 106 kbps type A: `NbTg` and the target data.
    fn list_type_a(
        &mut self,
        now: Instant,
        field: &mut dyn Field,
        uid: Option<&[u8]>,
    ) -> Option<Vec<u8>> {
        let p = self.activate(now, field, uid)?;
        let mut d = vec![1];
        d.extend(self.type_a_data(p, self.parameters & PARAM_AUTO_RATS != 0));
        Some(d)
    }

    /// InAutoPoll: the phone reported as the first type A kind asked for.
    fn auto_poll(&mut self, types: &[u8], now: Instant, field: &mut dyn Field) -> Option<Vec<u8>> {
        // Generic passive 106, MIFARE, ISO 14443-4 type A.
        let ty = *types.iter().find(|t| matches!(t, 0x00 | 0x10 | 0x20))?;
        let p = self.activate(now, field, None)?;
        let data = self.type_a_data(p, ty == 0x20);
        let mut d = vec![1, ty, data.len() as u8];
        d.extend(data);
        Some(d)
    }

    fn in_data_exchange(&mut self, p: &[u8], now: Instant, field: &mut dyn Field) -> Answer {
        let Some((&tg, data)) = p.split_first() else {
            return Answer::Syntax;
        };
        let more = tg & status::MI != 0;
        if (tg & 0x3F) != 1 || !self.target.is_some_and(|t| t.selected) {
            return self.status(status::WRONG_CONTEXT);
        }
        if !self.present(field) {
            self.chain_in.clear();
            self.chain_out.clear();
            return self.status(status::TIMEOUT);
        }
        if self.chain_in.len().saturating_add(data.len()) > MAX_CHAINED {
            self.chain_in.clear();
            return self.status(status::BUFFER_OVERFLOW);
        }
        if more {
            self.chain_out.clear();
            self.chain_in.extend_from_slice(data);
            return self.status(status::OK);
        }
        if data.is_empty() && self.chain_in.is_empty() && !self.chain_out.is_empty() {
            // The host fetches the rest of a long response.
            return self.next_chunk();
        }
        let mut apdu = std::mem::take(&mut self.chain_in);
        apdu.extend_from_slice(data);
        self.chain_out.clear();
        match field.transmit(&apdu, now) {
            Reply::Data(r) => {
                self.chain_out = r;
                self.next_chunk()
            }
            Reply::Removed => self.status(status::TIMEOUT),
        }
    }

    /// The next piece of a response, with MI when more follows.
    fn next_chunk(&mut self) -> Answer {
        let n = self.chain_out.len().min(MAX_EXCHANGE);
        let rest = self.chain_out.split_off(n);
        let piece = std::mem::replace(&mut self.chain_out, rest);
        let st = if self.chain_out.is_empty() {
            status::OK
        } else {
            status::MI
        };
        self.last_status = status::OK;
        let mut d = Vec::with_capacity(piece.len() + 1);
        d.push(st);
        d.extend_from_slice(&piece);
        Answer::Data(d)
    }

    /// Raw ISO 14443 frames to the target (libnfc's presence check sends an
    /// R(NAK) this way): answered as an ISO 14443-4 card would.
    fn in_communicate_thru(&mut self, p: &[u8], now: Instant, field: &mut dyn Field) -> Answer {
        // Nothing to send (libnfc listens for an NFC Barcode this way), or
        // nobody to answer: the card stays silent.
        if p.is_empty() || !self.present(field) {
            return self.status(status::TIMEOUT);
        }
        let Some(mut t) = self.target else {
            return self.status(status::TIMEOUT);
        };
        self.chain_in.clear();
        self.chain_out.clear();
        let answer = match p {
            // RATS: the ATS.
            [0xE0, _] => {
                t.selected = true;
                t.block = 0;
                Some(ATS.to_vec())
            }
            // R(ACK) or R(NAK) without CID: R(ACK) with the card's block number.
            [pcb] if pcb & 0xE6 == 0xA2 => Some(vec![0xA2 | t.block]),
            // S(DESELECT): acknowledged.
            [0xC2] => {
                t.selected = false;
                Some(vec![0xC2])
            }
            // HLTA: no answer.
            [0x50, 0x00] => {
                t.selected = false;
                None
            }
            // I-block without CID, NAD or chaining: an APDU.
            [pcb, apdu @ ..] if pcb & 0xFE == 0x02 && t.selected => match field.transmit(apdu, now)
            {
                Reply::Data(r) => {
                    t.block = pcb & 0x01;
                    let mut d = vec![*pcb];
                    d.extend(r);
                    Some(d)
                }
                Reply::Removed => None,
            },
            // Anything else: the card stays silent.
            _ => None,
        };
        self.target = Some(t);
        match answer {
            Some(d) => {
                self.chain_out = d;
                self.next_chunk()
            }
            None => self.status(status::TIMEOUT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapstack_pn532::frame::{self, NACK};

    /// A phone that answers every APDU with `9000` after echoing `len`
    /// bytes; `EE` as the first byte makes it leave.
    #[derive(Default)]
    struct Echo {
        present: Option<Presence>,
        arrivals: u64,
        apdus: Vec<Vec<u8>>,
        answer_len: usize,
        no_phone: bool,
    }

    impl Field for Echo {
        fn activate(&mut self, _now: Instant) -> Option<Presence> {
            if self.present.is_none() && !self.no_phone {
                self.arrivals += 1;
                self.present = Some(Presence {
                    uid: [0x08, 0x11, 0x22, self.arrivals as u8],
                    id: self.arrivals,
                });
            }
            self.present
        }
        fn current(&self) -> Option<Presence> {
            self.present
        }
        fn transmit(&mut self, apdu: &[u8], _now: Instant) -> Reply {
            self.apdus.push(apdu.to_vec());
            if apdu.first() == Some(&0xEE) {
                self.present = None;
                return Reply::Removed;
            }
            let mut r: Vec<u8> = (0..self.answer_len).map(|i| i as u8).collect();
            r.extend_from_slice(&[0x90, 0x00]);
            Reply::Data(r)
        }
        fn field_off(&mut self, _now: Instant) {
            self.present = None;
        }
    }

    struct Bench {
        chip: Chip,
        field: Echo,
        now: Instant,
    }

    impl Bench {
        fn new() -> Self {
            Bench {
                chip: Chip::new(),
                field: Echo::default(),
                now: Instant::now(),
            }
        }

        fn raw(&mut self, bytes: &[u8]) -> Vec<Frame> {
            let mut out = Vec::new();
            self.chip.feed(bytes, self.now, &mut self.field, &mut |b| {
                out.extend_from_slice(b)
            });
            let mut p = FrameParser::new();
            p.push(&out);
            std::iter::from_fn(|| p.next_frame()).collect()
        }

        /// A command: ACK, then the response data after the response code.
        fn command(&mut self, data: &[u8]) -> Result<Vec<u8>, Vec<Frame>> {
            let frames = self.raw(&frame::encode(TFI_HOST, data));
            match frames.as_slice() {
                [Frame::Ack, Frame::Info {
                    tfi: TFI_CHIP,
                    data: r,
                }] if r.first().copied() == data.first().map(|c| c + 1) => {
                    Ok(r.get(1..).unwrap_or_default().to_vec())
                }
                _ => Err(frames),
            }
        }
    }

    #[test]
    fn libnfc_init_sequence() {
        let mut b = Bench::new();
        // Wake-up preamble, then SAMConfiguration normal mode.
        let mut line = vec![0x55, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        line.extend_from_slice(&frame::encode(TFI_HOST, &[0x14, 0x01]));
        let got = b.raw(&line);
        assert_eq!(
            got,
            vec![
                Frame::Ack,
                Frame::Info {
                    tfi: TFI_CHIP,
                    data: vec![0x15]
                }
            ]
        );
        assert_eq!(b.command(b"\x00\x00libnfc").unwrap(), b"\x00libnfc");
        assert_eq!(b.command(&[0x02]).unwrap(), FIRMWARE);
        assert_eq!(b.command(&[0x12, 0x14]).unwrap(), b"");
        assert_eq!(
            b.command(&[0x06, 0x63, 0x02, 0x63, 0x03, 0x63, 0x3D])
                .unwrap(),
            [0x80, 0x80, 0x00]
        );
        assert_eq!(
            b.command(&[0x08, 0x63, 0x3D, 0x07, 0x63, 0x05, 0x40])
                .unwrap(),
            b""
        );
        assert_eq!(
            b.command(&[0x06, 0x63, 0x3D, 0x63, 0x05, 0xFF, 0xB0])
                .unwrap(),
            [0x07, 0x40, 0xFF]
        );
        assert_eq!(b.command(&[0x32, 0x01, 0x01]).unwrap(), b"");
        assert!(b.chip.rf_on());
        assert_eq!(
            b.chip.registers().read(REG_TX_CONTROL) & RF_ON_BITS,
            RF_ON_BITS
        );
        assert_eq!(b.command(&[0x32, 0x05, 0xFF, 0x01, 0x02]).unwrap(), b"");
        assert_eq!(b.command(&[0x32, 0x02, 0x00, 0x0B, 0x0A]).unwrap(), b"");
    }

    #[test]
    fn lists_the_phone_with_a_stable_uid_while_it_stays() {
        let mut b = Bench::new();
        b.command(&[0x32, 0x05, 0xFF, 0x01, 0x02]).unwrap();
        let first = b.command(&[0x4A, 0x01, 0x00]).unwrap();
        let mut expected = vec![1, 1, 0x00, 0x04, 0x20, 4, 0x08, 0x11, 0x22, 1];
        expected.extend_from_slice(&ATS);
        assert_eq!(first, expected);
        assert_eq!(b.command(&[0x44, 0x00]).unwrap(), [0x00]);
        assert_eq!(b.command(&[0x4A, 0x01, 0x00]).unwrap(), first);
        assert_eq!(b.command(&[0x52, 0x00]).unwrap(), [0x00]);
        // Selecting that UID finds it; another UID does not.
        assert_eq!(
            b.command(&[0x4A, 0x01, 0x00, 0x08, 0x11, 0x22, 1]).unwrap(),
            first
        );
        assert_eq!(
            b.command(&[0x4A, 0x01, 0x00, 0x08, 0x11, 0x22, 9]).unwrap(),
            [0]
        );
        // Other modulations find nothing.
        assert_eq!(
            b.command(&[0x4A, 0x01, 0x01, 0x00, 0xFF, 0xFF, 0x00, 0x00])
                .unwrap(),
            [0]
        );
        // Field off: the phone leaves; the next one has another UID.
        b.command(&[0x32, 0x01, 0x00]).unwrap();
        let second = b.command(&[0x4A, 0x01, 0x00]).unwrap();
        assert_eq!(second.get(6..10), Some(&[0x08, 0x11, 0x22, 2][..]));
        // Without auto RATS, no ATS.
        b.command(&[0x12, 0x04]).unwrap();
        assert_eq!(b.command(&[0x4A, 0x01, 0x00]).unwrap().len(), 10);
    }

    #[test]
    fn without_a_phone_polling_waits_or_finds_nothing() {
        let mut b = Bench::new();
        b.field.no_phone = true;
        // Endless retries (power-on default): no answer until a phone comes.
        assert_eq!(
            b.raw(&frame::encode(TFI_HOST, &[0x4A, 0x01, 0x00])),
            vec![Frame::Ack]
        );
        assert!(b.chip.is_busy());
        let mut out = Vec::new();
        b.chip
            .poll(b.now, &mut b.field, &mut |x| out.extend_from_slice(x));
        assert!(out.is_empty());
        b.field.no_phone = false;
        b.chip
            .poll(b.now, &mut b.field, &mut |x| out.extend_from_slice(x));
        let mut p = FrameParser::new();
        p.push(&out);
        assert!(
            matches!(p.next_frame(), Some(Frame::Info { tfi: TFI_CHIP, data }) if data.get(..2) == Some(&[0x4B, 1][..]))
        );
        // The host's ACK aborts a waiting command.
        b.field.present = None;
        b.field.no_phone = true;
        assert_eq!(
            b.raw(&frame::encode(TFI_HOST, &[0x4A, 0x01, 0x00])),
            vec![Frame::Ack]
        );
        assert_eq!(b.raw(&frame::ACK), vec![]);
        assert!(!b.chip.is_busy());
        // Finite retries: NbTg 0 at once.
        b.command(&[0x32, 0x05, 0x00, 0x01, 0x02]).unwrap();
        assert_eq!(b.command(&[0x4A, 0x01, 0x00]).unwrap(), [0]);
        // InAutoPoll with a finite count answers NbTg 0 when its polls run out.
        assert_eq!(
            b.raw(&frame::encode(TFI_HOST, &[0x60, 0x02, 0x01, 0x20, 0x10])),
            vec![Frame::Ack]
        );
        let mut out = Vec::new();
        b.chip
            .poll(b.now + Duration::from_secs(2), &mut b.field, &mut |x| {
                out.extend_from_slice(x)
            });
        assert_eq!(out, frame::encode(TFI_CHIP, &[0x61, 0]));
    }

    #[test]
    fn auto_poll_reports_an_iso14443_4_target() {
        let mut b = Bench::new();
        let got = b.command(&[0x60, 0xFF, 0x01, 0x20, 0x10]).unwrap();
        let mut expected = vec![1, 0x20, 14, 1, 0x00, 0x04, 0x20, 4, 0x08, 0x11, 0x22, 1];
        expected.extend_from_slice(&ATS);
        assert_eq!(got, expected);
        // Now Tg 1 exchanges APDUs.
        assert_eq!(
            b.command(&[0x40, 0x01, 0x00, 0xA4, 0x04, 0x00]).unwrap(),
            [0x00, 0x90, 0x00]
        );
    }

    #[test]
    fn data_exchange_chains_both_ways() {
        let mut b = Bench::new();
        b.command(&[0x4A, 0x01, 0x00]).unwrap();
        // Before anything: wrong target number.
        assert_eq!(
            b.command(&[0x40, 0x02, 0x00, 0xA4]).unwrap(),
            [status::WRONG_CONTEXT]
        );
        // A 600-byte APDU in three frames with MI.
        let apdu: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        for (i, part) in apdu.chunks(250).enumerate() {
            let last = i == 2;
            let mut f = vec![0x40, if last { 0x01 } else { 0x41 }];
            f.extend_from_slice(part);
            let r = b.command(&f).unwrap();
            if !last {
                assert_eq!(r, [0x00]);
            } else {
                // The phone answers 9000 only.
                assert_eq!(r, [0x00, 0x90, 0x00]);
            }
        }
        assert_eq!(b.field.apdus.last(), Some(&apdu));
        // A 700-byte response comes back in pieces with MI.
        b.field.answer_len = 700;
        let first = b
            .command(&[0x40, 0x01, 0x00, 0xB0, 0x00, 0x00, 0x00])
            .unwrap();
        assert_eq!(first.first(), Some(&status::MI));
        assert_eq!(first.len(), 1 + MAX_EXCHANGE);
        let mut all = first[1..].to_vec();
        loop {
            let r = b.command(&[0x40, 0x01]).unwrap();
            all.extend_from_slice(&r[1..]);
            if r[0] & status::MI == 0 {
                break;
            }
        }
        assert_eq!(all.len(), 702);
        assert_eq!(&all[700..], &[0x90, 0x00]);
        // The phone leaves: timeout, and polling finds the next one.
        assert_eq!(
            b.command(&[0x40, 0x01, 0xEE, 0x00, 0x00, 0x00]).unwrap(),
            [status::TIMEOUT]
        );
        assert_eq!(
            b.command(&[0x40, 0x01, 0x00, 0xA4, 0x00, 0x00]).unwrap(),
            [status::TIMEOUT]
        );
        assert_eq!(
            b.command(&[0x04]).unwrap(),
            [status::TIMEOUT, 0x00, 1, 1, 0, 0, 0, 0x00]
        );
        assert_eq!(b.command(&[0x4A, 0x01, 0x00]).unwrap().get(9), Some(&2));
    }

    #[test]
    fn presence_check_and_deselect() {
        let mut b = Bench::new();
        b.command(&[0x4A, 0x01, 0x00]).unwrap();
        // libnfc's ISO 14443-4 presence check: R(NAK) through InCommunicateThru.
        assert_eq!(b.command(&[0x42, 0xB2]).unwrap(), [0x00, 0xA2]);
        assert_eq!(
            b.command(&[0x42, 0x02, 0x00, 0xA4, 0x04, 0x00]).unwrap(),
            [0x00, 0x02, 0x90, 0x00]
        );
        assert_eq!(b.command(&[0x42, 0xB3]).unwrap(), [0x00, 0xA2]);
        assert_eq!(b.command(&[0x42]).unwrap(), [status::TIMEOUT]);
        assert_eq!(b.command(&[0x44, 0x01]).unwrap(), [0x00]);
        assert_eq!(
            b.command(&[0x40, 0x01, 0x00]).unwrap(),
            [status::WRONG_CONTEXT]
        );
        assert_eq!(b.command(&[0x54, 0x01]).unwrap(), [0x00]);
        assert_eq!(
            b.command(&[0x40, 0x01, 0x00, 0xA4, 0x04, 0x00]).unwrap(),
            [0x00, 0x90, 0x00]
        );
        assert_eq!(b.command(&[0x54, 0x02]).unwrap(), [status::WRONG_CONTEXT]);
        assert_eq!(b.command(&[0x00, 0x06]).unwrap(), [0x00]);
        b.field.present = None;
        assert_eq!(b.command(&[0x42, 0xB2]).unwrap(), [status::TIMEOUT]);
        assert_eq!(b.command(&[0x00, 0x06]).unwrap(), [status::TIMEOUT]);
        assert_eq!(b.command(&[0x52, 0x01]).unwrap(), [0x00]);
        assert_eq!(b.command(&[0x52, 0x01]).unwrap(), [status::WRONG_CONTEXT]);
        assert_eq!(b.command(&[0x44, 0x00]).unwrap(), [0x00]);
    }

    #[test]
    fn errors_nack_and_baud_rate() {
        let mut b = Bench::new();
        // Unknown command and bad parameters: ACK, then the error frame.
        for bad in [
            &[0x8C, 0x00][..],
            &[0x4A, 0x05, 0x00],
            &[0x4A],
            &[0x06, 0x63],
            &[0x08, 0x63, 0x02],
            &[0x32, 0x01],
            &[0x14, 0x00],
        ] {
            let got = b.raw(&frame::encode(TFI_HOST, bad));
            assert_eq!(got.len(), 2, "{bad:02X?}");
            assert_eq!(got[0], Frame::Ack);
            assert!(got[1].is_error_frame(), "{bad:02X?}");
        }
        // Wrong direction, no command: error frame only.
        assert!(b.raw(&frame::encode(TFI_CHIP, &[0x03]))[0].is_error_frame());
        assert!(b.raw(&frame::encode(TFI_HOST, &[]))[0].is_error_frame());
        // NACK: the last response again.
        let fw = b.raw(&frame::encode(TFI_HOST, &[0x02]));
        assert_eq!(b.raw(&NACK), fw[1..]);
        // SetSerialBaudRate switches after the host's ACK.
        assert_eq!(b.command(&[0x10, 0x07]).unwrap(), b"");
        assert_eq!(b.chip.take_baud_rate(), None);
        b.raw(&frame::ACK);
        assert_eq!(b.chip.take_baud_rate(), Some(921_600));
        assert!(b.raw(&frame::encode(TFI_HOST, &[0x10, 0x09]))[1].is_error_frame());
        // PowerDown: status, field off; any byte wakes the chip.
        b.command(&[0x4A, 0x01, 0x00]).unwrap();
        assert_eq!(b.command(&[0x16, 0xF0]).unwrap(), [0x00]);
        assert!(b.chip.is_asleep() && !b.chip.rf_on() && b.field.present.is_none());
        b.raw(&[0x55]);
        assert!(!b.chip.is_asleep());
    }
}
