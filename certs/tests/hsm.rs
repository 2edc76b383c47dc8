//! The issuer master key in a real SoftHSM2 token (PKCS#11): generated
//! inside it, never readable, and deriving exactly the wallet keys the
//! file key derives; `tap-certs init --hsm` / `wallet --hsm` black-box.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod softhsm;

use std::path::Path;
use std::process::{Command, Output};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use softhsm::{SoftHsm, KEY_LABEL, PIN};
use tapstack_certs::hsm::IssuerKeys;
use tapstack_certs::{Error, HsmMasterKey, Pki, MASTER_KEY_FILE};
use tapstack_protocol::crypto::IssuerMasterKey;

#[test]
fn the_token_derives_the_wallet_keys_the_file_key_derives() {
    let hsm = SoftHsm::new();
    let file_key =
        IssuerMasterKey(*b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff");
    let token_key = HsmMasterKey::import(&hsm.spec(KEY_LABEL), hsm.pin(), &file_key).unwrap();
    for serial in [
        &[1u8][..],
        &[0x7f; 8],
        &[0x42; 16],
        &[
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
            0x0f, 0x10, 0x11, 0x12, 0x13, 0x14,
        ],
    ] {
        let from_token = token_key.wallet_key(serial).unwrap();
        let from_file = file_key.diversify(serial);
        assert_eq!(from_token.0, from_file.0, "serial {serial:02x?}");
    }
    // Different serials, different keys (the token really uses its input).
    assert_ne!(
        token_key.wallet_key(&[1]).unwrap().0,
        token_key.wallet_key(&[2]).unwrap().0
    );
    // Many threads at once share the token's sessions.
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let (token_key, file_key) = (&token_key, &file_key);
            s.spawn(move || {
                for i in 0..50u8 {
                    let serial = [t, i, 9];
                    assert_eq!(
                        token_key.wallet_key(&serial).unwrap().0,
                        file_key.diversify(&serial).0
                    );
                }
            });
        }
    });
}

#[test]
fn a_generated_master_key_cannot_be_read_out_of_the_token() {
    let hsm = SoftHsm::new();
    let spec = hsm.spec(KEY_LABEL);
    let key = HsmMasterKey::generate(&spec, hsm.pin()).unwrap();
    assert_eq!(key.wallet_key(&[9; 16]).unwrap().0.len(), 16);
    assert!(key.location().contains(softhsm::TOKEN));

    // Look at the object with plain PKCS#11 calls, logged in as the user.
    let ctx = cryptoki::context::Pkcs11::new(&hsm.module).unwrap();
    match ctx.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    )) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == softhsm::TOKEN)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    match session.login(UserType::User, Some(&PIN.into())) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(KEY_LABEL.as_bytes().to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1);
    let attrs = session
        .get_attributes(
            found[0],
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::Private,
                AttributeType::Token,
                AttributeType::KeyType,
            ],
        )
        .unwrap();
    for want in [
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::NeverExtractable(true),
        Attribute::Private(true),
        Attribute::Token(true),
        Attribute::KeyType(KeyType::AES),
    ] {
        assert!(attrs.contains(&want), "{want:?} not in {attrs:?}");
    }
    // The value itself is refused.
    let value = session.get_attributes(found[0], &[AttributeType::Value]);
    assert!(
        !matches!(&value, Ok(v) if v.iter().any(|a| matches!(a, Attribute::Value(_)))),
        "the token gave out the master key: {value:?}"
    );

    // A second key under the same label is refused.
    match HsmMasterKey::generate(&spec, hsm.pin()) {
        Err(Error::HsmKeyExists { label, .. }) => assert_eq!(label, KEY_LABEL),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_pin_missing_token_missing_key_and_an_extractable_key_are_refused() {
    let hsm = SoftHsm::new();
    HsmMasterKey::generate(&hsm.spec(KEY_LABEL), hsm.pin()).unwrap();
    match HsmMasterKey::open(&hsm.spec(KEY_LABEL), "not-the-pin".into()) {
        Err(Error::HsmPinIncorrect) => {}
        other => panic!("{other:?}"),
    }
    match HsmMasterKey::open(&hsm.spec("no-such-key"), hsm.pin()) {
        Err(Error::HsmKeyMissing { label, .. }) => assert_eq!(label, "no-such-key"),
        other => panic!("{other:?}"),
    }
    let other_token: tapstack_certs::HsmSpec = format!("{}:nope:{KEY_LABEL}", hsm.module.display())
        .parse()
        .unwrap();
    match HsmMasterKey::open(&other_token, hsm.pin()) {
        Err(e @ Error::HsmToken { .. }) => assert!(e.to_string().contains("\"nope\"")),
        other => panic!("{other:?}"),
    }

    // An AES key someone made extractable: the host will not use it.
    let ctx = cryptoki::context::Pkcs11::new(&hsm.module).unwrap();
    let _ = ctx.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ));
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let session = ctx.open_rw_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&PIN.into()));
    session
        .generate_key(
            &cryptoki::mechanism::Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Sign(true),
                Attribute::ValueLen(16.into()),
                Attribute::Label(b"weak".to_vec()),
            ],
        )
        .unwrap();
    match HsmMasterKey::open(&hsm.spec("weak"), hsm.pin()) {
        Err(Error::HsmKeyUnsafe { label, .. }) => assert_eq!(label, "weak"),
        other => panic!("{other:?}"),
    }
}

fn tap_certs(hsm: &SoftHsm, args: &[&str], env_pin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tap-certs"));
    cmd.args(args)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .env_remove("TAPSTACK_HSM_PIN");
    if let Some(pin) = env_pin {
        cmd.env("TAPSTACK_HSM_PIN", pin);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "expected failure: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read_ck(path: &Path) -> [u8; 16] {
    let text = std::fs::read_to_string(path).unwrap();
    hex::decode(text.trim()).unwrap().try_into().unwrap()
}

#[test]
fn tap_certs_creates_the_master_key_in_the_token_and_issues_wallets_from_it() {
    let hsm = SoftHsm::new();
    let spec = hsm.spec_str(KEY_LABEL);
    let pin_file = hsm.pin_file.to_str().unwrap();
    let pki = hsm.dir.path().join("pki");
    let pki_s = pki.to_str().unwrap();
    let out = hsm.dir.path().join("wallets");
    let out_s = out.to_str().unwrap();

    let stdout = ok(&tap_certs(
        &hsm,
        &[
            "init",
            "--out",
            pki_s,
            "--hsm",
            &spec,
            "--pin-file",
            pin_file,
        ],
        None,
    ));
    assert!(stdout.contains("inside the token"), "{stdout}");
    assert!(!pki.join(MASTER_KEY_FILE).exists());
    assert!(Pki::load(&pki).unwrap().issuer_master_key().is_none());

    // A wallet with its key derived in the token (PIN from a file) …
    ok(&tap_certs(
        &hsm,
        &[
            "wallet",
            "--pki",
            pki_s,
            "--name",
            "Alice",
            "--out",
            out_s,
            "--hsm",
            &spec,
            "--pin-file",
            pin_file,
        ],
        None,
    ));
    // … and one with the PIN from the environment.
    ok(&tap_certs(
        &hsm,
        &[
            "wallet", "--pki", pki_s, "--name", "Bob", "--out", out_s, "--hsm", &spec,
        ],
        Some(PIN),
    ));
    let token_key = HsmMasterKey::open(&hsm.spec(KEY_LABEL), hsm.pin()).unwrap();
    for stem in ["alice", "bob"] {
        let cert = tapstack_certs::read_certificate(&out.join(format!("{stem}.pem"))).unwrap();
        assert_eq!(
            read_ck(&out.join(format!("{stem}.ck"))),
            token_key.wallet_key(cert.serial()).unwrap().0,
            "{stem}"
        );
    }
    assert_ne!(read_ck(&out.join("alice.ck")), read_ck(&out.join("bob.ck")));

    // Without --hsm there is no master key to issue from: refused, named.
    let err = failed(&tap_certs(
        &hsm,
        &["wallet", "--pki", pki_s, "--name", "Carol", "--out", out_s],
        None,
    ));
    assert!(
        err.contains(MASTER_KEY_FILE) && err.contains("--hsm"),
        "{err}"
    );
    assert!(!out.join("carol.pem").exists());
    // No PIN anywhere: refused before touching the token.
    let err = failed(&tap_certs(
        &hsm,
        &[
            "wallet", "--pki", pki_s, "--name", "Dave", "--out", out_s, "--hsm", &spec,
        ],
        None,
    ));
    assert!(err.contains("TAPSTACK_HSM_PIN"), "{err}");
    // A wrong PIN: refused.
    let err = failed(&tap_certs(
        &hsm,
        &[
            "wallet", "--pki", pki_s, "--name", "Dave", "--out", out_s, "--hsm", &spec,
        ],
        Some("0000"),
    ));
    assert!(err.contains("PIN"), "{err}");
    assert!(!out.join("dave.pem").exists());
    // The PIN is never an argument.
    let err = failed(&tap_certs(
        &hsm,
        &[
            "wallet", "--pki", pki_s, "--name", "Eve", "--out", out_s, "--hsm", &spec, "--pin", PIN,
        ],
        None,
    ));
    assert!(err.contains("--pin"), "{err}");

    // Creating the same key again (another PKI) is refused and writes no PKI.
    let pki2 = hsm.dir.path().join("pki2");
    let err = failed(&tap_certs(
        &hsm,
        &[
            "init",
            "--out",
            pki2.to_str().unwrap(),
            "--hsm",
            &spec,
            "--pin-file",
            pin_file,
        ],
        None,
    ));
    assert!(err.contains("already holds a key"), "{err}");
    assert!(!pki2.exists());
}
