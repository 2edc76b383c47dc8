//! # tapstack-protocol
//!
//! The sans-IO core of tapstack's NFC tap protocol (v1): no sockets, no
//! files, no clock, no global RNG. Time (`now`, Unix seconds) and randomness
//! (`&mut impl CryptoRngCore`) are arguments; inputs are `handle_*`, outputs
//! `poll_*`.
//!
//! ```text
//!  terminal driver                                      phone (HCE) driver
//!  ┌──────────────────┐  Command  ┌────────────┐ bytes ┌──────────┐ Command ┌────────────────┐
//!  │ TerminalSession  │──────────▶│TerminalLink│══════▶│ CardLink │────────▶│ WalletSession  │
//!  │ (terminal.rs)    │◀──────────│ chaining,  │◀══════│ 61xx     │◀────────│ (wallet.rs)    │
//!  └──────────────────┘  Response │ GET RESP.  │ reader└──────────┘Response└────────────────┘
//!        │ TapOutcome            └────────────┘
//!        ▼
//!  TransactionRecord ──upload──▶ host: verify_record()
//! ```
//!
//! A whole tap runs in memory:
//!
//! ```
//! # use tapstack_protocol::testkit::Pki;
//! # use tapstack_protocol::{terminal::*, wallet::*, scenario::*};
//! let mut rng = rand_core::OsRng;
//! let pki = Pki::generate(&mut rng);
//! let (mut terminal, mut wallet) = (pki.terminal_context(), pki.wallet_context());
//! let pay = Scenario::Pay { amount: Amount::parse("12.50", Currency::new("CNY").unwrap()).unwrap() };
//! let tap = pki.run_tap(&mut terminal, &mut wallet, TapParams { scenario: pay, cvm_limit: 5000, send_certificate: true }, &mut rng);
//! assert!(tap.outcome.is_some());
//! ```

pub mod airtime;
pub mod apdu;
pub mod cache;
pub mod codec;
pub mod crypto;
pub mod error;
mod iso4217;
pub mod messages;
pub mod pki;
pub mod record;
pub mod revocation;
pub mod scenario;
pub mod terminal;
pub mod testkit;
pub mod tlv;
pub mod verify;
pub mod wallet;

pub use codec::{Codec, DecodeError};
pub use error::Error;
