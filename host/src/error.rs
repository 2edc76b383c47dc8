//! The host crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the host library. Per-record verdicts
/// (a forged record, a gap) are not errors: they are
/// [`crate::wire::RecordStatus`] values in a successful batch response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The embedded store failed.
    #[error("store: {op} failed")]
    Store {
        op: &'static str,
        source: sled::Error,
    },
    /// The PostgreSQL store failed.
    #[error("database: {op} failed: {source}")]
    Database {
        op: &'static str,
        source: tokio_postgres::Error,
    },
    /// A value in the store does not decode: the store is damaged or was
    /// written by an incompatible version.
    #[error("store: corrupt {what}")]
    Corrupt { what: &'static str },
    /// Another writer moved a terminal's chain head between read and append
    /// (optimistic concurrency; the caller retries).
    #[error("store: chain head of the terminal moved during the append")]
    HeadMoved,
    /// A file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The PKI directory could not be loaded.
    #[error("PKI")]
    Pki(#[from] tapstack_certs::Error),
    /// The issuer master key (file or HSM) could not derive a wallet's
    /// cryptogram key.
    #[error("issuer master key")]
    IssuerKey { source: tapstack_certs::Error },
    /// A certificate, key or revocation list was refused.
    #[error("{what}: {source}")]
    Certificate {
        what: &'static str,
        source: tapstack_protocol::pki::CertError,
    },
    /// A file that must hold something decodable does not.
    #[error("{path}: malformed {what}")]
    Decode {
        path: PathBuf,
        what: &'static str,
        source: tapstack_protocol::DecodeError,
    },
    /// TLS configuration or handshake.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// An operation ran out of time.
    #[error("{what} timed out")]
    Timeout { what: &'static str },
    /// An argument out of its domain.
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// The upload client, its TLS or its wire types.
    #[error(transparent)]
    Upload(#[from] tapstack_upload::Error),
}

impl Error {
    pub(crate) fn store(op: &'static str) -> impl FnOnce(sled::Error) -> Error {
        move |source| Error::Store { op, source }
    }
}
