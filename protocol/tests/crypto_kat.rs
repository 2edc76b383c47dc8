#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: fail loudly
//! Known-answer and cross-backend tests for the crypto seam
//! (`crypto::Backend`): RustCrypto (the reference) and ring.
//!
//! Sources of the vectors, copied literally:
//! * NIST CAVP "186-3 ECDSA Test Vectors" (`186-3ecdsatestvectors.zip`),
//!   `SigVer.rsp` section `[P-256,SHA-256]`, a `Result = P` case, and
//!   `SigGen.txt` section `[P-256,SHA-256]`, first record;
//! * RFC 6979 appendix A.2.5 (P-256, SHA-256, messages "sample" and "test");
//! * NIST CAVP "ECC CDH Primitive" (SP 800-56A, `KAS_ECC_CDH_PrimitiveTest.txt`),
//!   `[P-256]` COUNT = 0.
//!
//! The invalid cases are Wycheproof-style mutations of those vectors (flipped
//! message bit, r or s zero or ≥ n, r and s swapped, another key, the high-S
//! twin).

use p256::ecdsa::{SigningKey, VerifyingKey};
use tapstack_protocol::crypto::{
    self, sign, verify_with, Backend, CryptoError, EphemeralKey, Ring, RustCrypto,
};
use tapstack_protocol::testkit::s_twin;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

fn key(qx: &str, qy: &str) -> VerifyingKey {
    let mut sec1 = vec![0x04];
    sec1.extend(h(qx));
    sec1.extend(h(qy));
    VerifyingKey::from_sec1_bytes(&sec1).unwrap()
}

fn backends() -> [&'static dyn Backend; 2] {
    [&RustCrypto, &Ring]
}

struct Vector {
    name: &'static str,
    msg: Vec<u8>,
    key: VerifyingKey,
    sig: Vec<u8>,
}

fn nist_sigver() -> Vector {
    Vector {
        name: "CAVP SigVer P-256/SHA-256 (Result = P)",
        msg: h(
            "e1130af6a38ccb412a9c8d13e15dbfc9e69a16385af3c3f1e5da954fd5e7c45f
                d75e2b8c36699228e92840c0562fbf3772f07e17f1add56588dd45f7450e1217
                ad239922dd9c32695dc71ff2424ca0dec1321aa47064a044b7fe3c2b97d03ce4
                70a592304c5ef21eed9f93da56bb232d1eeb0035f9bf0dfafdcc4606272b20a3",
        ),
        key: key(
            "e424dc61d4bb3cb7ef4344a7f8957a0c5134e16f7a67c074f82e6e12f49abf3c",
            "970eed7aa2bc48651545949de1dddaf0127e5965ac85d1243d6f60e7dfaee927",
        ),
        sig: h(
            "bf96b99aa49c705c910be33142017c642ff540c76349b9dab72f981fd9347f4f
                17c55095819089c2e03b9cd415abdf12444e323075d98f31920b9e0f57ec871c",
        ),
    }
}

fn nist_siggen_high_s() -> Vector {
    Vector {
        name: "CAVP SigGen P-256/SHA-256 record 0 (high S)",
        msg: h(
            "5905238877c77421f73e43ee3da6f2d9e2ccad5fc942dcec0cbd25482935faaf
                416983fe165b1a045ee2bcd2e6dca3bdf46c4310a7461f9a37960ca672d3feb5
                473e253605fb1ddfd28065b53cb5858a8ad28175bf9bd386a5e471ea7a65c17c
                c934a9d791e91491eb3754d03799790fe2d308d16146d5c9b0d0debd97d79ce8",
        ),
        key: key(
            "1ccbe91c075fc7f4f033bfa248db8fccd3565de94bbfb12f3c59ff46c271bf83",
            "ce4014c68811f9a21a1fdb2c0e6113e06db7ca93b7404e78dc7ccd5ca89a4ca9",
        ),
        sig: h(
            "f3ac8061b514795b8843e3d6629527ed2afd6b1f6a555a7acabb5e6f79c8c2ac
                8bf77819ca05a6b2786c76262bf7371cef97b218e96f175a3ccdda2acc058903",
        ),
    }
}

const RFC6979_X: &str = "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721";

fn rfc6979_key() -> VerifyingKey {
    key(
        "60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6",
        "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299",
    )
}

fn rfc6979_test() -> Vector {
    Vector {
        name: "RFC 6979 A.2.5 \"test\" (low S)",
        msg: b"test".to_vec(),
        key: rfc6979_key(),
        sig: h(
            "f1abb023518351cd71d881567b1ea663ed3efcf6c5132b354f28d3b0b7d38367
                019f4113742a2b14bd25926b49c649155f267e60d3814b4c0cc84250e46f0083",
        ),
    }
}

fn rfc6979_sample_high_s() -> Vector {
    Vector {
        name: "RFC 6979 A.2.5 \"sample\" (high S)",
        msg: b"sample".to_vec(),
        key: rfc6979_key(),
        sig: h(
            "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716
                f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8",
        ),
    }
}

const ORDER: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";

#[test]
fn ecdsa_verify_known_answers_low_s_accepted_high_s_refused() {
    for b in backends() {
        for v in [nist_sigver(), rfc6979_test()] {
            verify_with(b.verifier(), &v.key, &v.msg, &v.sig)
                .unwrap_or_else(|e| panic!("{} on {}: {e}", v.name, b.name()));
        }
        for v in [nist_siggen_high_s(), rfc6979_sample_high_s()] {
            // Valid ECDSA, but high S: refused with the typed error ...
            assert_eq!(
                verify_with(b.verifier(), &v.key, &v.msg, &v.sig).unwrap_err(),
                CryptoError::HighS,
                "{} on {}",
                v.name,
                b.name()
            );
            let parsed = p256::ecdsa::Signature::from_slice(&v.sig).unwrap();
            assert!(!b.verify_signature(&v.key, &v.msg, &parsed));
            // ... and its low-S twin verifies.
            let low = s_twin(&v.sig).unwrap();
            verify_with(b.verifier(), &v.key, &v.msg, &low)
                .unwrap_or_else(|e| panic!("{} twin on {}: {e}", v.name, b.name()));
        }
    }
    // The RFC's "sample" signature normalised, as an independent source
    // prints it (n − s).
    assert_eq!(
        s_twin(&rfc6979_sample_high_s().sig).unwrap()[32..].to_vec(),
        h("0834e36ad29a83bf2bc9385e491d6099c8fdf9d1ed67aa7ea5f51f93782857a9")
    );
}

#[test]
fn ecdsa_verify_refuses_invalid_vectors() {
    let n = h(ORDER);
    for b in backends() {
        for v in [nist_sigver(), rfc6979_test()] {
            let (r, s) = v.sig.split_at(32);
            let mut flipped = v.msg.clone();
            flipped[0] ^= 0x01;
            let mismatches: Vec<(&str, Vec<u8>, Vec<u8>, &VerifyingKey)> = vec![
                ("message bit flipped", flipped, v.sig.clone(), &v.key),
                (
                    "message truncated",
                    v.msg[1..].to_vec(),
                    v.sig.clone(),
                    &v.key,
                ),
                ("r and s swapped", v.msg.clone(), [s, r].concat(), &v.key),
                (
                    "r + 1",
                    v.msg.clone(),
                    {
                        let mut x = v.sig.clone();
                        x[31] ^= 0x01;
                        x
                    },
                    &v.key,
                ),
            ];
            let other = nist_siggen_high_s().key;
            for (what, msg, sig, key) in mismatches.into_iter().chain([(
                "another key",
                v.msg.clone(),
                v.sig.clone(),
                &other,
            )]) {
                let got = verify_with(b.verifier(), key, &msg, &sig).unwrap_err();
                assert!(
                    matches!(got, CryptoError::SignatureMismatch | CryptoError::HighS),
                    "{} / {what} on {}: {got:?}",
                    v.name,
                    b.name()
                );
            }
            let malformed: [(&str, Vec<u8>); 6] = [
                ("r = 0", [&[0u8; 32][..], s].concat()),
                ("s = 0", [r, &[0u8; 32][..]].concat()),
                ("r = n", [&n[..], s].concat()),
                ("s = n", [r, &n[..]].concat()),
                ("63 bytes", v.sig[..63].to_vec()),
                ("65 bytes", [&v.sig[..], &[0][..]].concat()),
            ];
            for (what, sig) in malformed {
                assert_eq!(
                    verify_with(b.verifier(), &v.key, &v.msg, &sig).unwrap_err(),
                    CryptoError::BadSignature,
                    "{} / {what} on {}",
                    v.name,
                    b.name()
                );
            }
        }
    }
}

#[test]
fn rfc6979_signing_known_answers_after_low_s_normalisation() {
    let sk = SigningKey::from_slice(&h(RFC6979_X)).unwrap();
    assert_eq!(sk.verifying_key(), &rfc6979_key());
    // "test" has a low S: the bytes are the RFC's.
    assert_eq!(sign(&sk, b"test").to_vec(), rfc6979_test().sig);
    // "sample" has a high S: tapstack signs its low twin.
    assert_eq!(
        sign(&sk, b"sample").to_vec(),
        s_twin(&rfc6979_sample_high_s().sig).unwrap().to_vec()
    );
    // RustCrypto's key pair (the backend seam) signs the same bytes.
    let pair = RustCrypto.key_pair(&sk).unwrap();
    assert_eq!(sign(&pair, b"sample"), sign(&sk, b"sample"));
}

#[test]
fn ecdh_known_answer_and_ring_agrees_with_p256() {
    let d = h("7d7dc5f71eb29ddaf80d6214632eeae03d9058af1fb6d22ed80badb62bc1a534");
    let q_cavs = {
        let mut p = vec![0x04];
        p.extend(h(
            "700c48f77f56584c5cc632ca65640db91b6bacce3a4df6b42ce7cc838833d287",
        ));
        p.extend(h(
            "db71e509e3fd9b060ddb20ba5c51dcc5948d46fbf640dfe0441782cab85fa4ac",
        ));
        p
    };
    let z = h("46fc62106420ff012e54a434fbdd2d25ccc5852060561e68040dd7778997bd7b");
    let iut = EphemeralKey::from_secret_bytes(&d.clone().try_into().unwrap()).unwrap();
    // Q_IUT from the vector, compressed.
    let q_iut = crypto::compress(
        &p256::PublicKey::from_sec1_bytes(
            &[
                &[0x04][..],
                &h("ead218590119e8876b29146ff89ca61770c4edbbf97d38ce385ed281d8a6b230"),
                &h("28af61281fd35e2fa7002523acc85a429cb06ee6648325389f59edfce1405141"),
            ]
            .concat(),
        )
        .unwrap(),
    );
    assert_eq!(iut.public(), &q_iut);
    assert_eq!(iut.agree(&q_cavs).unwrap().to_vec(), z);
    // The same peer point compressed gives the same secret.
    let compressed = crypto::compress(&crypto::parse_public(&q_cavs).unwrap());
    assert_eq!(iut.agree(&compressed).unwrap().to_vec(), z);

    // ring (which cannot import a fixed ECDH scalar) against the KAT key and
    // against fresh p256 keys, both directions.
    for _ in 0..16 {
        let ring_key = Ring.ephemeral(&mut rand_core::OsRng).unwrap();
        let z_p256 = iut.agree(ring_key.public()).unwrap();
        let z_ring = ring_key.agree(iut.public()).unwrap();
        assert_eq!(*z_p256, *z_ring);
        // A ring key agrees once.
        assert_eq!(
            ring_key.agree(iut.public()).unwrap_err(),
            CryptoError::KeyUsed
        );
        let p = EphemeralKey::generate(&mut rand_core::OsRng);
        let r = Ring.ephemeral(&mut rand_core::OsRng).unwrap();
        assert_eq!(*p.agree(r.public()).unwrap(), *r.agree(p.public()).unwrap());
    }
    // Bad peer points are refused by both backends before any arithmetic.
    let mut off_curve = q_cavs.clone();
    off_curve[64] ^= 1;
    let mut beyond_p = [0xFF; 33];
    beyond_p[0] = 0x02;
    for b in backends() {
        for bad in [&off_curve[..], &beyond_p[..], &[0x04; 10][..], &[][..]] {
            let k = b.ephemeral(&mut rand_core::OsRng).unwrap();
            assert_eq!(k.agree(bad).unwrap_err(), CryptoError::BadPublicKey);
        }
    }
}

#[test]
fn ring_and_p256_signatures_cross_verify_and_are_low_s() {
    for i in 0..48u32 {
        let sk = SigningKey::random(&mut rand_core::OsRng);
        let vk = sk.verifying_key();
        let msg = i.to_be_bytes();
        let by_ring = sign(&Ring.key_pair(&sk).unwrap(), &msg);
        let by_p256 = sign(&RustCrypto.key_pair(&sk).unwrap(), &msg);
        for sig in [by_ring, by_p256] {
            assert!(crypto::is_low_s(
                &p256::ecdsa::Signature::from_slice(&sig).unwrap()
            ));
            for b in backends() {
                verify_with(b.verifier(), vk, &msg, &sig).unwrap();
                verify_with(b.verifier(), vk, &(i + 1).to_be_bytes(), &sig).unwrap_err();
                // The high-S twin: valid ECDSA, refused by both.
                let twin = s_twin(&sig).unwrap();
                assert_eq!(
                    verify_with(b.verifier(), vk, &msg, &twin).unwrap_err(),
                    CryptoError::HighS
                );
            }
        }
        // ring signs with a random nonce; RustCrypto deterministically.
        assert_eq!(by_p256, sign(&sk, &msg));
        assert_eq!(Ring.key_pair(&sk).unwrap().verifying_key(), vk);
        assert_eq!(Ring.key_pair(&sk).unwrap().backend_name(), "ring");
    }
}

#[test]
fn secrets_are_not_printed() {
    let sk = SigningKey::random(&mut rand_core::OsRng);
    let secret_hex = hex::encode(sk.to_bytes());
    for b in backends() {
        let pair = b.key_pair(&sk).unwrap();
        let eph = b.ephemeral(&mut rand_core::OsRng).unwrap();
        let shown = format!("{pair:?} {eph:?}");
        assert!(!shown.contains(&secret_hex), "{shown}");
        assert!(shown.contains("public"));
    }
}

#[test]
fn a_tap_on_the_ring_terminal_verifies_under_the_reference() {
    use tapstack_protocol::record::{verify_record, TransactionRecord};
    use tapstack_protocol::scenario::{Amount, Currency, Scenario};
    use tapstack_protocol::terminal::{TapParams, TerminalContext};
    use tapstack_protocol::testkit::Pki;
    let mut rng = rand_core::OsRng;
    let pki = Pki::generate(&mut rng);
    let mut terminal = TerminalContext::with_backend(
        pki.terminal.cert.clone(),
        &pki.terminal.key,
        pki.terminal_trust(),
        &Ring,
    )
    .unwrap();
    assert_eq!(terminal.backend().name(), "ring");
    let mut wallet = pki.wallet_context();
    let pay = Scenario::Pay {
        amount: Amount::parse("12.50", Currency::new("CNY").unwrap()).unwrap(),
    };
    for _ in 0..2 {
        let tap = pki.run_tap(
            &mut terminal,
            &mut wallet,
            TapParams {
                scenario: pay.clone(),
                cvm_limit: 5000,
                send_certificate: true,
            },
            &mut rng,
        );
        let outcome = tap.outcome.expect("approved");
        // The wallet (RustCrypto) accepted ring's TH1 signature; the host's
        // reference check accepts ring's record signature.
        let record = TransactionRecord::new(
            &outcome,
            &pki.terminal.cert,
            terminal.signing_key(),
            1,
            [0; 32],
            pki.now,
            None,
            None,
        );
        verify_record(&record, &pki.terminal.cert, &pki.host_trust(), None).unwrap();
    }
}
