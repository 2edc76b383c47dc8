#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Golden file of the phone's persisted transaction counter: a counter file
//! written by an older emulator must still be read (a phone that lost its
//! counter would reuse ATCs, which the host declines as a clone).

use std::path::PathBuf;

use tapstack_emulator::state::AtcStore;

#[test]
fn the_counter_file_format_is_pinned() {
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/wallet.atc");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wallet.atc");
    let mut atc = AtcStore::open(&path).unwrap();
    atc.advance_to(4_000_000_123).unwrap();
    let written = std::fs::read(&path).unwrap();
    if std::env::var_os("TAPTEST_BLESS").is_some() {
        std::fs::write(&golden, &written).unwrap();
    }
    let want = std::fs::read(&golden).unwrap();
    assert_eq!(written, want, "the counter file's format changed");
    std::fs::write(&path, &want).unwrap();
    assert_eq!(AtcStore::open(&path).unwrap().value(), 4_000_000_123);
}

/// A whole phone as `tap-emu wallet new` and `add-credential` write it
/// (profile TOML, certificate, key, cryptogram key, trust, revocation list,
/// a pickup credential, the counter file): it must still load, with every
/// setting read as written. `git` keeps no file modes, so the copy gets the
/// key files' 0600 back (the loader refuses readable keys).
#[test]
fn a_wallet_profile_written_by_this_release_still_loads() {
    use std::os::unix::fs::PermissionsExt;
    use tapstack_emulator::profile::{self, CvmPolicy};

    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/profile-v1");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&golden).unwrap() {
        let entry = entry.unwrap();
        let to = dir.path().join(entry.file_name());
        std::fs::copy(entry.path(), &to).unwrap();
        let mode = if matches!(to.extension().and_then(|e| e.to_str()), Some("key" | "ck")) {
            0o600
        } else {
            0o644
        };
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let w = profile::load(&dir.path().join("alice.toml")).unwrap();
    assert_eq!(w.profile.name, "alice");
    assert_eq!(w.profile.cvm.policy, CvmPolicy::AutoApprove);
    assert_eq!(w.profile.cvm.limit, 30_000);
    assert_eq!(w.context.cvm_limit, 30_000);
    assert_eq!(w.profile.device.latency_ms, 3);
    assert!(w.context.extended);
    assert_eq!(w.atc.value(), 4_000_000_123);
    assert_eq!(w.context.atc, 4_000_000_123);
    assert_eq!(w.context.certificate.common_name(), "wallet");
    let list = w.context.revocations.as_ref().expect("the revocation list");
    assert_eq!(list.number, 1);
    let [cred] = w.context.credentials.as_slice() else {
        panic!("one credential: {:?}", w.context.credentials.len());
    };
    assert_eq!(
        (cred.site.as_str(), cred.slot, cred.parcel.as_str()),
        ("LOCKER-7", 12, "PARCEL-42")
    );
    // The key pair still signs as the certificate says (the key file read).
    assert_eq!(
        tapstack_certs::read_private_key(&dir.path().join("alice.key"))
            .unwrap()
            .verifying_key(),
        w.context.certificate.public_key()
    );
}
