//! The host's signature backend: *ring* (the provider rustls already
//! brings), plugged into the protocol crate's own checks through
//! [`tapstack_protocol::crypto::SignatureVerifier`].
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
//!
//! The backend itself lives in the protocol crate ([`tapstack_protocol::crypto::Ring`],
//! the seam the terminal uses too); this module names it for the host.

pub use tapstack_protocol::crypto::Ring;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use p256::ecdsa::Signature;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
    use tapstack_protocol::crypto::{sign, verify_with, CryptoError, SignatureVerifier};
    use tapstack_protocol::testkit::s_twin;

    #[test]
    fn ring_refuses_the_high_s_twin_it_would_otherwise_accept() {
        for i in 0..32u32 {
            let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
            let msg = i.to_be_bytes();
            let sig = sign(&key, &msg);
            let twin = s_twin(&sig).unwrap();
            let vk = key.verifying_key();
            let low = Signature::from_slice(&sig).unwrap();
            let high = Signature::from_slice(&twin).unwrap();
            assert!(Ring.verify_signature(vk, &msg, &low));
            assert!(!Ring.verify_signature(vk, &msg, &high));
            // ring's own primitive accepts both forms: the check is ours.
            let point = vk.to_encoded_point(false);
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point.as_bytes())
                .verify(&msg, &twin)
                .unwrap();
            assert_eq!(
                verify_with(&Ring, vk, &msg, &twin).unwrap_err(),
                CryptoError::HighS
            );
        }
    }
}
