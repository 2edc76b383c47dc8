//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use tapstack_certs::{init, IssuedLeaf, IssuedWallet, LeafOptions, Pki};

/// The fixed time of tests that do not involve outside tools.
pub const NOW: u64 = 1_780_000_000;

/// The real time, for tests that run openssl (which uses the system clock).
pub fn real_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A PKI in `<tmp>/pki` plus a terminal ("Tea House #12" as `terminal.*`)
/// and a wallet (`wallet.*`) in `<tmp>/out`.
pub struct Setup {
    pub tmp: tempfile::TempDir,
    pub pki_dir: PathBuf,
    pub out: PathBuf,
    pub pki: Pki,
    pub terminal: IssuedLeaf,
    pub wallet: IssuedWallet,
}

pub fn setup(now: u64) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let pki_dir = tmp.path().join("pki");
    let out = tmp.path().join("out");
    let mut rng = rand_core::OsRng;
    init(&pki_dir, now, &mut rng).unwrap();
    let pki = Pki::load(&pki_dir).unwrap();
    let opts = |stem: &str| LeafOptions {
        days: None,
        file_stem: Some(stem.to_owned()),
    };
    let terminal = pki
        .issue_terminal("Tea House #12", &out, &opts("terminal"), now, &mut rng)
        .unwrap();
    let wallet = pki
        .issue_wallet("alice phone", &out, &opts("wallet"), now, &mut rng)
        .unwrap();
    Setup {
        tmp,
        pki_dir,
        out,
        pki,
        terminal,
        wallet,
    }
}

/// Run openssl in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("/usr/bin/openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run /usr/bin/openssl")
}

/// Run openssl in `dir` and require success.
pub fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let out = openssl(dir, args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copy every file of `from` into a new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
