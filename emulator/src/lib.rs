//! # tapstack-emulator
//!
//! The phone side of tapstack without a phone: the wallet app (keys,
//! certificate, persisted transaction counter, CVM policy, pickup
//! credentials, simulated latency) behind virtual reader hardware that real
//! tools accept.
//!
//! ```text
//!            wallet profile (TOML) ──load──▶ Phone ──▶ PhoneQueue (several phones, in turn)
//!                                                          │
//!        ┌─────────────────────────┬───────────────────────┼──────────────────────┐
//!        ▼                         ▼                       ▼                      ▼
//!  vpcd front-end            PN532 front-end          in-process            fault script
//!  (TCP to pcscd's vpcd)     (PTY, HSU frames)        (PhoneQueue itself)   (remove, delay,
//!  pcsc_scan, scriptor,      nfc-list, nfc1,                                 corrupt, sw, garbage)
//!  any PC/SC program         native PN532 driver
//! ```
//!
//! See `docs/emulator.md` for how to run each front-end.

pub mod faults;
pub mod inprocess;
pub mod phone;
pub mod pn532;
pub mod profile;
pub mod state;
pub mod vpcd;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use faults::{Fault, FaultAction, FaultScript};
pub use phone::{Phone, PhoneQueue, Reply};
pub use profile::{CvmPolicy, LoadedWallet, Profile};

/// Everything that can go wrong in the emulator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    State { path: PathBuf, what: &'static str },
    #[error("profile {path}: {reason}")]
    Profile { path: PathBuf, reason: String },
    #[error(transparent)]
    Certs(#[from] tapstack_certs::Error),
    #[error("fault rule {rule:?} is not ACTION@N[:ARG][/TAP] (remove, delay:MS, corrupt, sw:XXXX, garbage)")]
    Fault { rule: String },
    #[error("vpcd at {addr}: {source}")]
    Net {
        addr: SocketAddr,
        source: std::io::Error,
    },
}
