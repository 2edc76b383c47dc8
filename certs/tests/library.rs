//! The library against the protocol crate's own checks: loading, issuing,
//! credentials, revocation, corrupted files, inspect.

// Helpers outside #[test] functions unwrap too; clippy.toml's
// allow-*-in-tests does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use common::{copy_dir, setup, NOW};
use tapstack_certs::{
    file_stem, init, init_with, inspect, CredentialRequest, Error, InitOptions, Inspected,
    LeafOptions, Pki, RevokeTarget, SignatureStatus, BACKDATE, DAY, MASTER_KEY_FILE,
    REVOCATION_LIFETIME,
};
use tapstack_protocol::error::{CredentialProblem, Error as ProtoError};
use tapstack_protocol::pki::{CertError, Role, TrustStore};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::scenario::PickupCredential;
use tapstack_protocol::verify::verify_credential;
use tapstack_protocol::Codec;

const PKI_FILES: [&str; 10] = [
    "root.pem",
    "root.key",
    "issuer.pem",
    "issuer.key",
    "acquirer.pem",
    "acquirer.key",
    "operator.pem",
    "operator.key",
    "issuer-master.key",
    "revocations.tlv",
];

fn read_list(dir: &Path) -> RevocationList {
    RevocationList::decode(&std::fs::read(dir.join("revocations.tlv")).unwrap()).unwrap()
}

#[test]
fn init_writes_a_pki_that_loads_back_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("new/pki");
    let made = init(&dir, NOW, &mut rand_core::OsRng).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = PKI_FILES.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(names, expected);

    let loaded = Pki::load(&dir).unwrap();
    for role in [Role::Root, Role::Issuer, Role::Acquirer, Role::Operator] {
        let (a, b) = (made.identity(role), loaded.identity(role));
        assert_eq!(a.cert, b.cert, "{role}");
        assert_eq!(a.key, b.key, "{role}");
        assert_eq!(b.cert.role(), role);
        assert_eq!(b.cert.not_before(), NOW - BACKDATE);
        assert_eq!(b.cert.not_after(), NOW + 3650 * DAY);
        loaded.verify(&b.cert, NOW).unwrap();
    }
    assert_eq!(
        made.issuer_master_key().unwrap().0,
        loaded.issuer_master_key().unwrap().0
    );
    let hex_key = std::fs::read_to_string(dir.join("issuer-master.key")).unwrap();
    assert_eq!(
        hex_key.trim(),
        hex::encode(loaded.issuer_master_key().unwrap().0)
    );

    let list = read_list(&dir);
    assert_eq!(&list, loaded.revocations());
    assert_eq!(list.number, 1);
    assert_eq!(
        (list.this_update, list.next_update),
        (NOW, NOW + REVOCATION_LIFETIME)
    );
    assert!(list.certificates.is_empty() && list.credentials.is_empty());
    assert_eq!(&list.signer, loaded.root().cert.hash());
    let mut root_only = TrustStore::new();
    root_only.add_root(loaded.root().cert.clone()).unwrap();
    list.verify(&root_only).unwrap();
    assert_eq!(
        list.to_bytes(),
        std::fs::read(dir.join("revocations.tlv")).unwrap()
    );

    // Two PKIs are not the same PKI.
    let other = init(&tmp.path().join("other"), NOW, &mut rand_core::OsRng).unwrap();
    assert_ne!(other.root().cert, loaded.root().cert);
    assert!(loaded.verify(&other.issuer().cert, NOW).is_err());
}

#[test]
fn init_refuses_to_overwrite_any_pki_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    init(&dir, NOW, &mut rand_core::OsRng).unwrap();
    let before: Vec<Vec<u8>> = PKI_FILES
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    match init(&dir, NOW + 1, &mut rand_core::OsRng) {
        Err(Error::AlreadyInitialized { path }) => assert!(path.starts_with(&dir)),
        other => panic!("{other:?}"),
    }
    let after: Vec<Vec<u8>> = PKI_FILES
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    assert_eq!(before, after, "a refused init changed files");

    // Any single leftover file is enough to refuse, and the message names it.
    for f in PKI_FILES {
        let d = tmp.path().join(format!("partial-{f}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(f), b"x").unwrap();
        let err = init(&d, NOW, &mut rand_core::OsRng).unwrap_err();
        assert!(
            matches!(err, Error::AlreadyInitialized { .. }),
            "{f}: {err:?}"
        );
        assert!(err.to_string().contains(f), "{f}: {err}");
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "{f}: init wrote files before refusing"
        );
    }
    // An unrelated file is fine.
    let d = tmp.path().join("unrelated");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("README"), b"x").unwrap();
    init(&d, NOW, &mut rand_core::OsRng).unwrap();
}

#[test]
fn leaves_chain_to_their_cas_and_wallet_key_is_diversified() {
    let s = setup(NOW);
    let t = &s.terminal.identity.cert;
    let w = &s.wallet.leaf.identity.cert;
    assert_eq!(
        (t.role(), t.common_name()),
        (Role::Terminal, "Tea House #12")
    );
    // Pseudonymous: "alice phone" named the files, not the certificate.
    assert_eq!((w.role(), w.common_name()), (Role::Wallet, "wallet"));
    assert!(t.is_signed_by(&s.pki.acquirer().cert) && !t.is_signed_by(&s.pki.issuer().cert));
    assert!(w.is_signed_by(&s.pki.issuer().cert) && !w.is_signed_by(&s.pki.acquirer().cert));
    assert_eq!(t.not_after(), NOW + 730 * DAY);
    assert_eq!(t.not_before(), NOW - BACKDATE);
    s.pki.verify(t, NOW).unwrap();
    s.pki.verify(w, NOW).unwrap();
    s.pki
        .wallet_trust()
        .verify(t, Role::Terminal, NOW, Some(s.pki.revocations()))
        .unwrap();
    s.pki
        .terminal_trust()
        .verify(w, Role::Wallet, NOW, Some(s.pki.revocations()))
        .unwrap();
    // Expired two years on.
    assert!(matches!(
        s.pki.verify(t, NOW + 731 * DAY),
        Err(Error::Rejected {
            source: CertError::Expired { .. },
            ..
        })
    ));

    // Files: certificate and key read back; the .ck is the diversified key.
    assert_eq!(
        &tapstack_certs::read_certificate(&s.out.join("terminal.pem")).unwrap(),
        t
    );
    assert_eq!(
        &tapstack_certs::read_private_key(&s.out.join("wallet.key")).unwrap(),
        &s.wallet.leaf.identity.key
    );
    let ck = std::fs::read_to_string(s.out.join("wallet.ck")).unwrap();
    let expect = s.pki.issuer_master_key().unwrap().diversify(w.serial());
    assert_eq!(ck.trim(), hex::encode(expect.0));
    assert_eq!(s.wallet.cryptogram_key.0, expect.0);

    // Issuing again under the same file name refuses and leaves the files.
    let before = std::fs::read(s.out.join("terminal.pem")).unwrap();
    let opts = LeafOptions {
        days: None,
        file_stem: Some("terminal".into()),
    };
    match s
        .pki
        .issue_terminal("Other", &s.out, &opts, NOW, &mut rand_core::OsRng)
    {
        Err(Error::Exists { path }) => assert!(path.ends_with("terminal.pem")),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(s.out.join("terminal.pem")).unwrap(), before);
    // A wallet stem whose .ck alone exists: nothing new is written.
    std::fs::write(s.out.join("bob.ck"), b"x").unwrap();
    let opts = LeafOptions {
        days: None,
        file_stem: Some("bob".into()),
    };
    assert!(matches!(
        s.pki
            .issue_wallet("bob", &s.out, &opts, NOW, &mut rand_core::OsRng),
        Err(Error::Exists { .. })
    ));
    assert!(!s.out.join("bob.pem").exists() && !s.out.join("bob.key").exists());
}

#[test]
fn leaf_options_and_names_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = init(&tmp.path().join("pki"), NOW, &mut rand_core::OsRng).unwrap();
    let out = tmp.path().join("out");
    let mut rng = rand_core::OsRng;
    // Default file name from the merchant name.
    let t = pki
        .issue_terminal(
            "Tea House #12",
            &out,
            &LeafOptions::default(),
            NOW,
            &mut rng,
        )
        .unwrap();
    assert!(t.cert_path.ends_with("tea-house-12.pem") && t.key_path.ends_with("tea-house-12.key"));
    assert_eq!(
        file_stem("  Café: Ünïcode / 7 "),
        Some("caf-n-code-7".into())
    );
    assert_eq!(file_stem("###"), None);
    assert!(matches!(
        pki.issue_terminal("###", &out, &LeafOptions::default(), NOW, &mut rng),
        Err(Error::Invalid { field: "name", .. })
    ));
    for bad in ["../evil", "a/b", ".hidden", "-x", "", "sp ace"] {
        let opts = LeafOptions {
            days: None,
            file_stem: Some(bad.into()),
        };
        assert!(
            matches!(
                pki.issue_terminal("T", &out, &opts, NOW, &mut rng),
                Err(Error::Invalid {
                    field: "file name",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
    // Days: zero and overflow are refused; validity never outlives the CA.
    for days in [0, u64::MAX / 1000] {
        let opts = LeafOptions {
            days: Some(days),
            file_stem: Some(format!("d{days}")),
        };
        assert!(matches!(
            pki.issue_wallet("w", &out, &opts, NOW, &mut rng),
            Err(Error::Invalid { field: "days", .. })
        ));
    }
    let opts = LeafOptions {
        days: Some(10),
        file_stem: Some("short".into()),
    };
    assert_eq!(
        pki.issue_wallet("w", &out, &opts, NOW, &mut rng)
            .unwrap()
            .leaf
            .identity
            .cert
            .not_after(),
        NOW + 10 * DAY
    );
    let opts = LeafOptions {
        days: Some(100_000),
        file_stem: Some("long".into()),
    };
    let long = pki
        .issue_terminal("long", &out, &opts, NOW, &mut rng)
        .unwrap();
    assert_eq!(
        long.identity.cert.not_after(),
        pki.acquirer().cert.not_after()
    );
    // Common names the protocol refuses (too long, control characters).
    let opts = LeafOptions {
        days: None,
        file_stem: Some("cn".into()),
    };
    assert!(matches!(
        pki.issue_terminal(&"x".repeat(65), &out, &opts, NOW, &mut rng),
        Err(Error::Issue {
            role: Role::Terminal,
            source: CertError::Malformed { .. }
        })
    ));
    assert!(!out.join("cn.pem").exists());

    // A short-lived PKI: leaves are clamped, and nothing is issued once the CA expired.
    let short = init_with(
        &tmp.path().join("short"),
        &InitOptions {
            ca_days: 30,
            ..Default::default()
        },
        NOW,
        &mut rng,
    )
    .unwrap();
    let w = short
        .issue_wallet(
            "w",
            &out,
            &LeafOptions {
                days: None,
                file_stem: Some("sw".into()),
            },
            NOW,
            &mut rng,
        )
        .unwrap();
    assert_eq!(w.leaf.identity.cert.not_after(), NOW + 30 * DAY);
    let late = short.issue_wallet(
        "w",
        &out,
        &LeafOptions {
            days: None,
            file_stem: Some("late".into()),
        },
        NOW + 31 * DAY,
        &mut rng,
    );
    assert!(
        matches!(
            late,
            Err(Error::Rejected {
                role: Role::Issuer,
                source: CertError::Expired { .. },
                ..
            })
        ),
        "{late:?}"
    );
    assert!(matches!(
        init_with(
            &tmp.path().join("zero"),
            &InitOptions {
                ca_days: 0,
                ..Default::default()
            },
            NOW,
            &mut rng
        ),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn credentials_verify_with_the_protocol_and_can_be_revoked() {
    let mut s = setup(NOW);
    let wallet = s.wallet.leaf.identity.cert.clone();
    let path = s.out.join("parcel.cred");
    let req = CredentialRequest {
        wallet: &wallet,
        site: "LOCKER-7",
        slot: 12,
        parcel: "PX-0001",
        days: None,
    };
    let cred = s
        .pki
        .issue_credential(&req, &path, NOW, &mut rand_core::OsRng)
        .unwrap();
    let on_disk = PickupCredential::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(on_disk, cred);
    assert_eq!(
        (cred.site.as_str(), cred.slot, cred.parcel.as_str()),
        ("LOCKER-7", 12, "PX-0001")
    );
    assert_eq!(cred.not_after, NOW + 7 * DAY);
    assert_eq!(&cred.operator, s.pki.operator().cert.hash());

    // Exactly what a kiosk checks.
    let trust = s.pki.terminal_trust();
    verify_credential(
        &cred,
        "LOCKER-7",
        &wallet,
        &trust,
        Some(s.pki.revocations()),
        NOW,
    )
    .unwrap();
    let err = verify_credential(&cred, "LOCKER-8", &wallet, &trust, None, NOW).unwrap_err();
    assert_eq!(err, ProtoError::Credential(CredentialProblem::WrongSite));
    let err = verify_credential(
        &cred,
        "LOCKER-7",
        &s.terminal.identity.cert,
        &trust,
        None,
        NOW,
    )
    .unwrap_err();
    assert_eq!(
        err,
        ProtoError::Credential(CredentialProblem::WrongRecipient)
    );
    let err =
        verify_credential(&cred, "LOCKER-7", &wallet, &trust, None, NOW + 8 * DAY).unwrap_err();
    assert_eq!(err, ProtoError::Credential(CredentialProblem::Expired));

    // Refusals: existing file, a terminal as recipient, bad site/parcel.
    assert!(matches!(
        s.pki
            .issue_credential(&req, &path, NOW, &mut rand_core::OsRng),
        Err(Error::Exists { .. })
    ));
    let t = s.terminal.identity.cert.clone();
    let other = s.out.join("other.cred");
    let bad = [
        CredentialRequest { wallet: &t, ..req },
        CredentialRequest { site: "", ..req },
        CredentialRequest {
            site: &"S".repeat(33),
            ..req
        },
        CredentialRequest {
            parcel: "a\nb",
            ..req
        },
        CredentialRequest {
            days: Some(0),
            ..req
        },
    ];
    for r in bad {
        assert!(
            s.pki
                .issue_credential(&r, &other, NOW, &mut rand_core::OsRng)
                .is_err(),
            "{r:?}"
        );
        assert!(!other.exists());
    }
    // A wallet from another PKI is refused.
    let foreign = common::setup(NOW);
    let fw = foreign.wallet.leaf.identity.cert.clone();
    let r = CredentialRequest { wallet: &fw, ..req };
    assert!(matches!(
        s.pki
            .issue_credential(&r, &other, NOW, &mut rand_core::OsRng),
        Err(Error::Rejected {
            role: Role::Wallet,
            ..
        })
    ));

    // Revoke it by file.
    let target = RevokeTarget::credential_file(&path).unwrap();
    assert_eq!(target, RevokeTarget::Credential(cred.id));
    let outcome = s.pki.revoke(target, NOW + 60).unwrap();
    assert!(outcome.added);
    let list = read_list(&s.pki_dir);
    assert!(list.is_credential_revoked(&cred.id, u64::MAX));
    assert_eq!(list.number, 2);
    let err =
        verify_credential(&cred, "LOCKER-7", &wallet, &trust, Some(&list), NOW + 60).unwrap_err();
    assert_eq!(err, ProtoError::Credential(CredentialProblem::Revoked));
    // A pickup made before the revocation time still verifies.
    verify_credential(&cred, "LOCKER-7", &wallet, &trust, Some(&list), NOW + 59).unwrap();
}

#[test]
fn revoking_a_certificate_updates_the_signed_list() {
    let mut s = setup(NOW);
    let term = s.terminal.identity.cert.clone();
    let wallet = s.wallet.leaf.identity.cert.clone();
    let trust = s.pki.trust_store().clone();
    trust
        .verify(&term, Role::Terminal, NOW, Some(&read_list(&s.pki_dir)))
        .unwrap();

    let later = NOW + 3600;
    let outcome = s
        .pki
        .revoke(
            RevokeTarget::certificate_file(&s.terminal.cert_path).unwrap(),
            later,
        )
        .unwrap();
    assert!(outcome.added && outcome.path.ends_with("revocations.tlv"));
    let list = read_list(&s.pki_dir);
    assert_eq!(list, outcome.list);
    assert_eq!(&list, s.pki.revocations());
    assert_eq!(list.number, 2);
    assert_eq!(
        (list.this_update, list.next_update),
        (later, later + 7 * DAY)
    );
    assert!(list.certificates.contains_key(term.hash()));
    assert_eq!(list.certificates.len(), 1);
    list.verify(&trust).unwrap();
    assert_eq!(list.revoked_at(term.hash()), Some(later));
    assert_eq!(
        trust.verify(&term, Role::Terminal, later, Some(&list)),
        Err(CertError::Revoked)
    );
    // Revoked from `later` on: before it, the certificate still verifies.
    trust
        .verify(&term, Role::Terminal, later - 1, Some(&list))
        .unwrap();
    trust
        .verify(&wallet, Role::Wallet, later, Some(&list))
        .unwrap();
    assert!(matches!(
        Pki::load(&s.pki_dir).unwrap().verify(&term, later),
        Err(Error::Rejected {
            source: CertError::Revoked,
            ..
        })
    ));

    // By hex hash (colons and upper case as openssl prints them).
    let colons: Vec<String> = wallet.hash().iter().map(|b| format!("{b:02X}")).collect();
    let target = RevokeTarget::certificate_hash_hex(&colons.join(":")).unwrap();
    assert_eq!(target, RevokeTarget::Certificate(*wallet.hash()));
    s.pki.revoke(target, later).unwrap();
    let list = read_list(&s.pki_dir);
    assert_eq!(list.number, 3);
    assert_eq!(
        trust.verify(&wallet, Role::Wallet, later, Some(&list)),
        Err(CertError::Revoked)
    );

    // Again: no change, no new number, file untouched.
    let before = std::fs::read(s.pki_dir.join("revocations.tlv")).unwrap();
    let again = s
        .pki
        .revoke(RevokeTarget::Certificate(*term.hash()), later + 5)
        .unwrap();
    assert!(!again.added);
    assert_eq!(again.list.number, 3);
    assert_eq!(
        std::fs::read(s.pki_dir.join("revocations.tlv")).unwrap(),
        before
    );

    // No temporary files left behind; the list stays public-readable.
    let names: Vec<String> = std::fs::read_dir(&s.pki_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), PKI_FILES.len(), "{names:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.pki_dir.join("revocations.tlv"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);
    }

    // Malformed hex.
    for bad in ["", "zz", "00", &"0".repeat(63), &"0".repeat(66)] {
        assert!(
            matches!(
                RevokeTarget::certificate_hash_hex(bad),
                Err(Error::Hex { bytes: 32, .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn revoking_a_ca_revokes_everything_under_it_but_the_root_is_not_revocable() {
    let mut s = setup(NOW);
    let term = s.terminal.identity.cert.clone();
    let wallet = s.wallet.leaf.identity.cert.clone();
    let acquirer = s.pki.acquirer().cert.clone();
    s.pki
        .revoke(RevokeTarget::Certificate(*acquirer.hash()), NOW)
        .unwrap();
    let list = read_list(&s.pki_dir);
    let trust = s.pki.trust_store();
    assert_eq!(
        trust.verify(&term, Role::Terminal, NOW, Some(&list)),
        Err(CertError::Revoked)
    );
    trust
        .verify(&wallet, Role::Wallet, NOW, Some(&list))
        .unwrap();
    // And the revoked acquirer issues nothing more.
    let opts = LeafOptions {
        days: None,
        file_stem: Some("t2".into()),
    };
    assert!(matches!(
        s.pki
            .issue_terminal("T2", &s.out, &opts, NOW, &mut rand_core::OsRng),
        Err(Error::Rejected {
            role: Role::Acquirer,
            source: CertError::Revoked,
            ..
        })
    ));

    let root = *s.pki.root().cert.hash();
    assert!(matches!(
        s.pki.revoke(RevokeTarget::Certificate(root), NOW),
        Err(Error::RootNotRevocable)
    ));
    assert_eq!(read_list(&s.pki_dir).number, 2);
}

#[test]
fn revoke_rechecks_the_list_on_disk() {
    let mut s = setup(NOW);
    // Someone replaced the list with one signed by another PKI.
    let other = setup(NOW);
    std::fs::copy(
        other.pki_dir.join("revocations.tlv"),
        s.pki_dir.join("revocations.tlv"),
    )
    .unwrap();
    let err = s
        .pki
        .revoke(RevokeTarget::Credential([1; 16]), NOW)
        .unwrap_err();
    assert!(
        matches!(&err, Error::RevocationSignature { path, source: CertError::UnknownSigner } if path.ends_with("revocations.tlv")),
        "{err:?}"
    );
}

/// Corrupt one file of a copy of the PKI and load it.
fn load_with(src: &Path, file: &str, contents: &[u8]) -> Error {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    copy_dir(src, &dir);
    std::fs::write(dir.join(file), contents).unwrap();
    Pki::load(&dir).expect_err(file)
}

#[test]
fn loading_a_corrupted_pki_names_the_file() {
    let s = setup(NOW);
    let src = &s.pki_dir;
    let read = |f: &str| std::fs::read(src.join(f)).unwrap();

    for f in PKI_FILES {
        for junk in [
            &b""[..],
            b"garbage\n",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let err = load_with(src, f, junk);
            assert!(err.to_string().contains(f), "{f}: {err}");
        }
        // Truncated to half.
        let full = read(f);
        let err = load_with(src, f, &full[..full.len() / 2]);
        assert!(err.to_string().contains(f), "{f} truncated: {err}");

        // Missing.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        copy_dir(src, &dir);
        std::fs::remove_file(dir.join(f)).unwrap();
        if f == MASTER_KEY_FILE {
            // A PKI whose master key is in an HSM has no such file.
            let pki = Pki::load(&dir).unwrap();
            assert!(pki.issuer_master_key().is_none());
            let err = pki
                .issue_wallet(
                    "w",
                    &tmp.path().join("w"),
                    &LeafOptions::default(),
                    NOW,
                    &mut rand_core::OsRng,
                )
                .unwrap_err();
            assert!(
                matches!(&err, Error::NoMasterKey { path } if path.ends_with(f)),
                "{err:?}"
            );
            assert!(!tmp.path().join("w").exists());
            continue;
        }
        let err = Pki::load(&dir).unwrap_err();
        assert!(
            matches!(&err, Error::Missing { path } if path.ends_with(f)),
            "{f}: {err:?}"
        );
        assert!(
            err.to_string().contains(f) && err.to_string().contains("does not exist"),
            "{err}"
        );
    }

    // Well-formed but wrong: each error says which file and what.
    let err = load_with(src, "root.pem", &read("issuer.pem"));
    assert!(
        matches!(&err, Error::WrongRole { path, expected: Role::Root, got: Role::Issuer } if path.ends_with("root.pem")),
        "{err:?}"
    );
    let err = load_with(src, "issuer.key", &read("acquirer.key"));
    assert!(
        matches!(&err, Error::KeyMismatch { key, cert } if key.ends_with("issuer.key") && cert.ends_with("issuer.pem")),
        "{err:?}"
    );
    let foreign = setup(NOW);
    let err = load_with(
        src,
        "acquirer.pem",
        &std::fs::read(foreign.pki_dir.join("acquirer.pem")).unwrap(),
    );
    assert!(
        matches!(&err, Error::Certificate { path, source: CertError::BadSignature } if path.ends_with("acquirer.pem")),
        "{err:?}"
    );
    let mut list = read("revocations.tlv");
    let last = list.len() - 1;
    list[last] ^= 1; // inside the signature
    let err = load_with(src, "revocations.tlv", &list);
    assert!(
        matches!(&err, Error::RevocationSignature { path, .. } if path.ends_with("revocations.tlv")),
        "{err:?}"
    );
    let err = load_with(src, "issuer-master.key", b"0011");
    assert!(
        matches!(&err, Error::SecretKey { path } if path.ends_with("issuer-master.key")),
        "{err:?}"
    );
    let err = load_with(
        src,
        "operator.pem",
        &std::fs::read(s.out.join("terminal.pem")).unwrap(),
    );
    assert!(
        matches!(
            &err,
            Error::WrongRole {
                expected: Role::Operator,
                got: Role::Terminal,
                ..
            }
        ),
        "{err:?}"
    );

    // A directory that is not there.
    let err = Pki::load(&s.tmp.path().join("nope")).unwrap_err();
    assert!(
        matches!(&err, Error::Missing { path } if path.ends_with("nope")),
        "{err:?}"
    );
}

#[test]
fn inspect_describes_every_kind_of_file() {
    let mut s = setup(NOW);
    let wallet = s.wallet.leaf.identity.cert.clone();
    let cred_path = s.out.join("p.cred");
    let req = CredentialRequest {
        wallet: &wallet,
        site: "LOCKER-7",
        slot: 3,
        parcel: "PX-9",
        days: Some(2),
    };
    let cred = s
        .pki
        .issue_credential(&req, &cred_path, NOW, &mut rand_core::OsRng)
        .unwrap();

    // Certificate, with and without a PKI.
    let i = inspect(&s.terminal.cert_path, Some(&s.pki), NOW).unwrap();
    let Inspected::Certificate(info) = &i else {
        panic!("{i:?}")
    };
    assert_eq!(info.chain, Some(Ok(())));
    assert_eq!(info.issuer, "CN=tapstack dev acquirer,OU=acquirer");
    let id = s.terminal.identity.cert.terminal_id().unwrap().to_owned();
    assert_eq!(id.len(), 16, "a random 16-hex-digit terminal ID by default");
    assert_eq!(
        info.subject,
        format!("SERIALNUMBER={id},CN=Tea House #12,OU=terminal")
    );
    let text = i.to_string();
    assert!(text.contains(&format!("terminal ID:  {id}")), "{text}");
    for want in [
        "role:         terminal",
        "Tea House #12",
        &hex::encode(s.terminal.identity.cert.hash()),
        "chain:        valid",
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    let text = inspect(&s.terminal.cert_path, None, NOW)
        .unwrap()
        .to_string();
    assert!(text.contains("not checked"), "{text}");
    let text = inspect(&s.terminal.cert_path, Some(&s.pki), NOW + 800 * DAY)
        .unwrap()
        .to_string();
    assert!(
        text.contains("EXPIRED") && text.contains("REJECTED"),
        "{text}"
    );
    let text = inspect(&s.pki_dir.join("root.pem"), None, NOW)
        .unwrap()
        .to_string();
    assert!(
        text.contains("(self-signed)") && text.contains("CA:           yes"),
        "{text}"
    );

    // Private key: matches the certificate next to it and, for PKI keys, the role.
    let i = inspect(&s.terminal.key_path, None, NOW).unwrap();
    let Inspected::PrivateKey(k) = &i else {
        panic!("{i:?}")
    };
    assert_eq!(k.sibling.as_ref().map(|(_, m)| *m), Some(true));
    let i = inspect(&s.pki_dir.join("operator.key"), Some(&s.pki), NOW).unwrap();
    let Inspected::PrivateKey(k) = &i else {
        panic!("{i:?}")
    };
    assert_eq!(k.pki_role, Some(Role::Operator));
    assert!(!i.to_string().contains("BEGIN"));

    // Credential.
    let i = inspect(&cred_path, Some(&s.pki), NOW).unwrap();
    let Inspected::Credential(c) = &i else {
        panic!("{i:?}")
    };
    assert_eq!(c.credential, cred);
    assert_eq!(c.signature, SignatureStatus::Valid);
    assert_eq!(c.revoked, Some(false));
    let text = i.to_string();
    for want in [
        "parcel:       PX-9",
        "site:         LOCKER-7",
        "slot:         3",
        "signature:    valid",
        &hex::encode(cred.recipient),
    ] {
        assert!(text.contains(want), "{want}\n{text}");
    }
    // A tampered credential (slot changed, signature kept) is reported invalid.
    let mut forged = cred.clone();
    forged.slot = 4;
    let forged_path = s.out.join("forged.cred");
    std::fs::write(&forged_path, forged.to_bytes()).unwrap();
    let Inspected::Credential(c) = inspect(&forged_path, Some(&s.pki), NOW).unwrap() else {
        panic!()
    };
    assert_eq!(c.signature, SignatureStatus::Invalid);
    // Checked against another PKI: unknown signer.
    let other = setup(NOW);
    let Inspected::Credential(c) = inspect(&cred_path, Some(&other.pki), NOW).unwrap() else {
        panic!()
    };
    assert_eq!(c.signature, SignatureStatus::UnknownSigner);
    let Inspected::Credential(c) = inspect(&cred_path, None, NOW).unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.signature, c.revoked),
        (SignatureStatus::NotChecked, None)
    );

    // Revocation list.
    s.pki
        .revoke(RevokeTarget::Credential(cred.id), NOW)
        .unwrap();
    let i = inspect(&s.pki_dir.join("revocations.tlv"), Some(&s.pki), NOW).unwrap();
    let Inspected::RevocationList(r) = &i else {
        panic!("{i:?}")
    };
    assert_eq!(
        (r.list.number, r.signature.clone()),
        (2, SignatureStatus::Valid)
    );
    let text = i.to_string();
    assert!(
        text.contains("number:       2") && text.contains(&hex::encode(cred.id)),
        "{text}"
    );
    let Inspected::RevocationList(r) =
        inspect(&s.pki_dir.join("revocations.tlv"), Some(&other.pki), NOW).unwrap()
    else {
        panic!()
    };
    assert_eq!(r.signature, SignatureStatus::UnknownSigner);
    let Inspected::Credential(c) = inspect(&cred_path, Some(&s.pki), NOW).unwrap() else {
        panic!()
    };
    assert_eq!(c.revoked, Some(true));

    // Hex secret keys are recognised but never printed.
    for f in [
        s.pki_dir.join("issuer-master.key"),
        s.wallet.cryptogram_key_path.clone(),
    ] {
        let i = inspect(&f, None, NOW).unwrap();
        assert!(matches!(i, Inspected::SecretKey), "{i:?}");
        let secret = std::fs::read_to_string(&f).unwrap();
        assert!(!i.to_string().contains(secret.trim()));
    }

    // DER certificates are read too; anything else is an error naming the file.
    let der_path = s.out.join("t.der");
    std::fs::write(&der_path, s.terminal.identity.cert.der()).unwrap();
    assert!(matches!(
        inspect(&der_path, None, NOW).unwrap(),
        Inspected::Certificate(_)
    ));
    let junk = s.out.join("junk.bin");
    std::fs::write(&junk, b"\x01\x02hello").unwrap();
    let err = inspect(&junk, None, NOW).unwrap_err();
    assert!(
        matches!(&err, Error::UnknownFormat { path } if path.ends_with("junk.bin")),
        "{err:?}"
    );
    let bad_cred = s.out.join("bad.cred");
    std::fs::write(&bad_cred, &cred.to_bytes()[..20]).unwrap();
    let err = inspect(&bad_cred, None, NOW).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Decode {
                what: "pickup credential",
                ..
            }
        ) && err.to_string().contains("bad.cred"),
        "{err:?}"
    );
    let err = inspect(&s.out.join("missing.pem"), None, NOW).unwrap_err();
    assert!(matches!(err, Error::Missing { .. }));
}

/// What a verifier loads: the certificates and the list, no CA key; the CA
/// keys still present are listed so a verifier can warn about them.
#[test]
fn public_pki_loads_without_any_ca_key_and_lists_the_ones_present() {
    let s = common::setup(common::real_now());
    let full = tapstack_certs::Pki::load(&s.pki_dir).unwrap();
    assert_eq!(tapstack_certs::ca_key_files(&s.pki_dir).len(), 4);
    let public = s.tmp.path().join("public");
    std::fs::create_dir(&public).unwrap();
    for f in tapstack_certs::public_files() {
        std::fs::copy(s.pki_dir.join(&f), public.join(&f)).unwrap();
    }
    assert!(tapstack_certs::ca_key_files(&public).is_empty());
    // The full loader needs the keys; the public one does not.
    assert!(matches!(
        tapstack_certs::Pki::load(&public),
        Err(tapstack_certs::Error::Missing { .. })
    ));
    let p = tapstack_certs::PublicPki::load(&public).unwrap();
    assert_eq!(p.root().der(), full.root().cert.der());
    assert_eq!(p.acquirer().der(), full.acquirer().cert.der());
    assert!(p.issuer_master_key().is_none());
    assert!(matches!(
        p.issuer_master_key_file(),
        Err(tapstack_certs::Error::NoMasterKey { .. })
    ));
    assert_eq!(p.revocations().number, full.revocations().number);
    assert_eq!(p.trust_store().intermediates().len(), 3);
    // It validates leaves like the full PKI.
    let t = tapstack_certs::read_certificate(&s.out.join("terminal.pem")).unwrap();
    p.trust_store()
        .verify(
            &t,
            Role::Terminal,
            common::real_now(),
            Some(p.revocations()),
        )
        .unwrap();
    // One key back: listed by name.
    std::fs::copy(s.pki_dir.join("issuer.key"), public.join("issuer.key")).unwrap();
    assert_eq!(
        tapstack_certs::ca_key_files(&public),
        vec![public.join("issuer.key")]
    );
    // Still checked like the full load: a certificate of the wrong role is refused.
    std::fs::copy(s.pki_dir.join("issuer.pem"), public.join("acquirer.pem")).unwrap();
    assert!(matches!(
        tapstack_certs::PublicPki::load(&public),
        Err(tapstack_certs::Error::WrongRole { .. })
    ));
}

#[test]
fn kiosk_endorsement_binds_the_terminal_key_and_its_sites() {
    let s = setup(NOW);
    let t = &s.terminal.identity.cert;
    let out = s.out.join("tea-house-12-kiosk.pem");
    let sites = vec!["LOCKER-7".to_string(), "LOCKER-8".to_string()];
    let k = s
        .pki
        .issue_kiosk(t, &sites, &out, None, NOW, &mut rand_core::OsRng)
        .unwrap();
    assert_eq!(k.role(), Role::Kiosk);
    assert_eq!(k.public_key(), t.public_key());
    assert_eq!(k.endorsed_sites(), &sites[..]);
    assert_eq!(k.common_name(), t.common_name());
    assert!(k.not_after() <= t.not_after());
    assert!(k.is_signed_by(&s.pki.operator().cert));
    s.pki.verify(&k, NOW).unwrap();
    // What is written reads back as the same certificate.
    let back = tapstack_certs::read_certificate(&out).unwrap();
    assert_eq!(back.der(), k.der());
    // Not over an existing file, not for a wallet, not without sites or
    // with a bad one.
    assert!(s
        .pki
        .issue_kiosk(t, &sites, &out, None, NOW, &mut rand_core::OsRng)
        .is_err());
    let w = &s.wallet.leaf.identity.cert;
    let other = s.out.join("x.pem");
    assert!(s
        .pki
        .issue_kiosk(w, &sites, &other, None, NOW, &mut rand_core::OsRng)
        .is_err());
    assert!(s
        .pki
        .issue_kiosk(t, &[], &other, None, NOW, &mut rand_core::OsRng)
        .is_err());
    assert!(s
        .pki
        .issue_kiosk(
            t,
            &[String::new()],
            &other,
            None,
            NOW,
            &mut rand_core::OsRng
        )
        .is_err());
    assert!(!other.exists());
}
