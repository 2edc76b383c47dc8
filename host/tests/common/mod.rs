//! Shared test fixtures: a real `tap-certs` PKI in a temp dir (valid now,
//! since mutual TLS checks certificates against the real clock), terminals
//! that make real signed records with the protocol's loopback tap, and an
//! in-process host on 127.0.0.1:0.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rand_core::OsRng;
use tapstack_certs::LeafOptions;
use tapstack_host::client::HostClient;
use tapstack_host::server::{unix_now, Host, HostOptions, Limits};
use tapstack_host::store::{SledStore, Store, StoredRecord};
use tapstack_host::tls::{self, TlsIdentity};
use tapstack_protocol::record::TransactionRecord;
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency, Scenario};
use tapstack_protocol::terminal::{TapParams, TerminalContext};
use tapstack_protocol::testkit::{self, Identity};
use tapstack_protocol::wallet::WalletContext;
use tempfile::TempDir;

pub fn cny(minor: u64) -> Amount {
    Amount {
        minor,
        currency: Currency::new("CNY").unwrap(),
    }
}

pub fn pay(minor: u64) -> Scenario {
    Scenario::Pay { amount: cny(minor) }
}

pub fn cart() -> Cart {
    Cart {
        currency: Currency::new("CNY").unwrap(),
        items: vec![
            CartItem {
                sku: "TEA-01".into(),
                name: "Jasmine tea".into(),
                qty: 2,
                unit_price: 800,
            },
            CartItem {
                sku: "BUN-07".into(),
                name: "Pork bun".into(),
                qty: 3,
                unit_price: 450,
            },
        ],
    }
}

/// A PKI directory made by `tapstack_certs::init` at the real "now".
pub struct Fixture {
    pub dir: TempDir,
    pub pki_dir: PathBuf,
    pub certs: tapstack_certs::Pki,
    /// The host's TLS CA (`tap-certs tls-ca`) in `dir/tls`, separate from
    /// the payment root, and the server certificate it issued (localhost,
    /// 127.0.0.1) in `dir/tls/tls-server.{pem,key}`.
    pub tls_dir: PathBuf,
    pub tls_ca: tapstack_certs::TlsCa,
    pub tls_server: tapstack_certs::TlsServer,
    /// The same PKI as the protocol's testkit sees it (for `run_tap`).
    pub kit: testkit::Pki,
    counter: std::sync::atomic::AtomicUsize,
}

fn kit_id(id: &tapstack_certs::Identity) -> Identity {
    Identity {
        cert: id.cert.clone(),
        key: id.key.clone(),
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        let now = unix_now();
        let certs = tapstack_certs::init(&pki_dir, now, &mut OsRng).unwrap();
        let leaves = dir.path().join("leaves");
        let t = certs
            .issue_terminal(
                "Tea House #1",
                &leaves,
                &LeafOptions::default(),
                now,
                &mut OsRng,
            )
            .unwrap();
        let w = certs
            .issue_wallet(
                "wallet 0",
                &leaves,
                &LeafOptions::default(),
                now,
                &mut OsRng,
            )
            .unwrap();
        let kit = testkit::Pki {
            root: kit_id(certs.root()),
            issuer: kit_id(certs.issuer()),
            acquirer: kit_id(certs.acquirer()),
            operator: kit_id(certs.operator()),
            terminal: kit_id(&t.identity),
            kiosk: testkit::endorse_with(
                &kit_id(certs.operator()),
                &t.identity.cert,
                &testkit::KIOSK_SITES,
                now,
                &mut OsRng,
            ),
            wallet: kit_id(&w.leaf.identity),
            issuer_master_key: certs.issuer_master_key().unwrap().clone(),
            now,
        };
        let tls_dir = dir.path().join("tls");
        let tls_ca = tapstack_certs::TlsCa::init(&tls_dir, 30, now, &mut OsRng).unwrap();
        let tls_server = tls_ca
            .issue_server(
                &["localhost".parse().unwrap(), "127.0.0.1".parse().unwrap()],
                30,
                now,
                &mut OsRng,
            )
            .unwrap();
        tls_server.write(&tls_dir).unwrap();
        Fixture {
            dir,
            pki_dir,
            certs,
            tls_dir,
            tls_ca,
            tls_server,
            kit,
            counter: Default::default(),
        }
    }

    fn next(&self) -> usize {
        self.counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// A new terminal certificate of this PKI.
    pub fn terminal(&self, name: &str) -> Identity {
        let n = self.next();
        let opts = LeafOptions {
            days: None,
            file_stem: Some(format!("terminal-{n}")),
        };
        let t = self
            .certs
            .issue_terminal(
                name,
                &self.dir.path().join("leaves"),
                &opts,
                self.kit.now,
                &mut OsRng,
            )
            .unwrap();
        kit_id(&t.identity)
    }

    /// A new wallet of this PKI, ready to tap.
    pub fn wallet(&self) -> WalletContext {
        let w = self.kit.new_wallet(&mut OsRng);
        self.kit.wallet_context_for(&w)
    }

    /// A terminal driver; every terminal here is also the operator-endorsed
    /// kiosk of the test sites (protocol v2: wallets release credentials
    /// only to endorsed kiosks).
    pub fn sim(&self, id: Identity) -> TerminalSim {
        let mut ctx = self.kit.terminal_context_for(&id);
        ctx.endorsement = Some(self.kit.endorse(
            &id.cert,
            &["LOCKER-7", "LOCKER-8", "MALL-1"],
            &mut OsRng,
        ));
        TerminalSim {
            ctx,
            id,
            seq: 0,
            prev: [0; 32],
        }
    }

    /// The TLS client certificate of terminal `id` (`tap-certs
    /// terminal-tls`): same terminal ID, its own key, clientAuth.
    pub fn terminal_tls(&self, id: &Identity) -> Identity {
        let n = self.next();
        let t = self
            .certs
            .issue_terminal_tls(
                &id.cert,
                &self.dir.path().join("leaves"),
                &LeafOptions {
                    days: None,
                    file_stem: Some(format!("terminal-tls-{n}")),
                },
                self.kit.now,
                &mut OsRng,
            )
            .unwrap();
        kit_id(&t.identity)
    }

    /// Client TLS config presenting `id` exactly as given (with its CA
    /// chain), or none.
    pub fn client_tls_as(&self, id: Option<&Identity>) -> Arc<rustls::ClientConfig> {
        let identity = id.map(|id| {
            let ca = if id.cert.role() == tapstack_protocol::pki::Role::Operator {
                vec![]
            } else {
                vec![&self.certs.acquirer().cert]
            };
            TlsIdentity::from_protocol(&id.cert, &id.key, &ca).unwrap()
        });
        tls::client_config(self.tls_ca.cert_der(), identity).unwrap()
    }

    /// Client TLS config for `id`: a terminal connects with its TLS
    /// certificate ([`Fixture::terminal_tls`]), anything else as itself.
    pub fn client_tls(&self, id: Option<&Identity>) -> Arc<rustls::ClientConfig> {
        match id {
            Some(t) if t.cert.role() == tapstack_protocol::pki::Role::Terminal => {
                self.client_tls_as(Some(&self.terminal_tls(t)))
            }
            other => self.client_tls_as(other),
        }
    }

    /// A client for `id`; a terminal connects with its TLS certificate and
    /// sends its signing certificate with every batch.
    pub fn client(&self, addr: SocketAddr, id: Option<&Identity>) -> HostClient {
        let c = HostClient::new(
            addr,
            tls::server_name("localhost").unwrap(),
            self.client_tls(id),
        );
        match id {
            Some(t) if t.cert.role() == tapstack_protocol::pki::Role::Terminal => {
                c.with_terminal_certificate(t.cert.der().to_vec())
            }
            _ => c,
        }
    }

    pub fn operator(&self) -> Identity {
        kit_id(self.certs.operator())
    }
}

/// A terminal that taps wallets and chains signed records.
pub struct TerminalSim {
    pub id: Identity,
    pub ctx: TerminalContext,
    pub seq: u64,
    pub prev: [u8; 32],
}

impl TerminalSim {
    /// Run a tap with `wallet` and chain its record.
    pub fn tap(
        &mut self,
        kit: &testkit::Pki,
        wallet: &mut WalletContext,
        scenario: Scenario,
    ) -> TransactionRecord {
        let cart_for = matches!(scenario, Scenario::Order { .. }).then(cart);
        let params = TapParams {
            scenario,
            cvm_limit: 1_000_000,
            send_certificate: true,
        };
        // A pickup needs the user's presence: the phone is armed (biometric).
        if matches!(params.scenario, Scenario::Pickup { .. }) {
            wallet.arm(kit.now, 60);
        }
        let run = kit.run_tap(&mut self.ctx, wallet, params, &mut OsRng);
        let outcome = run
            .outcome
            .unwrap_or_else(|| panic!("tap failed: {:?}", run.error));
        self.seq += 1;
        let order = cart_for.as_ref().map(|_| format!("A{}", self.seq));
        let r = TransactionRecord::new(
            &outcome,
            &self.id.cert,
            &self.id.key,
            self.seq,
            self.prev,
            kit.now,
            cart_for,
            order,
        );
        self.prev = r.hash();
        r
    }

    /// `n` pay records from fresh wallets.
    pub fn pays(&mut self, fx: &Fixture, n: usize) -> Vec<TransactionRecord> {
        (0..n)
            .map(|i| self.tap(&fx.kit, &mut fx.wallet(), pay(100 + i as u64)))
            .collect()
    }
}

pub fn bytes(records: &[TransactionRecord]) -> Vec<Vec<u8>> {
    use tapstack_protocol::Codec;
    records.iter().map(Codec::to_bytes).collect()
}

/// A host serving in this process.
pub struct Running {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub host: Arc<Host>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pub store_dir: TempDir,
}

impl Running {
    pub async fn start(fx: &Fixture, limits: Limits) -> Running {
        Self::start_with(
            fx,
            HostOptions {
                limits,
                ..Default::default()
            },
        )
        .await
    }

    pub async fn start_with(fx: &Fixture, opts: HostOptions) -> Running {
        let store_dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(store_dir.path()).unwrap());
        let certs = tapstack_certs::PublicPki::load(&fx.pki_dir).unwrap();
        let tls = TlsIdentity::from_tls_server(&fx.tls_server).unwrap();
        let host = Host::from_pki(&certs, store.clone(), tls, opts).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let h = host.clone();
        let task = tokio::spawn(async move {
            h.serve(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Running {
            addr,
            store,
            host,
            stop: Some(tx),
            task: Some(task),
            store_dir,
        }
    }

    pub fn records(&self) -> Vec<StoredRecord> {
        self.store.records().unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// `tap-host serve` as a child process on the fixture's PKI and TLS
/// identity, `store` a sled directory or a `postgres://` URL; SIGKILLed on
/// drop (and by [`HostProcess::kill9`], as a crash).
pub struct HostProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// Where it serves `GET /metrics`, when started with it.
    pub metrics: Option<SocketAddr>,
}

impl HostProcess {
    pub fn start(fx: &Fixture, store: impl AsRef<std::ffi::OsStr>) -> HostProcess {
        Self::start_on(fx, store, "127.0.0.1:0", std::process::Stdio::inherit())
    }

    /// On `listen` (a fixed port, so a restarted instance is where a
    /// balancer expects it), its stderr (the log) to `stderr`.
    pub fn start_on(
        fx: &Fixture,
        store: impl AsRef<std::ffi::OsStr>,
        listen: &str,
        stderr: impl Into<std::process::Stdio>,
    ) -> HostProcess {
        Self::start_args(fx, store, listen, stderr, false)
    }

    /// With `GET /metrics` on a free port too.
    pub fn start_with_metrics(fx: &Fixture, store: impl AsRef<std::ffi::OsStr>) -> HostProcess {
        Self::start_args(
            fx,
            store,
            "127.0.0.1:0",
            std::process::Stdio::inherit(),
            true,
        )
    }

    fn start_args(
        fx: &Fixture,
        store: impl AsRef<std::ffi::OsStr>,
        listen: &str,
        stderr: impl Into<std::process::Stdio>,
        metrics: bool,
    ) -> HostProcess {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tap-host"));
        if metrics {
            cmd.args(["serve", "--metrics", "127.0.0.1:0"]);
        } else {
            cmd.arg("serve");
        }
        let mut child = cmd
            .args(["--listen", listen, "--pki"])
            .arg(&fx.pki_dir)
            .arg("--tls")
            .arg(&fx.tls_dir)
            .arg("--store")
            .arg(store)
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on https://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        let metrics = metrics.then(|| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            line.trim()
                .strip_prefix("metrics on http://")
                .and_then(|a| a.strip_suffix("/metrics"))
                .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
                .parse()
                .unwrap()
        });
        HostProcess {
            child,
            addr,
            metrics,
        }
    }

    /// SIGKILL and reap it (a crash; also how the tests stop it).
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn stop(self) {
        self.kill9();
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /metrics` of a host started with metrics: the body.
pub fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
