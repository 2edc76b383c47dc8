//! # tapstack-protocol
//!
//! The sans-IO core of tapstack's NFC tap protocol (v2): no sockets, no
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
pub mod compact;
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

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`, for messages people read
/// (certificate validity, clocks); out of range → the number with its unit.
pub fn utc(secs: u64) -> String {
    match der::DateTime::from_unix_duration(core::time::Duration::from_secs(secs)) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            d.year(),
            d.month(),
            d.day(),
            d.hour(),
            d.minutes(),
            d.seconds()
        ),
        Err(_) => format!("{secs} (Unix seconds)"),
    }
}
pub use error::Error;

#[cfg(test)]
mod utc_tests {
    use super::utc;

    #[test]
    fn utc_formats_unix_seconds() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_780_000_000), "2026-05-28 20:26:40 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
        assert_eq!(utc(u64::MAX), format!("{} (Unix seconds)", u64::MAX));
    }
}
