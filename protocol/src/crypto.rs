//! Crypto suite v1, all RustCrypto:
//!
//! * ECDH P-256, ephemeral–ephemeral, points on the wire in compressed SEC1
//!   form (33 bytes);
//! * key derivation: NIST SP 800-108 counter mode with AES-CMAC as the PRF
//!   (AES-256-CMAC keyed with the 32-byte shared secret, AES-128-CMAC keyed
//!   with 16-byte keys), as SCP03 and EMV C-8 do;
//! * secure messaging: AES-128-CTR then AES-128-CMAC truncated to 8 bytes
//!   (encrypt-then-MAC) with a per-direction message counter;
//! * ECDSA P-256 with SHA-256, signatures as raw `r ‖ s` (64 bytes);
//! * the issuer cryptogram: AES-CMAC with a per-wallet key diversified from
//!   the issuer master key and a per-ATC session key.

use aes::{Aes128, Aes256};
use cmac::{Cmac, Mac};
use ctr::cipher::{KeyIvInit, StreamCipher};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Length of a compressed P-256 point.
pub const POINT_LEN: usize = 33;
/// Length of a raw ECDSA P-256 signature.
pub const SIG_LEN: usize = 64;
/// Length of the secure-messaging MAC.
pub const MAC_LEN: usize = 8;
/// Length of the issuer cryptogram.
pub const CRYPTOGRAM_LEN: usize = 8;

/// Errors of the crypto layer. Deliberately coarse: which check failed is
/// said by the caller, the crypto says only that it did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("not a valid P-256 public key")]
    BadPublicKey,
    #[error("malformed signature")]
    BadSignature,
    #[error("signature does not verify")]
    SignatureMismatch,
    /// `s` is in the upper half of the group order. ECDSA accepts both `s`
    /// and `n − s`; tapstack accepts only the low one, so a signed object
    /// has exactly one valid encoding (its hash, e.g. a record id, cannot be
    /// changed by a third party).
    #[error("signature is not in low-S form")]
    HighS,
    #[error("MAC does not verify")]
    MacMismatch,
    #[error("ciphertext shorter than its MAC")]
    ShortCiphertext,
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// An ephemeral ECDH key pair, one per tap; the secret is wiped on drop.
pub struct EphemeralKey {
    secret: p256::NonZeroScalar,
    public: [u8; POINT_LEN],
}

impl core::fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EphemeralKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl EphemeralKey {
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let secret = p256::NonZeroScalar::random(rng);
        let point = crate::ecc::mul_base(secret.as_ref()).to_affine();
        let public = p256::PublicKey::from_affine(point)
            .map(|p| compress(&p))
            .unwrap_or([0; POINT_LEN]);
        EphemeralKey { secret, public }
    }

    /// The compressed public point sent on the wire.
    pub fn public(&self) -> &[u8; POINT_LEN] {
        &self.public
    }

    /// ECDH with the peer's compressed point: the x-coordinate of the shared
    /// point (32 bytes).
    pub fn agree(&self, peer: &[u8]) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        let peer = parse_public(peer)?;
        let shared = p256::ecdh::diffie_hellman(self.secret, peer.as_affine());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(shared.raw_secret_bytes());
        Ok(out)
    }
}

impl Drop for EphemeralKey {
    fn drop(&mut self) {
        // Overwrites the scalar (with one, as it must stay non-zero).
        self.secret.zeroize();
    }
}

/// Compressed SEC1 encoding of a public key.
pub fn compress(key: &p256::PublicKey) -> [u8; POINT_LEN] {
    let point = key.to_encoded_point(true);
    let mut out = [0u8; POINT_LEN];
    out.copy_from_slice(point.as_bytes());
    out
}

/// Parse a compressed or uncompressed SEC1 P-256 point.
pub fn parse_public(bytes: &[u8]) -> Result<p256::PublicKey, CryptoError> {
    p256::PublicKey::from_sec1_bytes(bytes).map_err(|_| CryptoError::BadPublicKey)
}

/// Longest output [`kdf`] produces (255 blocks: the counter is one byte).
pub const KDF_MAX_OUT: usize = 255 * 16;

/// NIST SP 800-108 KDF in counter mode with AES-CMAC as the PRF:
/// `K(i) = CMAC(key, [i]₁ ‖ label ‖ 0x00 ‖ context ‖ [L]₂)`, `L` in bits.
/// The key is AES-128 (`[u8; 16]`) or AES-256 (`[u8; 32]`). Outputs longer
/// than [`KDF_MAX_OUT`] are not defined; only the first bytes are filled.
pub fn kdf<K: CmacKey + ?Sized>(key: &K, label: &[u8], context: &[u8], out: &mut [u8]) {
    let len = out.len().min(KDF_MAX_OUT);
    let bits = u16::try_from(len * 8).unwrap_or(u16::MAX).to_be_bytes();
    for (i, chunk) in out.chunks_mut(16).take(255).enumerate() {
        let counter = [u8::try_from(i + 1).unwrap_or(u8::MAX)];
        let block = key.cmac(&[&counter, label, &[0], context, &bits]);
        chunk.copy_from_slice(block.get(..chunk.len()).unwrap_or(&block));
    }
}

/// An AES-CMAC key: AES-128 or AES-256 by its type.
pub trait CmacKey {
    /// AES-CMAC over the concatenation of `parts`.
    fn cmac(&self, parts: &[&[u8]]) -> [u8; 16];
}

fn run_cmac<M: Mac + cmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let mut out = [0u8; 16];
    if let Ok(mut mac) = <M as cmac::digest::KeyInit>::new_from_slice(key) {
        for p in parts {
            mac.update(p);
        }
        out.copy_from_slice(&mac.finalize().into_bytes()[..16]);
    }
    out
}

impl CmacKey for [u8; 16] {
    fn cmac(&self, parts: &[&[u8]]) -> [u8; 16] {
        run_cmac::<Cmac<Aes128>>(self, parts)
    }
}

impl CmacKey for [u8; 32] {
    fn cmac(&self, parts: &[&[u8]]) -> [u8; 16] {
        run_cmac::<Cmac<Aes256>>(self, parts)
    }
}

/// AES-CMAC over the concatenation of `parts`.
pub fn cmac<K: CmacKey + ?Sized>(key: &K, parts: &[&[u8]]) -> [u8; 16] {
    key.cmac(parts)
}

/// Which side sent a secure-messaging frame; part of IV and MAC input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    TerminalToWallet = 0x01,
    WalletToTerminal = 0x02,
}

/// Session keys derived from the ECDH secret and the transcript hash.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct SessionKeys {
    enc: [u8; 16],
    mac: [u8; 16],
}

impl core::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

/// KDF label for the session keys.
pub const LABEL_SESSION: &[u8] = b"tapstack/v1 session";

impl SessionKeys {
    /// `K_enc ‖ K_mac = KDF(Z, "tapstack/v1 session", TH1)`.
    pub fn derive(shared: &[u8; 32], th1: &[u8; 32]) -> Self {
        let mut okm = Zeroizing::new([0u8; 32]);
        kdf(shared, LABEL_SESSION, th1, okm.as_mut());
        let mut keys = SessionKeys {
            enc: [0; 16],
            mac: [0; 16],
        };
        keys.enc.copy_from_slice(&okm[..16]);
        keys.mac.copy_from_slice(&okm[16..]);
        keys
    }

    fn iv(dir: Direction, counter: u32) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[0] = dir as u8;
        iv[8..12].copy_from_slice(&counter.to_be_bytes());
        iv
    }

    fn mac_of(&self, dir: Direction, counter: u32, header: &[u8], ct: &[u8]) -> [u8; MAC_LEN] {
        let full = cmac(
            &self.mac,
            &[&[dir as u8], &counter.to_be_bytes(), header, ct],
        );
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Encrypt-then-MAC `plaintext`; `header` (the APDU's INS, say) is
    /// authenticated, not encrypted.
    pub fn seal(&self, dir: Direction, counter: u32, header: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut buf = plaintext.to_vec();
        let mut cipher =
            ctr::Ctr128BE::<Aes128>::new(&self.enc.into(), &Self::iv(dir, counter).into());
        cipher.apply_keystream(&mut buf);
        let mac = self.mac_of(dir, counter, header, &buf);
        buf.extend_from_slice(&mac);
        buf
    }

    /// Check the MAC in constant time, then decrypt.
    pub fn open(
        &self,
        dir: Direction,
        counter: u32,
        header: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let split = sealed
            .len()
            .checked_sub(MAC_LEN)
            .ok_or(CryptoError::ShortCiphertext)?;
        let (ct, mac) = sealed.split_at(split);
        let expect = self.mac_of(dir, counter, header, ct);
        if !bool::from(expect.ct_eq(mac)) {
            return Err(CryptoError::MacMismatch);
        }
        let mut buf = Zeroizing::new(ct.to_vec());
        let mut cipher =
            ctr::Ctr128BE::<Aes128>::new(&self.enc.into(), &Self::iv(dir, counter).into());
        cipher.apply_keystream(buf.as_mut_slice());
        Ok(buf)
    }
}

/// Whether `s` is in the lower half of the group order: the only form
/// tapstack signs and accepts.
pub fn is_low_s(sig: &Signature) -> bool {
    sig.normalize_s().is_none()
}

/// The low-S twin of `sig` (`s → n − s` when `s > n/2`, with `p256`'s own
/// scalar negation); a low-S signature is returned as it is.
pub fn normalize_s(sig: Signature) -> Signature {
    sig.normalize_s().unwrap_or(sig)
}

/// ECDSA P-256/SHA-256 over `msg` (RFC 6979 nonce), raw `r ‖ s`, low-S.
pub fn sign(key: &SigningKey, msg: &[u8]) -> [u8; SIG_LEN] {
    // The table-based signer gives the same bytes as `p256`'s; it can only
    // fail for a nonce of zero, where `p256`'s own retry logic takes over.
    let sig: Signature = crate::ecc::sign(key, msg).unwrap_or_else(|| key.sign(msg));
    let sig = normalize_s(sig);
    let mut out = [0u8; SIG_LEN];
    out.copy_from_slice(&sig.to_bytes());
    out
}

/// The ECDSA P-256/SHA-256 check every verification in this crate goes
/// through. The protocol's own logic (certificate paths, transcripts,
/// records) takes one, so a host can plug a faster backend (ring, for bulk
/// ingest) into the very same checks instead of re-implementing them.
pub trait SignatureVerifier: Sync {
    /// Whether `sig` (already parsed, `r` and `s` in range) signs `msg`.
    /// Implementations answer `false` for a high-S signature ([`is_low_s`]);
    /// [`verify_with`] refuses those before asking, with
    /// [`CryptoError::HighS`].
    fn verify_signature(&self, key: &VerifyingKey, msg: &[u8], sig: &Signature) -> bool;
}

/// RustCrypto's `p256`, with the fixed-base table of [`crate::ecc`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RustCrypto;

impl SignatureVerifier for RustCrypto {
    fn verify_signature(&self, key: &VerifyingKey, msg: &[u8], sig: &Signature) -> bool {
        is_low_s(sig) && crate::ecc::verify(key.as_affine(), msg, sig)
    }
}

/// Verify a raw `r ‖ s` ECDSA P-256/SHA-256 signature over `msg`.
pub fn verify(key: &VerifyingKey, msg: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
    verify_with(&RustCrypto, key, msg, sig)
}

/// [`verify`] with another backend. A high-S signature is refused
/// ([`CryptoError::HighS`]) whether or not it would verify.
pub fn verify_with(
    v: &dyn SignatureVerifier,
    key: &VerifyingKey,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), CryptoError> {
    let sig = Signature::from_slice(sig).map_err(|_| CryptoError::BadSignature)?;
    if !is_low_s(&sig) {
        return Err(CryptoError::HighS);
    }
    if v.verify_signature(key, msg, &sig) {
        Ok(())
    } else {
        Err(CryptoError::SignatureMismatch)
    }
}

/// An issuer master key (AES-128), held by the host in the development setup.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct IssuerMasterKey(pub [u8; 16]);

/// A wallet's cryptogram key, diversified from the issuer master key.
#[derive(Clone, Zeroize)]
#[zeroize(drop)]
pub struct WalletCryptogramKey(pub [u8; 16]);

impl core::fmt::Debug for IssuerMasterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("IssuerMasterKey(..)")
    }
}
impl core::fmt::Debug for WalletCryptogramKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("WalletCryptogramKey(..)")
    }
}

/// KDF labels of the cryptogram key hierarchy.
pub const LABEL_WALLET_KEY: &[u8] = b"tapstack/v1 wallet key";
pub const LABEL_ATC_KEY: &[u8] = b"tapstack/v1 atc key";
pub const LABEL_CRYPTOGRAM: &[u8] = b"tapstack/v1 cryptogram";

impl IssuerMasterKey {
    /// `K_w = KDF(IMK, "tapstack/v1 wallet key", wallet id)` — the wallet id
    /// is the wallet certificate's serial number.
    pub fn diversify(&self, wallet_id: &[u8]) -> WalletCryptogramKey {
        let mut k = [0u8; 16];
        kdf(&self.0, LABEL_WALLET_KEY, wallet_id, &mut k);
        WalletCryptogramKey(k)
    }
}

impl WalletCryptogramKey {
    /// `SK = KDF(K_w, "tapstack/v1 atc key", ATC)`, then
    /// `AC = CMAC(SK, "tapstack/v1 cryptogram" ‖ TH1 ‖ ATC ‖ CVM)[..8]`.
    pub fn cryptogram(&self, atc: u32, th1: &[u8; 32], cvm: u8) -> [u8; CRYPTOGRAM_LEN] {
        let mut sk = Zeroizing::new([0u8; 16]);
        kdf(&self.0, LABEL_ATC_KEY, &atc.to_be_bytes(), sk.as_mut());
        let full = cmac(&*sk, &[LABEL_CRYPTOGRAM, th1, &atc.to_be_bytes(), &[cvm]]);
        let mut out = [0u8; CRYPTOGRAM_LEN];
        out.copy_from_slice(&full[..CRYPTOGRAM_LEN]);
        out
    }

    /// Constant-time check of a received cryptogram.
    pub fn check(&self, atc: u32, th1: &[u8; 32], cvm: u8, got: &[u8]) -> bool {
        bool::from(self.cryptogram(atc, th1, cvm).ct_eq(got))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// RFC 4493 §4 / NIST SP 800-38B D.1 (AES-128) test vectors.
    #[test]
    fn aes128_cmac_rfc4493() {
        let key: [u8; 16] = h("2b7e1516 28aed2a6 abf71588 09cf4f3c").try_into().unwrap();
        let msg = h("6bc1bee2 2e409f96 e93d7e11 7393172a ae2d8a57 1e03ac9c 9eb76fac 45af8e51 30c81c46 a35ce411 e5fbc119 1a0a52ef f69f2445 df4f9b17 ad2b417b e66c3710");
        let cases = [
            (0, "bb1d6929 e9593728 7fa37d12 9b756746"),
            (16, "070a16b4 6b4d4144 f79bdd9d d04a287c"),
            (40, "dfa66747 de9ae630 30ca3261 1497c827"),
            (64, "51f0bebf 7e3b9d92 fc497417 79363cfe"),
        ];
        for (n, tag) in cases {
            assert_eq!(cmac(&key, &[&msg[..n]]).to_vec(), h(tag), "len {n}");
        }
        // Split input gives the same tag.
        assert_eq!(
            cmac(&key, &[&msg[..7], &msg[7..40]]).to_vec(),
            h(cases[2].1)
        );
    }

    /// NIST SP 800-38B D.3 (AES-256) vectors.
    #[test]
    fn aes256_cmac_sp800_38b() {
        let key: [u8; 32] =
            h("603deb10 15ca71be 2b73aef0 857d7781 1f352c07 3b6108d7 2d9810a3 0914dff4")
                .try_into()
                .unwrap();
        let msg = h("6bc1bee2 2e409f96 e93d7e11 7393172a ae2d8a57 1e03ac9c 9eb76fac 45af8e51 30c81c46 a35ce411");
        assert_eq!(
            cmac(&key, &[]).to_vec(),
            h("028962f6 1b7bf89e fc6b551f 4667d983")
        );
        assert_eq!(
            cmac(&key, &[&msg[..16]]).to_vec(),
            h("28a7023f 452e8f82 bd4bf28d 8c37c35c")
        );
        assert_eq!(
            cmac(&key, &[&msg[..40]]).to_vec(),
            h("aaf3d8f1 de5640c2 32f5b169 b9c911e6")
        );
    }

    #[test]
    fn kdf_is_counter_mode_over_cmac() {
        let key = [7u8; 16];
        let mut out = [0u8; 32];
        kdf(&key, b"L", b"C", &mut out);
        let first = cmac(&key, &[&[1], b"L", &[0], b"C", &[0x01, 0x00]]);
        let second = cmac(&key, &[&[2], b"L", &[0], b"C", &[0x01, 0x00]]);
        assert_eq!(&out[..16], &first);
        assert_eq!(&out[16..], &second);
        let mut other = [0u8; 32];
        kdf(&key, b"L", b"D", &mut other);
        assert_ne!(out, other);
    }

    #[test]
    fn ecdh_agrees_and_sm_roundtrips() {
        let mut rng = rand_core::OsRng;
        let a = EphemeralKey::generate(&mut rng);
        let b = EphemeralKey::generate(&mut rng);
        let za = a.agree(b.public()).unwrap();
        let zb = b.agree(a.public()).unwrap();
        assert_eq!(*za, *zb);
        let th = [9u8; 32];
        let ka = SessionKeys::derive(&za, &th);
        let kb = SessionKeys::derive(&zb, &th);
        let sealed = ka.seal(Direction::WalletToTerminal, 0, &[0x50], b"hello wallet");
        assert_eq!(
            kb.open(Direction::WalletToTerminal, 0, &[0x50], &sealed)
                .unwrap()
                .as_slice(),
            b"hello wallet"
        );
        // wrong counter, direction, header, or any flipped bit fails
        assert!(kb
            .open(Direction::WalletToTerminal, 1, &[0x50], &sealed)
            .is_err());
        assert!(kb
            .open(Direction::TerminalToWallet, 0, &[0x50], &sealed)
            .is_err());
        assert!(kb
            .open(Direction::WalletToTerminal, 0, &[0x52], &sealed)
            .is_err());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                kb.open(Direction::WalletToTerminal, 0, &[0x50], &bad)
                    .unwrap_err(),
                CryptoError::MacMismatch
            );
        }
        assert_eq!(
            kb.open(Direction::WalletToTerminal, 0, &[], &[1, 2])
                .unwrap_err(),
            CryptoError::ShortCiphertext
        );
        assert_eq!(a.agree(&[0x07; 33]).unwrap_err(), CryptoError::BadPublicKey);
        let mut beyond_p = [0xFF; 33];
        beyond_p[0] = 0x02;
        assert_eq!(a.agree(&beyond_p).unwrap_err(), CryptoError::BadPublicKey);
        assert_eq!(a.agree(&[0x04; 10]).unwrap_err(), CryptoError::BadPublicKey);
    }

    #[test]
    fn signatures_verify_and_reject() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let sig = sign(&key, b"transcript");
        verify(key.verifying_key(), b"transcript", &sig).unwrap();
        assert_eq!(
            verify(key.verifying_key(), b"transcripT", &sig).unwrap_err(),
            CryptoError::SignatureMismatch
        );
        assert_eq!(
            verify(key.verifying_key(), b"transcript", &sig[..63]).unwrap_err(),
            CryptoError::BadSignature
        );
    }

    #[test]
    fn signatures_are_low_s_and_high_s_twins_are_refused() {
        let mut saw_p256_high = false;
        for i in 0..64u32 {
            let key = SigningKey::random(&mut rand_core::OsRng);
            let msg = i.to_be_bytes();
            let plain: Signature = key.sign(&msg);
            saw_p256_high |= !is_low_s(&plain);
            let sig = sign(&key, &msg);
            assert!(is_low_s(&Signature::from_slice(&sig).unwrap()));
            verify(key.verifying_key(), &msg, &sig).unwrap();
            let high = crate::testkit::s_twin(&sig).unwrap();
            assert_ne!(high, sig);
            // The twin is a valid ECDSA signature: p256 itself accepts it...
            let high_sig = Signature::from_slice(&high).unwrap();
            assert!(!is_low_s(&high_sig));
            assert!(crate::ecc::verify(
                key.verifying_key().as_affine(),
                &msg,
                &high_sig
            ));
            // ...tapstack does not, with the typed error, on every backend.
            assert_eq!(
                verify(key.verifying_key(), &msg, &high).unwrap_err(),
                CryptoError::HighS
            );
            assert!(!RustCrypto.verify_signature(key.verifying_key(), &msg, &high_sig));
            assert_eq!(normalize_s(high_sig).to_bytes().as_slice(), &sig);
        }
        // p256 alone signs high-S about half the time: normalizing matters.
        assert!(saw_p256_high);
    }

    #[test]
    fn cryptogram_binds_every_input() {
        let imk = IssuerMasterKey([3; 16]);
        let kw = imk.diversify(b"wallet-1");
        let th = [1u8; 32];
        let ac = kw.cryptogram(5, &th, 0);
        assert!(kw.check(5, &th, 0, &ac));
        assert!(!kw.check(6, &th, 0, &ac));
        assert!(!kw.check(5, &[2; 32], 0, &ac));
        assert!(!kw.check(5, &th, 1, &ac));
        assert!(!imk.diversify(b"wallet-2").check(5, &th, 0, &ac));
    }
}
