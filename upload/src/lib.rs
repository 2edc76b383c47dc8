//! # tapstack-upload
//!
//! How a terminal's queued records reach the host: the wire types of the
//! upload API ([`wire`]), the mutual-TLS HTTP client ([`client::HostClient`],
//! to a host name or an address), the client side of TLS ([`tls`]) and
//! bounded request bodies for tapstack's HTTP servers ([`http`]). The
//! terminal links this crate, not the host's server, store or ingest; the
//! host uses the same wire types and helpers.

pub mod client;
mod error;
pub mod http;
pub mod tls;
pub mod wire;

pub use error::Error;
