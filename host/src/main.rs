//! `tap-host`: the tapstack upload host. Thin: parse arguments, start the
//! runtime, call `tapstack_host`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tapstack_host::ingest::VerifyMode;
use tapstack_host::ledger::Ledger;
use tapstack_host::server::{Host, HostOptions, Limits};
use tapstack_host::store::{AtcPolicy, PgStore, Store, StoreSpec};
use tapstack_host::tls::TlsIdentity;

#[derive(Debug, Parser)]
#[command(
    name = "tap-host",
    version,
    about = "The tapstack upload host: verify, de-duplicate, store, publish revocations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Verifier {
    /// The protocol's checks with ring signatures (fast; the default).
    Ring,
    /// The protocol crate's verify_record itself (RustCrypto).
    Reference,
}

// Parsed once at start; the size of `Serve` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the upload API over HTTPS with mutual TLS.
    Serve {
        /// The PKI directory: its certificates (root, issuer, acquirer,
        /// operator .pem) and revocations.tlv; issuer-master.key only without
        /// --hsm. The host reads no CA private key: a directory that holds
        /// any (root.key …) gets a warning, and --production refuses it.
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        /// The store: a directory (sled, embedded; created if missing; one
        /// instance) or a PostgreSQL URL, `postgres://user@host:port/db`
        /// (shared by every instance on it; the schema is brought up to
        /// date at start).
        #[arg(long, value_name = "DIR|URL")]
        store: String,
        /// Connections to PostgreSQL of this instance.
        #[arg(long, value_name = "N", default_value_t = tapstack_host::store::DEFAULT_POOL_SIZE)]
        pool_size: usize,
        /// Serve Prometheus metrics (`GET /metrics`, plain HTTP) on this
        /// address too; port 0 picks a free port (printed on stdout after
        /// the upload address).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
        /// Address to listen on; port 0 picks a free port (printed on stdout).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Directory holding the TLS server certificate and key as
        /// `tap-certs tls-server` writes them: DIR/tls-server.pem and
        /// DIR/tls-server.key. Or give --tls-cert and --tls-key.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["tls_cert", "tls_key"])]
        tls: Option<PathBuf>,
        /// Server certificate chain (PEM), issued by the TLS CA (`tap-certs tls-server`).
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// Server private key (PEM, mode 0600).
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Production: refuse to start when the PKI directory holds a CA
        /// private key or when the issuer master key would come from a file
        /// (give --hsm).
        #[arg(long)]
        production: bool,
        /// Signature verifier of the ingest path.
        #[arg(long, value_enum, default_value = "ring")]
        verifier: Verifier,
        /// Largest batch body in bytes.
        #[arg(long, value_name = "BYTES", default_value_t = tapstack_host::wire::DEFAULT_MAX_BODY)]
        max_body: usize,
        /// Connections served at once.
        #[arg(long, value_name = "N", default_value_t = 1024)]
        max_connections: usize,
        /// Batches verified and stored at once.
        #[arg(long, value_name = "N", default_value_t = 16)]
        ingest_concurrency: usize,
        /// Seconds to receive a request body.
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        body_timeout: u64,
        /// How far a wallet's ATC may be from its highest settled ATC, ahead
        /// (beyond: declined atc_jump) or behind (beyond: declined atc_regression).
        #[arg(long, value_name = "N", default_value_t = tapstack_host::store::DEFAULT_ATC_WINDOW,
              value_parser = clap::value_parser!(u32).range(1..))]
        atc_window: u32,
        /// The issuer master key in a PKCS#11 token (MODULE:TOKEN:LABEL, as
        /// made by `tap-certs init --hsm`): wallets' cryptogram keys are
        /// derived inside the token and the PKI needs no issuer-master.key.
        /// Without it the host reads issuer-master.key (development only).
        #[arg(long, value_name = "MODULE:TOKEN:LABEL")]
        hsm: Option<tapstack_certs::HsmSpec>,
        /// File holding the token's user PIN (mode 0600); else $TAPSTACK_HSM_PIN.
        #[arg(long, value_name = "FILE", requires = "hsm")]
        pin_file: Option<PathBuf>,
    },
    /// Bring a PostgreSQL store's schema up to date (host/migrations) and
    /// print its version. `serve` does it too; run it first when several
    /// instances start at once, or to check a database.
    Migrate {
        #[arg(long, value_name = "URL")]
        store: String,
    },
    /// Report accepted records per terminal, scenario and day. A PostgreSQL
    /// store is read while instances serve it; a sled store only with its
    /// server stopped (sled locks its directory).
    Ledger {
        #[arg(long, value_name = "DIR|URL")]
        store: String,
        /// JSON for machines.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    // The error and its causes in one line: no backtrace for a user error,
    // whatever RUST_BACKTRACE says (a panic still prints its own).
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tap-host: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs on stderr: one JSON object a line when stderr is not a terminal
/// (journald, a collector), readable lines when it is; `info` unless
/// `TAP_HOST_LOG=warn|debug|…`.
fn init_logs() {
    let level = std::env::var("TAP_HOST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    init_logs();
    match cli.command {
        Command::Serve {
            pki,
            store,
            pool_size,
            metrics,
            listen,
            tls,
            tls_cert,
            tls_key,
            production,
            verifier,
            max_body,
            max_connections,
            ingest_concurrency,
            body_timeout,
            atc_window,
            hsm,
            pin_file,
        } => {
            let (tls_cert, tls_key) = match (tls, tls_cert, tls_key) {
                (Some(dir), _, _) => (
                    dir.join(tapstack_certs::tls::TLS_SERVER_CERT_FILE),
                    dir.join(tapstack_certs::tls::TLS_SERVER_KEY_FILE),
                ),
                (None, Some(c), Some(k)) => (c, k),
                _ => anyhow::bail!(
                    "give the host's TLS certificate: --tls DIR (DIR/tls-server.pem and \
                     DIR/tls-server.key) or --tls-cert PEM --tls-key PEM; make them offline with \
                     `tap-certs tls-ca --out DIR` and `tap-certs tls-server --ca DIR --name HOST --out DIR` \
                     (the host signs no certificate)"
                ),
            };
            let ca_keys = tapstack_certs::ca_key_files(&pki);
            if !ca_keys.is_empty() {
                let names: Vec<String> = ca_keys.iter().map(|p| p.display().to_string()).collect();
                if production {
                    anyhow::bail!(
                        "--production: the PKI directory holds CA private keys: {}. The host \
                         needs none of them; keep them offline with tap-certs and give the host \
                         a copy of the directory without *.key files",
                        names.join(", ")
                    );
                }
                tracing::warn!(
                    "the PKI directory holds CA private keys: {}. The host \
                     reads none of them, but anyone who breaks into this machine can use them \
                     to mint terminals, wallets and credentials. Keep them offline with \
                     tap-certs and give the host only the *.pem files and revocations.tlv \
                     (--production refuses to start like this).",
                    names.join(", ")
                );
            }
            let master_file = pki.join(tapstack_certs::MASTER_KEY_FILE);
            if production && (hsm.is_none() || master_file.exists()) {
                anyhow::bail!(
                    "--production: the issuer master key must be in an HSM and nowhere else: \
                     give --hsm MODULE:TOKEN:LABEL (and --pin-file or $TAPSTACK_HSM_PIN) and \
                     remove {}",
                    master_file.display()
                );
            }
            let pki = tapstack_certs::PublicPki::load(&pki)
                .with_context(|| format!("loading the PKI certificates in {}", pki.display()))?;
            let issuer_keys: Option<Arc<dyn tapstack_certs::IssuerKeys>> = match &hsm {
                Some(spec) => {
                    let pin = tapstack_certs::hsm::read_pin(pin_file.as_deref())?;
                    let key = tapstack_certs::HsmMasterKey::open(spec, pin)
                        .with_context(|| format!("opening the issuer master key {spec}"))?;
                    tracing::info!(
                        "issuer master key: {}",
                        tapstack_certs::IssuerKeys::location(&key)
                    );
                    Some(Arc::new(key))
                }
                None => {
                    let path = pki.path(tapstack_certs::MASTER_KEY_FILE);
                    tracing::warn!(
                        "the issuer master key is in a file, {}, and in this \
                         process's memory: anyone who reads either can make every wallet's \
                         cryptogram key. Development only: in production keep it in an HSM \
                         (tap-certs init --hsm, tap-host serve --hsm MODULE:TOKEN:LABEL).",
                        path.display()
                    );
                    None
                }
            };
            let spec = StoreSpec::parse(&store);
            let db: Arc<dyn Store> = spec
                .open(pool_size)
                .with_context(|| format!("opening the store {spec}"))?;
            let tls = TlsIdentity::from_pem_files(&tls_cert, &tls_key)?;
            let limits = Limits {
                max_body,
                max_connections,
                ingest_concurrency,
                body_timeout: Duration::from_secs(body_timeout),
                ..Limits::default()
            };
            let verify_mode = match verifier {
                Verifier::Ring => VerifyMode::Ring,
                Verifier::Reference => VerifyMode::Reference,
            };
            let host = Host::from_pki(
                &pki,
                db,
                tls,
                HostOptions {
                    issuer_keys,
                    verify_mode,
                    limits,
                    atc_policy: AtcPolicy { window: atc_window },
                },
            )?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                let addr = listener.local_addr()?;
                println!("listening on https://{addr}");
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let scraper = match metrics {
                    Some(m) => {
                        let l = tokio::net::TcpListener::bind(m)
                            .await
                            .with_context(|| format!("binding --metrics {m}"))?;
                        println!("metrics on http://{}/metrics", l.local_addr()?);
                        let mut stop = stop_rx.clone();
                        Some(tokio::spawn(host.clone().serve_metrics(l, async move {
                            let _ = stop.wait_for(|s| *s).await;
                        })))
                    }
                    None => None,
                };
                std::io::stdout().flush()?;
                host.serve(listener, shutdown_signal()).await?;
                let _ = stop_tx.send(true);
                if let Some(s) = scraper {
                    let _ = s.await;
                }
                anyhow::Ok(())
            })?;
        }
        Command::Migrate { store } => {
            let StoreSpec::Postgres(url) = StoreSpec::parse(&store) else {
                anyhow::bail!(
                    "migrate is for a PostgreSQL store (postgres://…); a sled store needs none"
                );
            };
            let shown = StoreSpec::Postgres(url.clone()).to_string();
            let db =
                PgStore::connect_and_migrate(&url).with_context(|| format!("migrating {shown}"))?;
            println!(
                "{shown}: schema version {} ({} migration(s) applied now)",
                db.0, db.1
            );
        }
        Command::Ledger { store, json } => {
            let spec = StoreSpec::parse(&store);
            let db = spec.open_existing().map_err(|e| match e {
                // A mistyped path or an empty database: said as such, not
                // reported as a ledger of zero.
                tapstack_host::Error::Invalid {
                    field: "store",
                    reason,
                } => anyhow::anyhow!("no store at {spec}: {reason}"),
                e => anyhow::Error::new(e).context(match &spec {
                    StoreSpec::Sled(_) => {
                        format!("opening the store {spec} (is tap-host serve running on it?)")
                    }
                    StoreSpec::Postgres(_) => format!("opening the store {spec}"),
                }),
            })?;
            let ledger = Ledger::from_records(&db.records()?);
            if json {
                println!("{}", serde_json::to_string_pretty(&ledger)?);
            } else {
                print!("{}", ledger.to_text());
            }
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
