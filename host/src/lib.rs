//! # tapstack-host
//!
//! The upload endpoint of tapstack (`tap-host`): terminals come back online
//! and upload their offline-signed transaction records in batches over
//! HTTPS with mutual TLS; the host authenticates the terminal, verifies
//! every record, de-duplicates on (terminal, seq), settles each tap once
//! (a repeated transcript, a reused wallet counter or one outside the ATC
//! window is declined), stores what it decided durably (fdatasync) and only
//! then acknowledges. It also publishes the
//! signed revocation list. It holds no CA private key: it verifies with
//! certificates only, and everything that is issued (terminals, wallets,
//! pickup credentials, revocation lists, its own TLS certificate) is issued
//! offline by `tap-certs`.
//!
//! ```text
//!  terminal ══ mTLS (tls::ClientVerifier) ══▶ server::Host ── POST /v1/batches
//!                                               │  wire::BatchRequest (JSON, base64 records)
//!                                               ▼
//!                                       ingest::Ingestor ── protocol::record::verify_contents with the ring backend
//!                                               │            + issuer cryptogram, revocation, chain
//!                                               ▼
//!                                       store::Store (SledStore) ── append (atomic, one tap one settlement) ── sync (group fdatasync)
//!                                               │
//!  terminal ◀══ wire::BatchResponse (per-record status, acked_seq) ◀──┘
//! ```
//!
//! The library does the work; `tap-host` only parses arguments. Ingest
//! without HTTP:
//!
//! ```
//! # fn main() -> Result<(), tapstack_host::Error> {
//! use std::sync::Arc;
//! use tapstack_host::{ingest::{Ingestor, VerifyMode}, revocations::Revocations, store::SledStore, wire::RecordStatus};
//! use tapstack_protocol::{testkit::Pki, record::TransactionRecord, revocation::RevocationList, scenario::*, terminal::TapParams, Codec};
//!
//! let mut rng = rand_core::OsRng;
//! let pki = Pki::generate(&mut rng);
//! let (mut terminal, mut wallet) = (pki.terminal_context(), pki.wallet_context());
//! let pay = Scenario::Pay { amount: Amount::parse("12.50", Currency::new("CNY").unwrap()).unwrap() };
//! let tap = pki.run_tap(&mut terminal, &mut wallet, TapParams { scenario: pay, cvm_limit: 5000, send_certificate: true }, &mut rng);
//! let record = TransactionRecord::new(&tap.outcome.unwrap(), &pki.terminal.cert, &pki.terminal.key, 1, [0; 32], pki.now, None, None);
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = Arc::new(SledStore::open(dir.path())?);
//! let revocations = Arc::new(Revocations::fixed(RevocationList::default(), pki.host_trust()));
//! let host = Ingestor::new(store, pki.host_trust(), pki.issuer_master_key.clone(), revocations, VerifyMode::Ring)?;
//! let resp = host.ingest(&pki.terminal.cert, &[record.to_bytes()], pki.now)?;
//! assert_eq!(resp.results[0].status, RecordStatus::Accepted);
//! assert_eq!(resp.acked_seq, 1);
//! // Sent again: acknowledged again, stored once.
//! let again = host.ingest(&pki.terminal.cert, &[record.to_bytes()], pki.now)?;
//! assert_eq!(again.results[0].status, RecordStatus::Duplicate);
//! # Ok(()) }
//! ```

/// The upload client lives in `tapstack-upload`; re-exported for the
/// host's tests and tools.
pub use tapstack_upload::client;
mod error;
pub mod fastverify;
pub mod ingest;
pub mod ledger;
pub mod metrics;
pub mod revocations;
pub mod server;
pub mod store;
pub mod tls;
pub use tapstack_upload::wire;

pub use error::Error;
