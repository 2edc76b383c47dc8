//! Shared helpers of the fuzz targets.

use std::sync::OnceLock;

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use tapstack_protocol::codec::Codec;
use tapstack_protocol::testkit::Pki;

/// Decode; whatever decodes must re-encode to exactly the input.
pub fn roundtrip<T: Codec>(data: &[u8]) {
    if let Ok(v) = T::decode(data) {
        assert_eq!(v.to_bytes(), data, "decode/encode is not canonical");
    }
}

/// A deterministic RNG (SHA-256 in counter mode) so runs reproduce.
pub struct DetRng {
    seed: [u8; 32],
    counter: u64,
}

impl DetRng {
    pub fn new(seed: &[u8]) -> Self {
        DetRng { seed: Sha256::digest(seed).into(), counter: 0 }
    }
}

impl RngCore for DetRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            self.counter += 1;
            let block = Sha256::new().chain_update(self.seed).chain_update(self.counter.to_le_bytes()).finalize();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for DetRng {}

/// One development PKI for all runs of a target.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::generate(&mut DetRng::new(b"tapstack fuzz pki")))
}

/// Split fuzz input into chunks: each chunk is a 1-byte length then bytes.
pub fn chunks(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&n, rest)) = data.split_first() {
        let n = usize::from(n).min(rest.len());
        let (chunk, rest) = rest.split_at(n);
        out.push(chunk);
        data = rest;
        if out.len() >= 32 {
            break;
        }
    }
    out
}
