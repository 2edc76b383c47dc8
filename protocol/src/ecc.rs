//! P-256 scalar multiplication by the base point with a precomputed table,
//! and ECDSA signing/verification built on it.
//!
//! RustCrypto's `p256` 0.13 multiplies the generator like any other point
//! (256 doublings with a 4-bit window). Every key generation, signature and
//! verification in a tap multiplies the generator, so a fixed-base comb
//! (64 windows × 16 multiples, computed once, about 64 KiB) makes them 2–4×
//! cheaper. The arithmetic (field, scalar, complete point addition) is still
//! `p256`'s; this module only chooses which points to add:
//!
//! * [`mul_base`] is constant time: every window scans all 16 table entries
//!   with `conditional_assign` and always adds (identity included, with
//!   `p256`'s complete formulas).
//! * [`sign`] is RFC 6979 ECDSA exactly as the `ecdsa` crate computes it, so
//!   its signatures are bit-identical to `p256::ecdsa::SigningKey::sign`
//!   (the tests check that on random keys and messages).
//! * [`verify`] is the textbook check `x(u1·G + u2·Q) ≡ r`; only public data
//!   is involved.

use std::sync::OnceLock;

use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::group::Curve as _;
use p256::elliptic_curve::ops::Reduce;
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::subtle::{ConditionallySelectable, ConstantTimeEq};
use p256::elliptic_curve::{Curve, Field, FieldBytesEncoding, PrimeField};
use p256::{AffinePoint, FieldBytes, NistP256, ProjectivePoint, Scalar, U256};
use sha2::{Digest, Sha256};

const WINDOWS: usize = 64;

/// `TABLE[w][d] = d · 16^w · G`.
fn table() -> &'static [[AffinePoint; 16]] {
    static TABLE: OnceLock<Vec<[AffinePoint; 16]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut projective = Vec::with_capacity(WINDOWS * 16);
        let mut base = ProjectivePoint::GENERATOR;
        for _ in 0..WINDOWS {
            let mut acc = ProjectivePoint::IDENTITY;
            for _ in 0..16 {
                projective.push(acc);
                acc += base;
            }
            base = acc;
        }
        let mut affine = vec![AffinePoint::IDENTITY; projective.len()];
        ProjectivePoint::batch_normalize(&projective, &mut affine);
        affine
            .chunks_exact(16)
            .map(|c| {
                let mut row = [AffinePoint::IDENTITY; 16];
                row.copy_from_slice(c);
                row
            })
            .collect()
    })
}

/// `k · G`, in constant time.
pub(crate) fn mul_base(k: &Scalar) -> ProjectivePoint {
    let bytes = k.to_repr();
    let mut acc = ProjectivePoint::IDENTITY;
    for (w, row) in table().iter().enumerate() {
        let byte = bytes.get(31 - w / 2).copied().unwrap_or(0);
        let digit = if w % 2 == 0 { byte & 0x0F } else { byte >> 4 };
        let mut p = AffinePoint::IDENTITY;
        for (i, entry) in (0u8..).zip(row.iter()).skip(1) {
            p.conditional_assign(entry, digit.ct_eq(&i));
        }
        acc += p;
    }
    acc
}

fn reduce(bytes: &FieldBytes) -> Scalar {
    <Scalar as Reduce<U256>>::reduce_bytes(bytes)
}

/// ECDSA P-256/SHA-256 with an RFC 6979 nonce, as `p256` signs.
pub(crate) fn sign(key: &SigningKey, msg: &[u8]) -> Option<Signature> {
    let d: &Scalar = key.as_nonzero_scalar().as_ref();
    let z_bytes: FieldBytes = Sha256::digest(msg);
    let order = <U256 as FieldBytesEncoding<NistP256>>::encode_field_bytes(&NistP256::ORDER);
    let k_bytes = rfc6979::generate_k::<Sha256, _>(&d.to_repr(), &order, &z_bytes, &[]);
    let k = Option::<Scalar>::from(Scalar::from_repr(k_bytes))?;
    if bool::from(k.is_zero()) {
        return None;
    }
    let k_inv = Option::<Scalar>::from(k.invert())?;
    let big_r = mul_base(&k).to_affine();
    let r = reduce(&big_r.x());
    let s = k_inv * (reduce(&z_bytes) + r * d);
    Signature::from_scalars(r, s).ok()
}

/// Check an ECDSA P-256/SHA-256 signature.
pub(crate) fn verify(q: &AffinePoint, msg: &[u8], sig: &Signature) -> bool {
    let (r, s) = sig.split_scalars();
    let Some(s_inv) = Option::<Scalar>::from(s.as_ref().invert()) else {
        return false;
    };
    let z = reduce(&Sha256::digest(msg));
    let u1 = z * s_inv;
    let u2 = *r.as_ref() * s_inv;
    let big_r = (mul_base(&u1) + ProjectivePoint::from(*q) * u2).to_affine();
    if bool::from(big_r.is_identity()) {
        return false;
    }
    reduce(&big_r.x()) == *r.as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::{Signer, Verifier};
    use rand_core::{OsRng, RngCore};

    #[test]
    fn mul_base_matches_generic_multiplication() {
        let mut edge = vec![
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::from(16u64),
            Scalar::from(255u64),
        ];
        edge.extend((0..64).map(|_| Scalar::random(&mut OsRng)));
        for k in edge {
            assert_eq!(
                mul_base(&k).to_affine(),
                (ProjectivePoint::GENERATOR * k).to_affine()
            );
        }
    }

    #[test]
    fn signatures_are_identical_to_p256_and_cross_verify() {
        for _ in 0..64 {
            let key = SigningKey::random(&mut OsRng);
            let mut msg = vec![0u8; (OsRng.next_u32() % 100) as usize];
            OsRng.fill_bytes(&mut msg);
            let ours = sign(&key, &msg).unwrap();
            let theirs: Signature = key.sign(&msg);
            assert_eq!(ours, theirs);
            let q = key.verifying_key().as_affine();
            assert!(verify(q, &msg, &theirs));
            key.verifying_key().verify(&msg, &ours).unwrap();
            // Tampering: another message, another key, a changed signature.
            msg.push(1);
            assert!(!verify(q, &msg, &ours));
            let other = SigningKey::random(&mut OsRng);
            assert!(!verify(
                other.verifying_key().as_affine(),
                &msg[..msg.len() - 1],
                &ours
            ));
            let mut bytes = ours.to_bytes();
            bytes[5] ^= 0x10;
            if let Ok(bad) = Signature::from_slice(&bytes) {
                assert!(!verify(q, &msg[..msg.len() - 1], &bad));
            }
        }
    }
}
