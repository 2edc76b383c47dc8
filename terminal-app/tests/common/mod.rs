//! Shared by the terminal's integration tests: a shop with its PKI, a
//! terminal certificate, two phones and a `tap-host` over mutual TLS.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rand_core::OsRng;
use tapstack_certs::LeafOptions;
use tapstack_host::server::{Host, HostOptions};
use tapstack_host::store::{SledStore, Store};

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A PKI, a terminal certificate endorsed by the operator as the kiosk of
/// LOCKER-7 (`terminal-kiosk.pem`), two phones (alice holds a pickup
/// credential for LOCKER-7 slot 12, which she confirms on the phone; both
/// ask for confirmation above 30.00),
/// and a `tap-host` on a port of its own.
pub struct Shop {
    pub dir: tempfile::TempDir,
    pub phones: Vec<PathBuf>,
    pub rt: tokio::runtime::Runtime,
    pub host_addr: SocketAddr,
    pub host_store: Arc<dyn Store>,
    /// The key of the terminal's chain at the host (`chain_key`).
    pub terminal: [u8; 32],
}

impl Shop {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        tapstack_certs::init(&d.join("pki"), now(), &mut OsRng).unwrap();
        let pki = tapstack_certs::Pki::load(&d.join("pki")).unwrap();
        let t = pki
            .issue_terminal(
                "Tea House #12",
                d,
                &LeafOptions {
                    file_stem: Some("terminal".into()),
                    ..Default::default()
                },
                now(),
                &mut OsRng,
            )
            .unwrap();
        // Its TLS client certificate, where `[host]` looks by default.
        pki.issue_terminal_tls(
            &t.identity.cert,
            d,
            &LeafOptions {
                file_stem: Some("terminal-tls".into()),
                ..Default::default()
            },
            now(),
            &mut OsRng,
        )
        .unwrap();
        // The operator endorses the terminal as the kiosk of LOCKER-7: phones
        // release LOCKER-7 credentials to it (`[kiosk] endorsement`).
        pki.issue_kiosk(
            &t.identity.cert,
            &["LOCKER-7".to_string()],
            &d.join("terminal-kiosk.pem"),
            None,
            now(),
            &mut OsRng,
        )
        .unwrap();
        let mut phones = Vec::new();
        for name in ["alice", "bob"] {
            let p = tapstack_emulator::profile::create(
                &d.join("pki"),
                name,
                &d.join("phones"),
                now(),
                &mut OsRng,
            )
            .unwrap();
            let text = std::fs::read_to_string(&p)
                .unwrap()
                .replace("limit = 10000", "limit = 3000");
            std::fs::write(&p, text).unwrap();
            phones.push(p);
        }
        let cred = d.join("parcel.cred");
        let w = tapstack_emulator::profile::load(&phones[0]).unwrap();
        let req = tapstack_certs::CredentialRequest {
            wallet: &w.context.certificate,
            site: "LOCKER-7",
            slot: 12,
            parcel: "SF1",
            days: None,
        };
        pki.issue_credential(&req, &cred, now(), &mut OsRng)
            .unwrap();
        tapstack_emulator::profile::add_credential(&phones[0], &cred).unwrap();

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let host_store: Arc<dyn Store> = Arc::new(SledStore::open(&d.join("host-store")).unwrap());
        // The host's TLS certificate comes from a TLS CA of its own (not the
        // payment root); the terminal trusts tls/tls-ca.pem.
        let tls_ca = tapstack_certs::TlsCa::init(&d.join("tls"), 30, now(), &mut OsRng).unwrap();
        let server = tls_ca
            .issue_server(
                &["localhost".parse().unwrap(), "127.0.0.1".parse().unwrap()],
                30,
                now(),
                &mut OsRng,
            )
            .unwrap();
        server.write(&d.join("tls")).unwrap();
        let host = Host::from_pki(
            &pki.public(),
            host_store.clone(),
            tapstack_host::tls::TlsIdentity::from_tls_server(&server).unwrap(),
            HostOptions::default(),
        )
        .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let host_addr = listener.local_addr().unwrap();
        rt.spawn(host.serve(listener, std::future::pending::<()>()));
        Shop {
            terminal: tapstack_host::ingest::chain_key(&t.identity.cert),
            dir,
            phones,
            rt,
            host_addr,
            host_store,
        }
    }
}

/// A small tmpfs mounted for a test (a real full disk), unmounted on drop.
/// Needs root, as CI runs; `None` (the test skips, saying so) only when
/// not root and `TAPTEST_NO_MOUNT` is set — otherwise not being root fails.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        if !root {
            assert!(
                std::env::var_os("TAPTEST_NO_MOUNT").is_some(),
                "this test mounts a tmpfs and needs root (TAPTEST_NO_MOUNT=1 skips it)"
            );
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs at {}", at.display());
        Some(Tmpfs(at.to_path_buf()))
    }

    /// Write a file until the filesystem is full.
    pub fn fill(&self, name: &str) -> PathBuf {
        use std::io::Write;
        let path = self.0.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x55u8; 4096];
        while f.write_all(&chunk).and_then(|()| f.sync_data()).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
