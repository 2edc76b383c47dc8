//! The upload crate's one error type.

use std::path::PathBuf;

/// What can go wrong talking to the host (the terminal's side of it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed (or a host name did not resolve): what,
    /// with whom, and the cause (the OS error, the TLS alert).
    #[error("{op} {endpoint} failed: {source}")]
    Net {
        op: &'static str,
        endpoint: String,
        source: std::io::Error,
    },
    /// The PKI files (a key with loose permissions, a TLS server
    /// certificate) could not be used.
    #[error("PKI")]
    Pki(#[from] tapstack_certs::Error),
    /// TLS configuration or handshake.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A PEM file with no usable certificate or key.
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: &'static str },
    /// A key that cannot be used as a TLS key.
    #[error("TLS key: {what}")]
    Key { what: &'static str },
    /// HTTP protocol error.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The host answered with an error status.
    #[error("host answered {status}: {code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// A response body that is not what the API says.
    #[error("bad {what} body: {reason}")]
    BadBody { what: &'static str, reason: String },
    /// An operation ran out of time.
    #[error("{what} timed out")]
    Timeout { what: &'static str },
    /// An argument out of its domain.
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}
