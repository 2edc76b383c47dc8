//! Hardware readers (PC/SC, libnfc, native PN532) from the reader crate,
//! behind the terminal's [`Field`].

use std::time::Duration;

use tapstack_reader::{Cancel, Reader, ReaderError, Session};

use crate::field::Field;
use crate::tap::TapResult;
use crate::Error;

/// How long the terminal waits, after a tap, for the phone to leave before
/// it takes the next one (a phone left on the reader is not charged twice:
/// the next intent waits for a new arrival).
pub const LEAVE_WAIT: Duration = Duration::from_secs(30);

fn reader_err(connection: &str, e: ReaderError) -> Error {
    Error::Reader {
        connection: connection.to_owned(),
        detail: e.to_string(),
    }
}

/// A reader opened from a connection string.
pub struct ReaderField {
    reader: Box<dyn Reader>,
    connection: String,
    cancel: Cancel,
}

impl core::fmt::Debug for ReaderField {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReaderField")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl ReaderField {
    /// A token that aborts the current wait for a phone.
    pub fn canceller(&self) -> Cancel {
        self.cancel.clone()
    }
}

impl Field for ReaderField {
    fn with_phone(
        &mut self,
        timeout: Duration,
        tap: &mut dyn FnMut(&mut dyn Session) -> TapResult,
    ) -> Result<Option<TapResult>, Error> {
        let mut session = match self.reader.wait_for_target(timeout, &self.cancel) {
            Ok(s) => s,
            Err(ReaderError::Timeout) | Err(ReaderError::Cancelled) => return Ok(None),
            Err(e) => return Err(reader_err(&self.connection, e)),
        };
        let result = tap(session.as_mut());
        match session.wait_removed(LEAVE_WAIT, &self.cancel) {
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

    fn describe(&self) -> String {
        self.connection.clone()
    }
}

/// Open `pcsc:…`, `libnfc:…` or `pn532:…`.
pub fn open(connection: &str) -> Result<Box<dyn Field>, Error> {
    let reader = tapstack_reader::open(connection).map_err(|e| reader_err(connection, e))?;
    Ok(Box::new(ReaderField {
        reader,
        connection: connection.to_owned(),
        cancel: Cancel::new(),
    }))
}
