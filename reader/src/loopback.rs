//! The loopback reader: an in-process "field" ([`VirtualField`]) instead of
//! hardware. The emulator implements [`VirtualField`] for its phone queue
//! (`tapstack_emulator::inprocess`), so a terminal runs whole taps against
//! emulated phones in one process (`emu:`).
//!
//! The field runs on a worker thread owned by the reader, so a phone that
//! answers too late ends in [`ReaderError::Timeout`] after the reader's
//! transmit timeout, as with hardware. In-process, nobody lifts the phone
//! away: [`Session::wait_removed`] and dropping the session make it
//! [`VirtualField::depart`].

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{
    wait_for, Cancel, Capabilities, Driver, Reader, ReaderError, ReaderInfo, Session, Step,
    TargetInfo, DEFAULT_TRANSMIT_TIMEOUT,
};

/// A field of phones (or cards) in process.
pub trait VirtualField: Send {
    /// The next target enters the field, if one is there to come.
    fn arrive(&mut self) -> Option<TargetInfo>;
    /// Deliver one wire APDU to the target in the field.
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ReaderError>;
    /// The target in the field leaves it.
    fn depart(&mut self);
}

enum Op {
    Arrive(mpsc::SyncSender<Option<TargetInfo>>),
    Transmit(Vec<u8>, mpsc::SyncSender<Result<Vec<u8>, ReaderError>>),
    Depart,
}

/// Longest APDU the loopback carries (extended length).
pub const MAX_APDU: usize = 65_544;

/// A reader over a [`VirtualField`].
#[derive(Debug)]
pub struct LoopbackReader {
    ops: Option<mpsc::Sender<Op>>,
    worker: Option<JoinHandle<()>>,
    timeout: Duration,
    poll: Duration,
}

impl LoopbackReader {
    pub fn new(mut field: Box<dyn VirtualField>) -> Self {
        let (tx, rx) = mpsc::channel::<Op>();
        let worker = std::thread::Builder::new()
            .name("loopback-field".into())
            .spawn(move || {
                while let Ok(op) = rx.recv() {
                    match op {
                        Op::Arrive(reply) => {
                            let _ = reply.send(field.arrive());
                        }
                        Op::Transmit(apdu, reply) => {
                            let _ = reply.send(field.transmit(&apdu));
                        }
                        Op::Depart => field.depart(),
                    }
                }
            })
            .ok();
        LoopbackReader {
            ops: Some(tx),
            worker,
            timeout: DEFAULT_TRANSMIT_TIMEOUT,
            poll: Duration::from_millis(10),
        }
    }

    fn send(&self, op: Op) -> Result<(), ReaderError> {
        self.ops
            .as_ref()
            .and_then(|s| s.send(op).ok())
            .ok_or_else(|| ReaderError::ReaderGone {
                reader: "emu:".into(),
                source: None,
            })
    }

    fn capabilities() -> Capabilities {
        Capabilities {
            max_apdu: MAX_APDU,
            extended_length: true,
            baud: None,
        }
    }
}

impl Drop for LoopbackReader {
    fn drop(&mut self) {
        self.ops.take();
        // The worker ends once it finished what it was doing; do not wait
        // for a phone that sleeps.
        drop(self.worker.take());
    }
}

impl Reader for LoopbackReader {
    fn info(&self) -> ReaderInfo {
        ReaderInfo {
            name: "in-process emulator".into(),
            connection: "emu:".into(),
            driver: Driver::Loopback,
            capabilities: Self::capabilities(),
        }
    }

    fn wait_for_target(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Box<dyn Session + '_>, ReaderError> {
        let target = wait_for(timeout, cancel, |left| {
            let (tx, rx) = mpsc::sync_channel(1);
            if let Err(e) = self.send(Op::Arrive(tx)) {
                return Step::Stop(e);
            }
            match rx.recv_timeout(left) {
                Ok(Some(target)) => Step::Found(target),
                Ok(None) => Step::Idle(self.poll),
                Err(mpsc::RecvTimeoutError::Timeout) => Step::Stop(ReaderError::Timeout),
                Err(mpsc::RecvTimeoutError::Disconnected) => Step::Stop(ReaderError::ReaderGone {
                    reader: "emu:".into(),
                    source: None,
                }),
            }
        })?;
        Ok(Box::new(LoopbackSession {
            reader: self,
            target,
            removed: false,
        }))
    }

    fn set_transmit_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
}

struct LoopbackSession<'r> {
    reader: &'r mut LoopbackReader,
    target: TargetInfo,
    removed: bool,
}

impl Session for LoopbackSession<'_> {
    fn target(&self) -> &TargetInfo {
        &self.target
    }

    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ReaderError> {
        if self.removed {
            return Err(ReaderError::Removed);
        }
        if apdu.len() > MAX_APDU {
            return Err(ReaderError::ApduTooLong {
                len: apdu.len(),
                max: MAX_APDU,
            });
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.reader.send(Op::Transmit(apdu.to_vec(), tx))?;
        match rx.recv_timeout(self.reader.timeout) {
            Ok(Err(ReaderError::Removed)) => {
                // The phone left on its own: the field moves on, once.
                self.removed = true;
                self.reader.send(Op::Depart)?;
                Err(ReaderError::Removed)
            }
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ReaderError::Timeout),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ReaderError::ReaderGone {
                reader: "emu:".into(),
                source: None,
            }),
        }
    }

    fn is_present(&mut self) -> Result<bool, ReaderError> {
        Ok(!self.removed)
    }

    fn wait_removed(&mut self, _timeout: Duration, cancel: &Cancel) -> Result<(), ReaderError> {
        cancel.check()?;
        if !self.removed {
            self.removed = true;
            self.reader.send(Op::Depart)?;
        }
        Ok(())
    }

    fn capabilities(&self) -> Capabilities {
        LoopbackReader::capabilities()
    }
}

impl Drop for LoopbackSession<'_> {
    fn drop(&mut self) {
        // The phone leaves as the session ends (once: a second departure
        // would move the queue past the next phone).
        if !self.removed {
            let _ = self.reader.send(Op::Depart);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echoes APDUs; `EE…` makes the card leave; `DD…` answers late.
    struct Echo {
        arrivals: u8,
        present: bool,
    }

    impl VirtualField for Echo {
        fn arrive(&mut self) -> Option<TargetInfo> {
            self.arrivals += 1;
            self.present = true;
            Some(TargetInfo::iso_dep(
                &[8, 1, 2, self.arrivals],
                &[0x05, 0x78, 0x80, 0x70, 0x02],
            ))
        }
        fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ReaderError> {
            if !self.present {
                return Err(ReaderError::Removed);
            }
            match apdu.first() {
                Some(0xEE) => {
                    self.present = false;
                    Err(ReaderError::Removed)
                }
                Some(0xDD) => {
                    std::thread::sleep(Duration::from_millis(300));
                    Ok(vec![0x90, 0x00])
                }
                _ => {
                    let mut r = apdu.to_vec();
                    r.extend_from_slice(&[0x90, 0x00]);
                    Ok(r)
                }
            }
        }
        fn depart(&mut self) {
            self.present = false;
        }
    }

    #[test]
    fn taps_remove_and_timeouts() {
        let mut r = LoopbackReader::new(Box::new(Echo {
            arrivals: 0,
            present: false,
        }));
        r.set_transmit_timeout(Duration::from_millis(100));
        let cancel = Cancel::new();
        {
            let mut s = r.wait_for_target(Duration::from_secs(1), &cancel).unwrap();
            assert_eq!(s.target().uid, [8, 1, 2, 1]);
            assert_eq!(s.transmit(&[1, 2]).unwrap(), [1, 2, 0x90, 0x00]);
            assert!(matches!(s.transmit(&[0xDD]), Err(ReaderError::Timeout)));
            // The late answer is dropped; the field is free again after it.
            std::thread::sleep(Duration::from_millis(400));
            assert!(matches!(s.transmit(&[0xEE]), Err(ReaderError::Removed)));
            assert!(!s.is_present().unwrap());
            assert!(matches!(s.transmit(&[1]), Err(ReaderError::Removed)));
        }
        let mut s = r.wait_for_target(Duration::from_secs(1), &cancel).unwrap();
        assert_eq!(s.target().uid, [8, 1, 2, 2]);
        s.wait_removed(Duration::from_secs(1), &cancel).unwrap();
        assert!(!s.is_present().unwrap());
        drop(s);
        cancel.cancel();
        assert!(matches!(
            r.wait_for_target(Duration::from_secs(1), &cancel),
            Err(ReaderError::Cancelled)
        ));
    }
}
