//! Key files: written 0600 in a 0700 directory; a key file that group or
//! others can read is refused by the library and by `tap-certs`, with an
//! error naming the file and the `chmod 600` fix.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use tapstack_certs::{init, read_private_key, Error, LeafOptions, Pki, MASTER_KEY_FILE};

const NOW: u64 = 1_780_000_000;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn tap_certs_writes_keys_0600_in_0700_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/pki");
    let pki = init(&dir, NOW, &mut rand_core::OsRng).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&tmp.path().join("a")), 0o700);
    for f in [
        "root.key",
        "issuer.key",
        "acquirer.key",
        "operator.key",
        MASTER_KEY_FILE,
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&dir.join("root.pem")), 0o644);
    let out = tmp.path().join("leaves");
    let w = pki
        .issue_wallet(
            "w",
            &out,
            &LeafOptions::default(),
            NOW,
            &mut rand_core::OsRng,
        )
        .unwrap();
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&w.leaf.key_path), 0o600);
    assert_eq!(mode(&w.cryptogram_key_path), 0o600);
    assert_eq!(mode(&w.leaf.cert_path), 0o644);
}

#[test]
fn a_group_or_world_readable_key_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = init(&tmp.path().join("pki"), NOW, &mut rand_core::OsRng).unwrap();
    let t = pki
        .issue_terminal(
            "t",
            &tmp.path().join("out"),
            &LeafOptions::default(),
            NOW,
            &mut rand_core::OsRng,
        )
        .unwrap();
    read_private_key(&t.key_path).unwrap();
    for bad in [0o640, 0o604, 0o644, 0o660, 0o602] {
        chmod(&t.key_path, bad);
        match read_private_key(&t.key_path) {
            Err(e @ Error::KeyPermissions { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&t.key_path.display().to_string()), "{msg}");
                assert!(
                    msg.contains(&format!("chmod 600 {}", t.key_path.display())),
                    "{msg}"
                );
                assert!(msg.contains(&format!("{bad:04o}")), "{msg}");
            }
            other => panic!("mode {bad:o}: {other:?}"),
        }
    }
    // Owner-only modes are fine.
    for good in [0o600, 0o400] {
        chmod(&t.key_path, good);
        read_private_key(&t.key_path).unwrap();
    }

    // The PKI's own keys: a group-readable CA key or master key stops the load.
    for f in ["acquirer.key", MASTER_KEY_FILE] {
        let path = pki.path(f);
        chmod(&path, 0o640);
        match Pki::load(pki.dir()) {
            Err(Error::KeyPermissions { path: p, mode }) => {
                assert_eq!(p, path);
                assert_eq!(mode, 0o640);
            }
            other => panic!("{f}: {other:?}"),
        }
        chmod(&path, 0o600);
    }
    Pki::load(pki.dir()).unwrap();
}

#[test]
fn the_tap_certs_binary_refuses_a_group_readable_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let out = Command::new(env!("CARGO_BIN_EXE_tap-certs"))
        .args(["init", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    chmod(&dir.join("acquirer.key"), 0o644);
    let out = Command::new(env!("CARGO_BIN_EXE_tap-certs"))
        .args(["terminal", "--name", "Tea", "--pki"])
        .arg(&dir)
        .arg("--out")
        .arg(tmp.path().join("t"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let key = dir.join("acquirer.key");
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );
    assert!(!tmp.path().join("t/tea.pem").exists());
    // Fixed as told: works.
    chmod(&key, 0o600);
    let out = Command::new(env!("CARGO_BIN_EXE_tap-certs"))
        .args(["terminal", "--name", "Tea", "--pki"])
        .arg(&dir)
        .arg("--out")
        .arg(tmp.path().join("t"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // `inspect` of a world-readable key: refused too.
    let key = tmp.path().join("t/tea.key");
    chmod(&key, 0o644);
    let out = Command::new(env!("CARGO_BIN_EXE_tap-certs"))
        .arg("inspect")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}
