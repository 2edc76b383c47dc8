//! Hardware readers (PC/SC, libnfc, native PN532) behind [`Field`].
//! (Wired to the reader crate's drivers.)

use crate::app::Field;
use crate::Error;

pub fn open(connection: &str) -> Result<Box<dyn Field>, Error> {
    Err(Error::File { path: connection.into(), reason: "hardware readers are not wired into this build yet; use emu:".into() })
}
