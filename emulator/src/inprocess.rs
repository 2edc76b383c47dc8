//! The in-process front-end: the phone queue as a field for the reader
//! crate's loopback reader (`emu:`), so a terminal runs whole taps against
//! emulated phones without pcscd or a PTY.
//!
//! ```
//! use tapstack_emulator::{inprocess, FaultScript, PhoneQueue};
//! use tapstack_reader::Reader;
//! // An empty queue: no phone ever comes.
//! let mut reader = inprocess::loopback(PhoneQueue::new(Vec::new(), FaultScript::default()));
//! assert_eq!(reader.info().connection, "emu:");
//! ```

use tapstack_reader::{LoopbackReader, ReaderError, TargetInfo, VirtualField};

use crate::phone::{PhoneQueue, Reply, ATR, ATS};

impl VirtualField for PhoneQueue {
    /// The next phone of the queue enters the field (fresh random UID).
    fn arrive(&mut self) -> Option<TargetInfo> {
        if self.is_empty() {
            return None;
        }
        let uid = self.enter()?.uid();
        let mut target = TargetInfo::iso_dep(&uid, &ATS);
        target.atr = Some(ATR.to_vec());
        Some(target)
    }

    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ReaderError> {
        match PhoneQueue::transmit(self, apdu) {
            Reply::Data(d) => Ok(d),
            Reply::Removed => Err(ReaderError::Removed),
        }
    }

    /// The phone leaves; the queue moves on once it is done.
    fn depart(&mut self) {
        self.leave();
    }
}

/// A loopback reader over `queue`.
pub fn loopback(queue: PhoneQueue) -> LoopbackReader {
    LoopbackReader::new(Box::new(queue))
}
