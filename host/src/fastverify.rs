//! The host's signature backend: *ring* (the provider rustls already
//! brings), plugged into the protocol crate's own checks through
//! [`SignatureVerifier`].
//!
//! Why: a pay record needs four signature verifications (terminal over the
//! record, terminal over TH1, wallet over TH2, issuer over the wallet
//! certificate). ring verifies P-256 several times faster than RustCrypto's
//! `p256` here, and host ingest is bounded by signature checks (DESIGN §8:
//! ≥ 70 % of `openssl speed ecdsap256` ÷ signatures per record).
//!
//! Only the primitive differs: decoding, transcript hashes, certificate
//! paths, scenario rules and every error are the protocol crate's
//! ([`tapstack_protocol::record::verify_contents`]). `tests/verify_equivalence.rs`
//! runs both backends on valid and mutated records and requires identical
//! results; `tap-host serve --verifier reference` runs on RustCrypto alone.

use p256::ecdsa::{Signature, VerifyingKey};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use tapstack_protocol::crypto::SignatureVerifier;

/// ECDSA P-256/SHA-256 with ring.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ring;

impl SignatureVerifier for Ring {
    fn verify_signature(&self, key: &VerifyingKey, msg: &[u8], sig: &Signature) -> bool {
        let point = key.to_encoded_point(false);
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point.as_bytes())
            .verify(msg, &sig.to_bytes())
            .is_ok()
    }
}
