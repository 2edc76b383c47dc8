//! libnfc driver through the `nfc1` crate, linked against Debian's
//! `libnfc.so.6` (no vendored C build; see docs/readers.md):
//! `libnfc:<libnfc connstring>`, e.g. `libnfc:pn532_uart:/dev/ttyUSB0`.
//!
//! - Polling: `nfc_initiator_select_passive_target` for ISO 14443-A at
//!   106 kbps with infinite select off, every 50 ms, so waits stay
//!   cancellable.
//! - Exchanges: `nfc_initiator_transceive_bytes` with the transmit timeout.
//!   libnfc sends one InDataExchange per APDU and does not chain with the
//!   MI bit, so this driver carries short APDUs (up to 261 bytes); longer
//!   logical commands and responses go through ISO 7816 chaining and GET
//!   RESPONSE ([`crate::Session::transmit_logical`]).
//! - Removal: an RF error is checked with `nfc_initiator_target_is_present`;
//!   a target that is gone is [`ReaderError::Removed`].
//! - After a timeout or an I/O error the device is closed and opened again
//!   at the next wait (libnfc's UART drivers cannot skip a late answer).

use std::time::{Duration, Instant};

use nfc1::target_info::TargetInfo as NfcTargetInfo;
use nfc1::{BaudRate, Context, Device, Modulation, ModulationType, Property, Target, Timeout};

use crate::{
    remaining, sleep_cancellable, wait_for, Cancel, Capabilities, Connection, Driver, OpenOptions,
    Reader, ReaderDescriptor, ReaderError, ReaderInfo, Session, Step, TargetInfo, TargetProtocol,
};

/// Longest APDU libnfc passes to a PN53x in one InDataExchange.
pub const MAX_APDU: usize = 261;
/// Room for the response (the PN53x buffer).
const RX_LEN: usize = 264;
const POLL: Duration = Duration::from_millis(50);
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// A libnfc device.
pub struct LibnfcReader {
    // Dropped before the context.
    dev: Option<Device>,
    ctx: Context,
    connstring: Option<String>,
    connection: String,
    name: String,
    timeout: Duration,
}

impl std::fmt::Debug for LibnfcReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibnfcReader")
            .field("connection", &self.connection)
            .field("open", &self.dev.is_some())
            .finish_non_exhaustive()
    }
}

fn modulation() -> Modulation {
    Modulation {
        modulation_type: ModulationType::Iso14443a,
        baud_rate: BaudRate::Baud106,
    }
}

impl LibnfcReader {
    /// Open the device (`None`: the first one libnfc lists).
    pub fn open(connstring: Option<&str>, opts: &OpenOptions) -> Result<Self, ReaderError> {
        let connection = Connection::Libnfc {
            connstring: connstring.map(str::to_owned),
        }
        .to_string();
        let ctx = Context::new().map_err(|e| ReaderError::Transport {
            reader: connection.clone(),
            source: Box::new(e),
        })?;
        let mut r = LibnfcReader {
            dev: None,
            ctx,
            connstring: connstring.map(str::to_owned),
            connection,
            name: String::new(),
            timeout: opts.transmit_timeout,
        };
        r.reopen().map_err(|e| match e {
            ReaderError::ReaderGone { .. } => ReaderError::NoReader {
                connection: r.connection.clone(),
            },
            e => e,
        })?;
        Ok(r)
    }

    fn gone(&self, source: Option<nfc1::Error>) -> ReaderError {
        ReaderError::ReaderGone {
            reader: self.connection.clone(),
            source: source.map(|e| Box::new(e) as crate::BoxError),
        }
    }

    fn transport(&self, e: nfc1::Error) -> ReaderError {
        ReaderError::Transport {
            reader: self.connection.clone(),
            source: Box::new(e),
        }
    }

    fn reopen(&mut self) -> Result<(), ReaderError> {
        self.dev = None;
        if self.connstring.is_none() {
            let first = self
                .ctx
                .list_devices(1)
                .ok()
                .and_then(|l| l.into_iter().next());
            let Some(first) = first else {
                return Err(self.gone(None));
            };
            self.connstring = Some(first.clone());
            self.connection = format!("libnfc:{first}");
        }
        let cs = self.connstring.clone().unwrap_or_default();
        let mut dev = self
            .ctx
            .open_with_connstring(&cs)
            .map_err(|e| self.gone(Some(e)))?;
        dev.initiator_init().map_err(|e| self.transport(e))?;
        // Return at once when no target is there (we poll), keep RATS automatic.
        dev.set_property_bool(Property::InfiniteSelect, false)
            .map_err(|e| self.transport(e))?;
        dev.set_property_bool(Property::AutoIso144434, true)
            .map_err(|e| self.transport(e))?;
        self.name = dev.name().to_owned();
        self.dev = Some(dev);
        Ok(())
    }

    fn map(&mut self, e: nfc1::Error) -> ReaderError {
        match e {
            nfc1::Error::Timeout => {
                // A late answer would confuse the next command: start afresh.
                self.dev = None;
                ReaderError::Timeout
            }
            nfc1::Error::OperationAborted => ReaderError::Cancelled,
            nfc1::Error::TargetReleased => ReaderError::Removed,
            nfc1::Error::Io | nfc1::Error::NoSuchDeviceFound | nfc1::Error::NoDeviceFound => {
                self.dev = None;
                self.gone(Some(e))
            }
            e => self.transport(e),
        }
    }
}

impl Reader for LibnfcReader {
    fn info(&self) -> ReaderInfo {
        ReaderInfo {
            name: self.name.clone(),
            connection: self.connection.clone(),
            driver: Driver::Libnfc,
            capabilities: Capabilities::SHORT,
        }
    }

    fn wait_for_target(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Box<dyn Session + '_>, ReaderError> {
        let (nfc_target, target) = wait_for(timeout, cancel, |left| {
            if self.dev.is_none() {
                if let Err(e) = self.reopen() {
                    return Step::Trouble(e, RECONNECT_PAUSE);
                }
            }
            let Some(dev) = self.dev.as_mut() else {
                return Step::Idle(Duration::ZERO);
            };
            let found = dev.initiator_select_passive_target(&modulation());
            match found {
                Ok(t) => {
                    let NfcTargetInfo::Iso14443a(a) = t.target_info else {
                        return Step::Idle(POLL);
                    };
                    if a.uid_len == 0 {
                        return Step::Idle(POLL);
                    }
                    if a.sak & 0x20 == 0 {
                        let _ = dev.initiator_deselect_target();
                        return Step::Idle(Duration::from_millis(100));
                    }
                    let uid = a.uid.get(..a.uid_len).unwrap_or_default().to_vec();
                    let ats = a
                        .ats
                        .get(..a.ats_len)
                        .map(<[u8]>::to_vec)
                        .filter(|v| !v.is_empty());
                    // libnfc reports the ATS without its length byte TL.
                    let ats = ats.map(|mut v| {
                        v.insert(0, (v.len() + 1) as u8);
                        v
                    });
                    let info = TargetInfo {
                        uid,
                        atr: None,
                        ats,
                        protocol: TargetProtocol::IsoDep,
                    };
                    Step::Found((t, info))
                }
                Err(e) => match self.map(e) {
                    ReaderError::Timeout => Step::Idle(POLL.min(left)),
                    e => Step::Trouble(e, POLL),
                },
            }
        })?;
        Ok(Box::new(LibnfcSession {
            reader: self,
            nfc_target,
            target,
        }))
    }

    fn set_transmit_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

struct LibnfcSession<'r> {
    reader: &'r mut LibnfcReader,
    nfc_target: Target,
    target: TargetInfo,
}

impl LibnfcSession<'_> {
    fn dev(&mut self) -> Result<&mut Device, ReaderError> {
        let gone = self.reader.gone(None);
        self.reader.dev.as_mut().ok_or(gone)
    }
}

impl Session for LibnfcSession<'_> {
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
        let timeout = Timeout::Duration(self.reader.timeout.max(Duration::from_millis(1)));
        let r = self
            .dev()?
            .initiator_transceive_bytes(apdu, RX_LEN, timeout);
        match r {
            Ok(d) => Ok(d),
            Err(nfc1::Error::RfTransmissionError) => match self.is_present() {
                Ok(false) => Err(ReaderError::Removed),
                Ok(true) => Err(ReaderError::Transport {
                    reader: self.reader.connection.clone(),
                    source: Box::new(nfc1::Error::RfTransmissionError),
                }),
                Err(e) => Err(e),
            },
            Err(e) => Err(self.reader.map(e)),
        }
    }

    fn is_present(&mut self) -> Result<bool, ReaderError> {
        let t = self.nfc_target;
        let r = self.dev()?.initiator_target_is_present(&t);
        match r {
            Ok(()) => Ok(true),
            // libnfc forgets its current target once it found it gone and
            // then calls the question invalid.
            Err(
                nfc1::Error::TargetReleased
                | nfc1::Error::RfTransmissionError
                | nfc1::Error::Timeout
                | nfc1::Error::InvalidArgument,
            ) => Ok(false),
            Err(e) => Err(self.reader.map(e)),
        }
    }

    fn wait_removed(&mut self, timeout: Duration, cancel: &Cancel) -> Result<(), ReaderError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = remaining(deadline, cancel)?;
            if !self.is_present()? {
                return Ok(());
            }
            sleep_cancellable(POLL.min(left), cancel);
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::SHORT
    }
}

impl Drop for LibnfcSession<'_> {
    fn drop(&mut self) {
        if let Some(dev) = self.reader.dev.as_mut() {
            let _ = dev.initiator_deselect_target();
        }
    }
}

/// Devices libnfc finds by itself (USB; serial ones only when configured).
pub fn discover() -> Vec<ReaderDescriptor> {
    let Ok(mut ctx) = Context::new() else {
        return Vec::new();
    };
    ctx.list_devices(8)
        .unwrap_or_default()
        .into_iter()
        .map(|cs| ReaderDescriptor {
            connection: format!("libnfc:{cs}"),
            name: cs,
            driver: Driver::Libnfc,
        })
        .collect()
}
