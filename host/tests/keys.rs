//! Keys where they belong, black-box through `tap-host serve`:
//! - the host holds no CA private key: it runs `--production` from a
//!   directory whose only `*.key` is its own TLS key (issued offline by a
//!   TLS CA, not the payment root), with the issuer master key in a real
//!   SoftHSM2 token: wallets whose cryptogram keys the token derived at
//!   issuance, and the host over real HTTPS + mTLS accepting a genuine tap
//!   and declining one whose cryptogram is wrong;
//! - a PKI directory that holds CA private keys: a loud warning naming
//!   them, and a refusal under `--production`;
//! - a private key file that group or others can read stops the host, with
//!   the file named and the `chmod 600` fix.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "../../certs/tests/softhsm/mod.rs"]
mod softhsm;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand_core::OsRng;
use softhsm::{SoftHsm, KEY_LABEL};
use tapstack_certs::{
    init_with, public_files, HsmMasterKey, InitOptions, LeafOptions, TlsCa, MASTER_KEY_FILE,
};
use tapstack_host::client::HostClient;
use tapstack_host::server::unix_now;
use tapstack_host::store::{Disposition, SledStore, Store};
use tapstack_host::tls::{self, TlsIdentity};
use tapstack_host::wire::{Reason, RecordStatus};
use tapstack_protocol::crypto::{IssuerMasterKey, WalletCryptogramKey};
use tapstack_protocol::testkit::{self, Identity};
use tapstack_protocol::wallet::WalletContext;

/// `tap-host serve …`; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&std::ffi::OsStr], conf: &Path, stderr: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tap-host"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("SOFTHSM2_CONF", conf)
        .env_remove("TAPSTACK_HSM_PIN")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on https://")
        .unwrap_or_else(|| {
            panic!(
                "tap-host did not start: {line:?}\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            )
        });
    Server {
        addr: addr.parse().unwrap(),
        child,
    }
}

/// Run `tap-host` expecting it to exit (not to serve) within 20 s.
fn run_to_exit(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tap-host"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("TAPSTACK_HSM_PIN")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tap-host kept running: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        std::fs::read_to_string(&err_path).unwrap(),
    )
}

/// Every `*.key` file under `dir`, recursively.
fn key_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(key_files(&p));
        } else if p.extension().is_some_and(|x| x == "key") {
            out.push(p);
        }
    }
    out
}

fn os(v: &[std::ffi::OsString]) -> Vec<&std::ffi::OsStr> {
    v.iter().map(|s| s.as_os_str()).collect()
}

fn id(i: &tapstack_certs::Identity) -> Identity {
    Identity {
        cert: i.cert.clone(),
        key: i.key.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tap_host_runs_in_production_with_no_ca_key_and_the_master_key_in_softhsm() {
    let hsm = SoftHsm::new();
    let spec = hsm.spec(KEY_LABEL);
    let now = unix_now();
    let dir = hsm.dir.path();
    let pki_dir = dir.join("pki");

    // What `tap-certs init --hsm` does: the key is born in the token, the
    // PKI directory gets no master key file.
    let master = HsmMasterKey::generate(&spec, hsm.pin()).unwrap();
    let opts = InitOptions {
        master_key_file: false,
        ..Default::default()
    };
    let certs = init_with(&pki_dir, &opts, now, &mut OsRng).unwrap();
    assert!(!pki_dir.join(MASTER_KEY_FILE).exists());
    let leaves = dir.join("leaves");
    let t = certs
        .issue_terminal(
            "Tea House #7",
            &leaves,
            &LeafOptions::default(),
            now,
            &mut OsRng,
        )
        .unwrap();
    // What `tap-certs wallet --hsm` does: K_w derived inside the token.
    let w = certs
        .issue_wallet_with(
            &master,
            "Alice",
            &leaves,
            &LeafOptions::default(),
            now,
            &mut OsRng,
        )
        .unwrap();
    drop(master);

    let kit = testkit::Pki {
        root: id(certs.root()),
        issuer: id(certs.issuer()),
        acquirer: id(certs.acquirer()),
        operator: id(certs.operator()),
        terminal: id(&t.identity),
        kiosk: testkit::endorse_with(
            &id(certs.operator()),
            &t.identity.cert,
            &testkit::KIOSK_SITES,
            now,
            &mut OsRng,
        ),
        wallet: id(&w.leaf.identity),
        // Unknown to the test: the token holds it. Not used by run_tap.
        issuer_master_key: IssuerMasterKey([0; 16]),
        now,
    };
    let wallet = |ck: WalletCryptogramKey| {
        let mut ctx = WalletContext::new(
            w.leaf.identity.cert.clone(),
            w.leaf.identity.key.clone(),
            ck,
            certs.wallet_trust(),
        );
        ctx.cvm_limit = 10_000;
        ctx
    };
    // The phone as issued (its .ck), and the same phone with a wrong key.
    let mut genuine = wallet(w.cryptogram_key.clone());
    let mut forged = wallet(WalletCryptogramKey([0x5a; 16]));
    let mut sim = TerminalSim {
        ctx: kit.terminal_context_for(&kit.terminal),
        id: kit.terminal.clone(),
        seq: 0,
        prev: [0; 32],
    };
    let good = sim.tap(&kit, &mut genuine, pay(1250));
    // The same phone's counter, so only the cryptogram is wrong.
    forged.atc = genuine.atc;
    let bad = sim.tap(&kit, &mut forged, pay(990));
    genuine.atc = forged.atc;
    let good2 = sim.tap(&kit, &mut genuine, pay(300));

    // Offline: a TLS CA (not the payment root) issues the host's server
    // certificate. The host machine gets the PKI's public files and its TLS
    // certificate and key, nothing else.
    let tls_ca = TlsCa::init(&dir.join("tls-ca"), 30, now, &mut OsRng).unwrap();
    let host_dir = dir.join("host");
    let host_pki = host_dir.join("pki");
    std::fs::create_dir_all(&host_pki).unwrap();
    for f in public_files() {
        std::fs::copy(pki_dir.join(&f), host_pki.join(&f)).unwrap();
    }
    let host_tls = host_dir.join("tls");
    tls_ca
        .issue_server(&["localhost".parse().unwrap()], 30, now, &mut OsRng)
        .unwrap()
        .write(&host_tls)
        .unwrap();
    assert_eq!(
        key_files(&host_dir),
        vec![host_tls.join(tapstack_certs::tls::TLS_SERVER_KEY_FILE)]
    );

    // Without --hsm this PKI has no master key: the host refuses to start.
    let store = dir.join("store");
    let (ok, err) = run_to_exit(&[
        "--pki".as_ref(),
        host_pki.as_os_str(),
        "--tls".as_ref(),
        host_tls.as_os_str(),
        "--store".as_ref(),
        store.as_os_str(),
    ]);
    assert!(!ok);
    assert!(
        err.contains(MASTER_KEY_FILE) && err.contains("--hsm"),
        "{err}"
    );

    let stderr = dir.join("host.stderr");
    let spec_s = hsm.spec_str(KEY_LABEL);
    let server = serve(
        &[
            "--production".as_ref(),
            "--pki".as_ref(),
            host_pki.as_os_str(),
            "--tls".as_ref(),
            host_tls.as_os_str(),
            "--store".as_ref(),
            store.as_os_str(),
            "--hsm".as_ref(),
            spec_s.as_ref(),
            "--pin-file".as_ref(),
            hsm.pin_file.as_os_str(),
        ],
        &hsm.conf,
        &stderr,
    );
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(log.contains("PKCS#11 token"), "{log}");
    assert!(!log.contains("WARN"), "{log}");

    // The terminal connects with its TLS certificate (`tap-certs
    // terminal-tls`) and sends its signing certificate with the batch.
    let t_tls = certs
        .issue_terminal_tls(
            &t.identity.cert,
            &leaves,
            &LeafOptions::default(),
            now,
            &mut OsRng,
        )
        .unwrap();
    let tls = tls::client_config(
        tls_ca.cert_der(),
        Some(
            TlsIdentity::from_protocol(
                &t_tls.identity.cert,
                &t_tls.identity.key,
                &[&certs.acquirer().cert],
            )
            .unwrap(),
        ),
    )
    .unwrap();
    let client = HostClient::new(server.addr, tls::server_name("localhost").unwrap(), tls)
        .with_terminal_certificate(t.identity.cert.der().to_vec());
    let r = client.upload(&bytes(&[good, bad, good2])).await.unwrap();
    let verdicts: Vec<_> = r.results.iter().map(|x| (x.status, x.reason)).collect();
    assert_eq!(
        verdicts,
        vec![
            (RecordStatus::Accepted, None),
            (RecordStatus::Declined, Some(Reason::BadCryptogram)),
            (RecordStatus::Accepted, None),
        ]
    );
    assert_eq!(r.acked_seq, 3);
    drop(server);

    // What the host stored says the same.
    let db = SledStore::open(&store).unwrap();
    let stored: Vec<_> = db
        .records()
        .unwrap()
        .into_iter()
        .map(|r| r.disposition)
        .collect();
    assert_eq!(
        stored,
        vec![
            Disposition::Accepted,
            Disposition::Declined(Reason::BadCryptogram),
            Disposition::Accepted
        ]
    );
}

#[test]
fn tap_host_warns_loudly_about_key_files_in_the_pki_directory() {
    let fx = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let stderr = dir.path().join("stderr");
    let store = dir.path().join("store");
    // The host never reads the CA keys: one that group and others can read
    // does not stop it (it would if the host loaded it) — it is named in
    // the warning like the others.
    let root_key = fx.pki_dir.join("root.key");
    std::fs::set_permissions(&root_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = serve(
        &[
            "--pki".as_ref(),
            fx.pki_dir.as_os_str(),
            "--tls".as_ref(),
            fx.tls_dir.as_os_str(),
            "--store".as_ref(),
            store.as_os_str(),
        ],
        Path::new("/nonexistent"),
        &stderr,
    );
    drop(server);
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        log.contains("WARN") && log.contains(MASTER_KEY_FILE),
        "{log}"
    );
    let ca_warning = log
        .lines()
        .find(|l| l.contains("CA private keys"))
        .unwrap_or_else(|| panic!("no CA key warning: {log}"));
    for f in ["root.key", "issuer.key", "acquirer.key", "operator.key"] {
        let path = fx.pki_dir.join(f);
        assert!(
            ca_warning.contains(&path.display().to_string()),
            "{f}: {log}"
        );
    }
}

#[test]
fn tap_host_production_refuses_ca_keys_and_a_master_key_file() {
    let fx = Fixture::new();
    let store = fx.dir.path().join("store");
    let args = |pki: &Path| -> Vec<std::ffi::OsString> {
        vec![
            "--production".into(),
            "--pki".into(),
            pki.into(),
            "--tls".into(),
            fx.tls_dir.clone().into(),
            "--store".into(),
            store.clone().into(),
        ]
    };
    // The full PKI: refused, every CA key named.
    let (ok, err) = run_to_exit(&os(&args(&fx.pki_dir)));
    assert!(!ok);
    assert!(err.contains("--production"), "{err}");
    for f in ["root.key", "issuer.key", "acquirer.key", "operator.key"] {
        assert!(
            err.contains(&fx.pki_dir.join(f).display().to_string()),
            "{f}: {err}"
        );
    }
    assert!(!store.exists(), "refused before opening the store");
    // Only the operator key left behind: still refused, naming it alone.
    let partial = fx.dir.path().join("partial");
    std::fs::create_dir(&partial).unwrap();
    for f in public_files()
        .into_iter()
        .chain([MASTER_KEY_FILE.to_owned(), "operator.key".to_owned()])
    {
        std::fs::copy(fx.pki_dir.join(&f), partial.join(&f)).unwrap();
    }
    let (ok, err) = run_to_exit(&os(&args(&partial)));
    assert!(!ok);
    assert!(
        err.contains("operator.key") && !err.contains("root.key"),
        "{err}"
    );
    // No CA key, but the master key is a file and there is no --hsm.
    std::fs::remove_file(partial.join("operator.key")).unwrap();
    let (ok, err) = run_to_exit(&os(&args(&partial)));
    assert!(!ok);
    assert!(
        err.contains("--hsm") && err.contains(MASTER_KEY_FILE),
        "{err}"
    );
    // Without --production the same directory serves (with the file-key WARN).
    let stderr = fx.dir.path().join("stderr");
    let mut dev = args(&partial);
    dev.remove(0);
    let server = serve(&os(&dev), Path::new("/nonexistent"), &stderr);
    drop(server);
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert!(!log.contains("CA private keys"), "{log}");
}

#[test]
fn tap_host_needs_a_tls_certificate_and_signs_none() {
    let fx = Fixture::new();
    let store = fx.dir.path().join("store");
    let (ok, err) = run_to_exit(&[
        "--pki".as_ref(),
        fx.pki_dir.as_os_str(),
        "--store".as_ref(),
        store.as_os_str(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("--tls DIR") && err.contains("tap-certs tls-server"),
        "{err}"
    );
    // A --tls directory without the server files names the missing one.
    let empty = fx.dir.path().join("empty-tls");
    std::fs::create_dir(&empty).unwrap();
    let (ok, err) = run_to_exit(&[
        "--pki".as_ref(),
        fx.pki_dir.as_os_str(),
        "--tls".as_ref(),
        empty.as_os_str(),
        "--store".as_ref(),
        store.as_os_str(),
    ]);
    assert!(!ok);
    assert!(err.contains("tls-server.pem"), "{err}");
}

#[test]
fn tap_host_refuses_a_group_readable_key_file() {
    let fx = Fixture::new();
    let store = fx.dir.path().join("store");
    let key = fx.pki_dir.join(MASTER_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (ok, err) = run_to_exit(&[
        "--pki".as_ref(),
        fx.pki_dir.as_os_str(),
        "--tls".as_ref(),
        fx.tls_dir.as_os_str(),
        "--store".as_ref(),
        store.as_os_str(),
    ]);
    assert!(!ok);
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The host's own TLS key too.
    let tls_cert = fx.tls_dir.join(tapstack_certs::tls::TLS_SERVER_CERT_FILE);
    let tls_key = fx.tls_dir.join(tapstack_certs::tls::TLS_SERVER_KEY_FILE);
    std::fs::set_permissions(&tls_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, err) = run_to_exit(&[
        "--pki".as_ref(),
        fx.pki_dir.as_os_str(),
        "--store".as_ref(),
        store.as_os_str(),
        "--tls-cert".as_ref(),
        tls_cert.as_os_str(),
        "--tls-key".as_ref(),
        tls_key.as_os_str(),
    ]);
    assert!(!ok);
    assert!(
        err.contains(&format!("chmod 600 {}", tls_key.display())),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hsm_fails_the_batch_instead_of_declining_taps() {
    use cryptoki::object::{Attribute, ObjectClass};
    let fx = Fixture::new();
    let hsm = SoftHsm::new();
    // The fixture's file key, moved into the token: the same wallets verify.
    let key = HsmMasterKey::import(
        &hsm.spec(KEY_LABEL),
        hsm.pin(),
        fx.certs.issuer_master_key().unwrap(),
    )
    .unwrap();
    let running = Running::start_with(
        &fx,
        tapstack_host::server::HostOptions {
            issuer_keys: Some(std::sync::Arc::new(key)),
            ..Default::default()
        },
    )
    .await;
    assert!(running
        .host
        .ingestor()
        .issuer_key_location()
        .contains("PKCS#11"));
    let mut sim = fx.sim(fx.kit.terminal.clone());
    let records = sim.pays(&fx, 2);
    let client = fx.client(running.addr, Some(&fx.kit.terminal));
    let r = client.upload(&bytes(&records[..1])).await.unwrap();
    assert_eq!(r.accepted, 1);

    // Someone destroys the key in the token under the running host.
    let ctx = cryptoki::context::Pkcs11::new(&hsm.module).unwrap();
    let _ = ctx.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ));
    let slot = ctx.get_slots_with_token().unwrap()[0];
    let session = ctx.open_rw_session(slot).unwrap();
    let _ = session.login(
        cryptoki::session::UserType::User,
        Some(&softhsm::PIN.into()),
    );
    for h in session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(KEY_LABEL.as_bytes().to_vec()),
        ])
        .unwrap()
    {
        session.destroy_object(h).unwrap();
    }
    match client.upload(&bytes(&records[1..])).await {
        Err(tapstack_upload::Error::Refused { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (503, "issuer_key_unavailable"));
        }
        other => panic!("{other:?}"),
    }
    // Nothing of the failed batch was stored or declined.
    assert_eq!(running.records().len(), 1);
    running.stop().await;
}
