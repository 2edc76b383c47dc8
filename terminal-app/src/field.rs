//! Where phones are tapped: the reader the configuration names, as a
//! [`Field`] the CLI, the daemon and kiosk mode tap through. Every reader is
//! a [`tapstack_reader::Reader`]: PC/SC, libnfc and the native PN532 opened
//! by connection string, and `emu:` — the emulator's phones in this process
//! on the reader crate's loopback reader (cargo feature `emu`).

use std::path::Path;
use std::time::Duration;

use tapstack_reader::{Cancel, Reader, ReaderError, Session};

use crate::tap::TapResult;
use crate::Error;

/// How long the terminal waits, after a tap, for the phone to leave before
/// it takes the next one (a phone left on the reader is not charged twice:
/// the next intent waits for a new arrival).
pub const LEAVE_WAIT: Duration = Duration::from_secs(30);

/// A reader, and the connection string it was opened with (for messages).
pub struct Field {
    reader: Box<dyn Reader>,
    connection: String,
}

impl core::fmt::Debug for Field {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Field")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

fn reader_err(connection: &str, e: ReaderError) -> Error {
    Error::Reader {
        connection: connection.to_owned(),
        detail: e.to_string(),
    }
}

impl Field {
    /// A field over any reader (tests wrap the loopback reader this way).
    pub fn new(reader: Box<dyn Reader>, connection: impl Into<String>) -> Self {
        Field {
            reader,
            connection: connection.into(),
        }
    }

    /// Open `pcsc:…`, `libnfc:…`, `pn532:…`, or `emu:<profile>[,<profile>…]`
    /// (profile paths relative to `base`).
    pub fn open(connection: &str, base: &Path) -> Result<Self, Error> {
        if let Some(spec) = connection.strip_prefix("emu:") {
            #[cfg(feature = "emu")]
            return emu::open(spec, base, Default::default());
            #[cfg(not(feature = "emu"))]
            {
                let _ = (spec, base);
                return Err(Error::Reader {
                    connection: connection.to_owned(),
                    detail: "this build has no emulated phones (built without the `emu` feature)"
                        .into(),
                });
            }
        }
        let reader = tapstack_reader::open(connection).map_err(|e| reader_err(connection, e))?;
        Ok(Field::new(reader, connection))
    }

    /// Wait up to `timeout` for a phone (`cancel` ends the wait at once);
    /// run `tap` with it; wait for it to leave (up to [`LEAVE_WAIT`], or
    /// until `leave` is cancelled). `None` when no phone came.
    pub fn with_phone(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
        leave: &Cancel,
        tap: &mut dyn FnMut(&mut dyn Session) -> TapResult,
    ) -> Result<Option<TapResult>, Error> {
        let mut session = match self.reader.wait_for_target(timeout, cancel) {
            Ok(s) => s,
            Err(ReaderError::Timeout) | Err(ReaderError::Cancelled) => return Ok(None),
            Err(e) => return Err(reader_err(&self.connection, e)),
        };
        let result = tap(session.as_mut());
        match session.wait_removed(LEAVE_WAIT, leave) {
            Ok(())
            | Err(ReaderError::Removed)
            | Err(ReaderError::Timeout)
            | Err(ReaderError::Cancelled) => {}
            Err(e) => {
                tracing::warn!(reader = %self.connection, error = %e, "waiting for the phone to leave")
            }
        }
        Ok(Some(result))
    }

    pub fn describe(&self) -> String {
        self.connection.clone()
    }
}

#[cfg(feature = "emu")]
pub use emu::open as open_emu;

#[cfg(feature = "emu")]
mod emu {
    use std::path::Path;

    use tapstack_emulator::phone::{Phone, PhoneQueue};
    use tapstack_emulator::{inprocess, profile, FaultScript};

    use super::Field;
    use crate::Error;

    /// `emu:<profile>[,<profile>…]`: emulated phones in this process, on
    /// the reader crate's loopback reader, misbehaving as `faults` scripts
    /// (see `tapstack_emulator::faults`).
    pub fn open(spec: &str, base: &Path, faults: FaultScript) -> Result<Field, Error> {
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
        let reader = inprocess::loopback(PhoneQueue::new(phones, faults));
        Ok(Field::new(Box::new(reader), format!("emu:{spec}")))
    }
}
