//! A real SoftHSM2 token in a temporary directory: its own softhsm2.conf
//! (`SOFTHSM2_CONF`), a token initialised with `softhsm2-util`, and a
//! 0600 PIN file. Debian package `softhsm2` (scripts/ensure-deps.sh).
//! Shared by certs/tests and host/tests (`#[path]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const TOKEN: &str = "tapstack-test";
pub const PIN: &str = "4711-user";
pub const SO_PIN: &str = "0815-so";
pub const KEY_LABEL: &str = "issuer-master";

/// Where Debian (and others) put the SoftHSM2 PKCS#11 module;
/// `TAPSTACK_SOFTHSM_MODULE` overrides.
pub fn module() -> PathBuf {
    if let Some(p) = std::env::var_os("TAPSTACK_SOFTHSM_MODULE") {
        return PathBuf::from(p);
    }
    let candidates = [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "libsofthsm2.so not found: install Debian's softhsm2 (scripts/ensure-deps.sh test)"
            )
        })
}

/// A temporary SoftHSM2 with one initialised token.
pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub module: PathBuf,
    pub pin_file: PathBuf,
}

impl SoftHsm {
    /// Make the token directory and configuration, point this process's
    /// `SOFTHSM2_CONF` at it (each test runs in its own process under
    /// nextest) and initialise token [`TOKEN`].
    pub fn new() -> SoftHsm {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                TOKEN,
                "--pin",
                PIN,
                "--so-pin",
                SO_PIN,
            ])
            .output()
            .expect("softhsm2-util (Debian softhsm2) must be installed");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.path().join("pin");
        write_private(&pin_file, format!("{PIN}\n").as_bytes());
        SoftHsm {
            module: module(),
            dir,
            conf,
            pin_file,
        }
    }

    /// `MODULE:TOKEN:LABEL`
    pub fn spec_str(&self, label: &str) -> String {
        format!("{}:{TOKEN}:{label}", self.module.display())
    }

    pub fn spec(&self, label: &str) -> tapstack_certs::HsmSpec {
        self.spec_str(label).parse().unwrap()
    }

    pub fn pin(&self) -> tapstack_certs::hsm::AuthPin {
        tapstack_certs::hsm::AuthPin::from(PIN)
    }
}

/// Write a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}
