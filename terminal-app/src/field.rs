//! Where phones are tapped: the [`Field`] the CLI, the daemon and kiosk
//! mode tap through, and its in-process emulator ([`EmuField`], `emu:`).
//! The reader crate's drivers are a field too (`readers.rs`).

use std::time::Duration;

#[cfg(feature = "emu")]
pub use emu::EmuField;
use tapstack_reader::Session;

use crate::tap::TapResult;
use crate::Error;

/// Where phones are tapped: a reader.
pub trait Field: Send {
    /// Wait up to `timeout` for a phone; run `tap` with it; wait for it to
    /// leave. `None` when no phone came.
    fn with_phone(
        &mut self,
        timeout: Duration,
        tap: &mut dyn FnMut(&mut dyn Session) -> TapResult,
    ) -> Result<Option<TapResult>, Error>;
    fn describe(&self) -> String;
}

#[cfg(feature = "emu")]
mod emu {
    use std::path::Path;
    use std::time::Duration;

    use tapstack_emulator::phone::{Phone, PhoneQueue, Reply, ATS};
    use tapstack_emulator::{profile, FaultScript};
    use tapstack_reader::{Cancel, Capabilities, ReaderError, Session, TargetInfo};

    use super::Field;
    use crate::tap::TapResult;
    use crate::Error;

    /// `emu:<profile>[,<profile>…]`: emulated phones in this process.
    #[derive(Debug)]
    pub struct EmuField {
        queue: PhoneQueue,
        description: String,
    }

    impl EmuField {
        pub fn open(spec: &str, base: &Path) -> Result<Self, Error> {
            Self::with_faults(spec, base, FaultScript::default())
        }

        /// Phones that misbehave as `faults` scripts (see `tapstack_emulator::faults`).
        pub fn with_faults(spec: &str, base: &Path, faults: FaultScript) -> Result<Self, Error> {
            let mut phones = Vec::new();
            for p in spec.split(',').filter(|s| !s.is_empty()) {
                let path = if Path::new(p).is_absolute() {
                    p.into()
                } else {
                    base.join(p)
                };
                let w = profile::load(&path).map_err(|e| Error::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                phones.push(Phone::from_wallet(w));
            }
            if phones.is_empty() {
                return Err(Error::File {
                    path: base.to_path_buf(),
                    reason: "emu: needs at least one wallet profile (emu:alice.toml)".into(),
                });
            }
            Ok(EmuField {
                description: format!("emu:{spec}"),
                queue: PhoneQueue::new(phones, faults),
            })
        }
    }

    /// The phone in the field as a reader session, in process.
    struct EmuSession<'a> {
        queue: &'a mut PhoneQueue,
        target: TargetInfo,
    }

    impl Session for EmuSession<'_> {
        fn target(&self) -> &TargetInfo {
            &self.target
        }

        fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ReaderError> {
            match self.queue.transmit(apdu) {
                Reply::Data(d) => Ok(d),
                Reply::Removed => Err(ReaderError::Removed),
            }
        }

        fn is_present(&mut self) -> Result<bool, ReaderError> {
            Ok(self.queue.current().is_some_and(|p| p.in_field()))
        }

        /// In process nobody lifts the phone away: it leaves when the tap is
        /// over ([`EmuField`] makes it).
        fn wait_removed(
            &mut self,
            _timeout: Duration,
            _cancel: &Cancel,
        ) -> Result<(), ReaderError> {
            Ok(())
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities {
                max_apdu: tapstack_reader::loopback::MAX_APDU,
                extended_length: true,
                baud: None,
            }
        }
    }

    impl Field for EmuField {
        fn with_phone(
            &mut self,
            _timeout: Duration,
            tap: &mut dyn FnMut(&mut dyn Session) -> TapResult,
        ) -> Result<Option<TapResult>, Error> {
            let Some(uid) = self.queue.enter().map(|p| p.uid()) else {
                return Ok(None);
            };
            let target = TargetInfo::iso_dep(&uid, &ATS);
            let result = tap(&mut EmuSession {
                queue: &mut self.queue,
                target,
            });
            self.queue.leave();
            Ok(Some(result))
        }

        fn describe(&self) -> String {
            self.description.clone()
        }
    }
}
