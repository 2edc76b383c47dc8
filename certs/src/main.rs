//! `tap-certs`: the tapstack development PKI on the command line. Thin: parse
//! arguments, call `tapstack_certs`, print.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rand_core::OsRng;
use tapstack_certs::{
    init_with, inspect, parse_time, read_certificate, CredentialRequest, HsmMasterKey, InitOptions,
    LeafOptions, Pki, RevokeTarget, CA_DAYS,
};

#[derive(Debug, Parser)]
#[command(
    name = "tap-certs",
    version,
    about = "The tapstack development PKI: root, CAs, terminals, wallets, pickup credentials, revocation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new PKI (root, issuer, acquirer, operator, issuer master key, revocation list) in DIR.
    Init {
        /// Directory to create the PKI in (must not hold one already).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity of the CA and operator certificates, in days.
        #[arg(long, value_name = "N", default_value_t = CA_DAYS)]
        ca_days: u64,
        #[command(flatten)]
        hsm: HsmArgs,
    },
    /// Issue a terminal certificate (signed by the acquirer); NAME is the merchant name phones show.
    Terminal {
        #[command(flatten)]
        leaf: LeafArgs,
        /// The terminal's stable ID (subject serialNumber; 1 to 64 letters,
        /// digits or '-'): the host keeps one chain of records per ID.
        /// Default: 16 random hex digits.
        #[arg(long, value_name = "ID", conflicts_with = "renew")]
        id: Option<String>,
        /// Renew this terminal certificate: same merchant name and ID, new key.
        #[arg(long, value_name = "OLD.pem")]
        renew: Option<PathBuf>,
    },
    /// Issue a terminal's TLS client certificate (signed by the acquirer;
    /// same terminal ID, its own key, extended key usage clientAuth) for
    /// `[host] tls_certificate`/`tls_key`. The host accepts only these as
    /// TLS clients; the terminal certificate signs transcripts and records
    /// and is refused as a TLS client certificate.
    TerminalTls {
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        /// The terminal certificate (from `tap-certs terminal`).
        #[arg(long, value_name = "CERT.pem")]
        terminal: PathBuf,
        /// Output directory for ID-tls.pem and ID-tls.key.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days (default 730).
        #[arg(long, value_name = "N")]
        days: Option<u64>,
        /// Base name of the output files (default: the terminal ID + "-tls").
        #[arg(long, value_name = "STEM")]
        file: Option<String>,
    },
    /// Issue a wallet certificate (signed by the issuer) and its cryptogram key.
    /// The certificate is pseudonymous (CN=wallet); --name only names the files.
    Wallet(LeafArgs),
    /// Endorse a terminal as a locker kiosk for named sites: a kiosk
    /// certificate signed by the operator for the terminal's key. Phones
    /// release this operator's pickup credentials only to endorsed kiosks.
    Kiosk {
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        /// The terminal certificate to endorse (from `tap-certs terminal`).
        #[arg(long, value_name = "CERT.pem")]
        terminal: PathBuf,
        /// A site id the kiosk serves (repeat for more, at most 16).
        #[arg(long = "site", value_name = "SITE", required = true)]
        sites: Vec<String>,
        /// Output file (conventionally NAME-kiosk.pem; must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Validity in days (default 730; never beyond the terminal's certificate).
        #[arg(long, value_name = "N")]
        days: Option<u64>,
    },
    /// Issue an operator-signed pickup credential for a wallet.
    Credential {
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        /// The recipient wallet's certificate.
        #[arg(long, value_name = "CERT.pem")]
        wallet: PathBuf,
        /// Site (locker or kiosk) id.
        #[arg(long)]
        site: String,
        /// Slot number at the site.
        #[arg(long, value_name = "N")]
        slot: u16,
        /// Parcel id.
        #[arg(long, value_name = "ID")]
        parcel: String,
        /// Output file (conventionally NAME.cred; must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Validity in days (default 7).
        #[arg(long, value_name = "N")]
        days: Option<u64>,
        /// Relax user presence for this credential: a named low-value class
        /// (e.g. "letter"), signed into the credential. Default: the phone
        /// releases it only after its user confirms.
        #[arg(long, value_name = "CLASS")]
        low_value_class: Option<String>,
    },
    /// Add a certificate or a pickup credential to the signed revocation list.
    Revoke {
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        #[command(flatten)]
        target: RevokeArgs,
        /// When the certificate or credential stopped being trustworthy:
        /// Unix seconds or YYYY-MM-DD[THH:MM:SSZ] (UTC). Taps signed before
        /// it are still accepted by the host. Default: now.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// Re-sign the revocation list with a new next update (now + 7 days); run it
    /// at least weekly: terminals and wallets stop approving on a list past its
    /// next update plus their grace.
    Revocations {
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
    },
    /// Describe a certificate, private key, pickup credential, revocation list or hex key file.
    Inspect {
        file: PathBuf,
        /// Check signatures and chains against this PKI.
        #[arg(long, value_name = "DIR")]
        pki: Option<PathBuf>,
    },
    /// Create the TLS CA of the upload host (tls-ca.pem, tls-ca.key) in DIR:
    /// separate from the payment root, which never signs TLS certificates.
    /// Terminals trust its certificate as `[host] ca`.
    TlsCa {
        /// Directory to write into (created 0700 if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, value_name = "N", default_value_t = tapstack_certs::tls::TLS_CA_DAYS)]
        days: u64,
    },
    /// Issue the host's TLS server certificate (tls-server.pem, tls-server.key)
    /// from the TLS CA; `tap-host serve --tls DIR` reads them.
    TlsServer {
        /// The TLS CA's directory (`tap-certs tls-ca`).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// A DNS name or IP address the host is reached at (repeat for more).
        #[arg(long = "name", value_name = "DNS_OR_IP", required = true)]
        names: Vec<tapstack_certs::ServerName>,
        /// Directory to write into (created 0700 if missing; may be the CA's).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days (not beyond the CA's).
        #[arg(long, value_name = "N", default_value_t = tapstack_certs::tls::TLS_SERVER_DAYS)]
        days: u64,
    },
    /// Check a certificate against the PKI (role, chain, validity, revocation).
    Verify {
        #[arg(long, value_name = "DIR")]
        pki: PathBuf,
        #[arg(value_name = "CERT.pem")]
        cert: PathBuf,
    },
}

#[derive(Debug, Args)]
struct LeafArgs {
    #[arg(long, value_name = "DIR")]
    pki: PathBuf,
    /// Common name of the certificate (with `terminal --renew`: taken from the old one).
    #[arg(long)]
    name: Option<String>,
    /// Output directory for NAME.pem, NAME.key (and NAME.ck for wallets).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Validity in days (default 730).
    #[arg(long, value_name = "N")]
    days: Option<u64>,
    /// Base name of the output files (default: NAME lowercased, other characters as '-').
    #[arg(long, value_name = "STEM")]
    file: Option<String>,
    #[command(flatten)]
    hsm: HsmArgs,
}

/// Where the issuer master key is when it is not in `issuer-master.key`.
#[derive(Debug, Args)]
struct HsmArgs {
    /// The issuer master key in a PKCS#11 token: MODULE:TOKEN:LABEL
    /// (e.g. /usr/lib/softhsm/libsofthsm2.so:tapstack:issuer-master). With
    /// `init`, the key is generated inside the token (sensitive, not
    /// extractable) and no issuer-master.key is written; with `wallet`,
    /// the wallet's cryptogram key is derived inside the token.
    #[arg(long, value_name = "MODULE:TOKEN:LABEL")]
    hsm: Option<tapstack_certs::HsmSpec>,
    /// File holding the token's user PIN (mode 0600); else $TAPSTACK_HSM_PIN.
    #[arg(long, value_name = "FILE", requires = "hsm")]
    pin_file: Option<PathBuf>,
}

impl HsmArgs {
    fn pin(&self) -> Result<tapstack_certs::hsm::AuthPin> {
        Ok(tapstack_certs::hsm::read_pin(self.pin_file.as_deref())?)
    }
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct RevokeArgs {
    /// The certificate file to revoke.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// SHA-256 of the certificate's DER, in hex.
    #[arg(long, value_name = "HEX")]
    hash: Option<String>,
    /// The pickup credential file to revoke.
    #[arg(long, value_name = "FILE")]
    credential: Option<PathBuf>,
}

fn now() -> Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?
        .as_secs())
}

fn load(dir: &Path) -> Result<Pki> {
    Pki::load(dir).with_context(|| format!("cannot load the PKI in {}", dir.display()))
}

fn run(cli: Cli) -> Result<()> {
    let now = now()?;
    let mut rng = OsRng;
    match cli.command {
        Command::Init { out, ca_days, hsm } => {
            let opts = InitOptions {
                ca_days,
                master_key_file: hsm.hsm.is_none(),
            };
            let pki = match &hsm.hsm {
                None => init_with(&out, &opts, now, &mut rng)?,
                Some(spec) => {
                    // The token first: a PIN or label problem leaves no PKI behind.
                    HsmMasterKey::generate(spec, hsm.pin()?)
                        .with_context(|| format!("creating the issuer master key in {spec}"))?;
                    init_with(&out, &opts, now, &mut rng).with_context(|| {
                        format!(
                            "the issuer master key {spec} was created, but the PKI was not; \
                             delete the key from the token before trying again"
                        )
                    })?
                }
            };
            println!("created a PKI in {}", out.display());
            match &hsm.hsm {
                Some(spec) => println!("  issuer master key generated inside the token: {spec}"),
                None => println!(
                    "  issuer master key in {} (development only: use --hsm in production)",
                    pki.path(tapstack_certs::MASTER_KEY_FILE).display()
                ),
            }
            for id in [pki.root(), pki.issuer(), pki.acquirer(), pki.operator()] {
                println!(
                    "  {:<9} {}  sha256 {}",
                    id.cert.role().as_str(),
                    id.cert.common_name(),
                    hex::encode(id.cert.hash())
                );
            }
        }
        Command::Terminal { leaf: a, id, renew } => {
            if a.hsm.hsm.is_some() {
                anyhow::bail!(
                    "--hsm is for init and wallet: terminals do not use the issuer master key"
                );
            }
            let pki = load(&a.pki)?;
            let issued = match &renew {
                Some(old_path) => {
                    let old = read_certificate(old_path)?;
                    if a.name.as_deref().is_some_and(|n| n != old.common_name()) {
                        anyhow::bail!(
                            "--name {:?} differs from the renewed certificate's {:?}; leave --name out",
                            a.name.as_deref().unwrap_or_default(),
                            old.common_name()
                        );
                    }
                    pki.renew_terminal(&old, &a.out, &leaf_options(&a), now, &mut rng)
                        .with_context(|| format!("renewing {}", old_path.display()))?
                }
                None => pki.issue_terminal_with_id(
                    a.name
                        .as_deref()
                        .ok_or_else(|| anyhow::anyhow!("give --name (or --renew OLD.pem)"))?,
                    id.as_deref(),
                    &a.out,
                    &leaf_options(&a),
                    now,
                    &mut rng,
                )?,
            };
            print_leaf(&issued.identity.cert, &issued.cert_path, &issued.key_path);
            if let Some(id) = issued.identity.cert.terminal_id() {
                println!("  terminal ID:    {id}");
            }
        }
        Command::TerminalTls {
            pki: dir,
            terminal,
            out,
            days,
            file,
        } => {
            let pki = load(&dir)?;
            let cert = read_certificate(&terminal)?;
            let opts = LeafOptions {
                days,
                file_stem: file,
            };
            let issued = pki
                .issue_terminal_tls(&cert, &out, &opts, now, &mut rng)
                .with_context(|| {
                    format!("issuing the TLS certificate of {}", terminal.display())
                })?;
            print_leaf(&issued.identity.cert, &issued.cert_path, &issued.key_path);
            if let Some(id) = issued.identity.cert.terminal_id() {
                println!("  terminal ID:    {id}");
            }
        }
        Command::Wallet(a) => {
            let Some(name) = a.name.clone() else {
                anyhow::bail!("give --name");
            };
            let pki = load(&a.pki)?;
            let issued = match &a.hsm.hsm {
                Some(spec) => {
                    let key = HsmMasterKey::open(spec, a.hsm.pin()?)
                        .with_context(|| format!("opening the issuer master key {spec}"))?;
                    pki.issue_wallet_with(&key, &name, &a.out, &leaf_options(&a), now, &mut rng)?
                }
                None => pki.issue_wallet(&name, &a.out, &leaf_options(&a), now, &mut rng)?,
            };
            print_leaf(
                &issued.leaf.identity.cert,
                &issued.leaf.cert_path,
                &issued.leaf.key_path,
            );
            println!("  cryptogram key: {}", issued.cryptogram_key_path.display());
        }
        Command::Credential {
            pki,
            wallet,
            site,
            slot,
            parcel,
            out,
            days,
            low_value_class,
        } => {
            let pki = load(&pki)?;
            let wallet = read_certificate(&wallet)?;
            let req = CredentialRequest {
                wallet: &wallet,
                site: &site,
                slot,
                parcel: &parcel,
                days,
            };
            let cred = pki.issue_credential_with_class(
                &req,
                low_value_class.as_deref(),
                &out,
                now,
                &mut rng,
            )?;
            println!(
                "issued pickup credential {} -> {}",
                hex::encode(cred.id),
                out.display()
            );
            println!(
                "  parcel {} at {} slot {} for wallet {}",
                cred.parcel,
                cred.site,
                cred.slot,
                hex::encode(wallet.serial())
            );
            match &cred.low_value_class {
                Some(c) => println!("  user presence relaxed: low-value class {c:?}"),
                None => println!("  user presence required (the phone asks its user)"),
            }
        }
        Command::Kiosk {
            pki,
            terminal,
            sites,
            out,
            days,
        } => {
            let pki = load(&pki)?;
            let terminal_cert = read_certificate(&terminal)?;
            let cert = pki.issue_kiosk(&terminal_cert, &sites, &out, days, now, &mut rng)?;
            println!(
                "endorsed {:?} as a kiosk for {} -> {}",
                cert.common_name(),
                cert.endorsed_sites().join(", "),
                out.display()
            );
            println!("  sha256 {}", hex::encode(cert.hash()));
        }
        Command::Revoke { pki, target, at } => {
            let at = at.as_deref().map(parse_time).transpose()?.unwrap_or(now);
            let target = match (target.cert, target.hash, target.credential) {
                (Some(path), _, _) => RevokeTarget::certificate_file(&path)?,
                (_, Some(hex), _) => RevokeTarget::certificate_hash_hex(&hex)?,
                (_, _, Some(path)) => RevokeTarget::credential_file(&path)?,
                (None, None, None) => anyhow::bail!("give --cert, --hash or --credential"),
            };
            let mut pki = load(&pki)?;
            let outcome = pki.revoke_at(target, at, now)?;
            if outcome.added {
                println!("revoked {target} from {at} (Unix seconds) on");
            } else {
                println!("{target} was already revoked; list unchanged");
            }
            println!(
                "  {} number {}: {} certificate(s), {} credential(s)",
                outcome.path.display(),
                outcome.list.number,
                outcome.list.certificates.len(),
                outcome.list.credentials.len()
            );
        }
        Command::Revocations { pki } => {
            let mut pki = load(&pki)?;
            let outcome = pki.resign_revocations(now)?;
            println!(
                "re-signed {} as number {}, next update {} (Unix seconds)",
                outcome.path.display(),
                outcome.list.number,
                outcome.list.next_update
            );
        }
        Command::TlsCa { out, days } => {
            let ca = tapstack_certs::TlsCa::init(&out, days, now, &mut rng)?;
            println!("created a TLS CA in {}", out.display());
            println!(
                "  certificate: {}  (terminals: [host] ca)",
                out.join(tapstack_certs::tls::TLS_CA_CERT_FILE).display()
            );
            println!(
                "  private key: {}  (keep offline, like the PKI)",
                out.join(tapstack_certs::tls::TLS_CA_KEY_FILE).display()
            );
            drop(ca);
        }
        Command::TlsServer {
            ca,
            names,
            out,
            days,
        } => {
            let tls_ca = tapstack_certs::TlsCa::load(&ca)
                .with_context(|| format!("cannot load the TLS CA in {}", ca.display()))?;
            let server = tls_ca.issue_server(&names, days, now, &mut rng)?;
            let (cert, key) = server.write(&out)?;
            let list: Vec<String> = names.iter().map(ToString::to_string).collect();
            println!("issued a TLS server certificate for {}", list.join(", "));
            println!("  certificate: {}", cert.display());
            println!("  private key: {}", key.display());
        }
        Command::Inspect { file, pki } => {
            let pki = pki.as_deref().map(load).transpose()?;
            print!("{}", inspect(&file, pki.as_ref(), now)?);
        }
        Command::Verify { pki, cert } => {
            let pki = load(&pki)?;
            let c = read_certificate(&cert)?;
            pki.verify(&c, now)
                .with_context(|| format!("{} is not valid", cert.display()))?;
            println!(
                "{}: OK ({} {:?}, chains to the root of {})",
                cert.display(),
                c.role(),
                c.common_name(),
                pki.dir().display()
            );
        }
    }
    Ok(())
}

fn leaf_options(a: &LeafArgs) -> LeafOptions {
    LeafOptions {
        days: a.days,
        file_stem: a.file.clone(),
    }
}

fn print_leaf(cert: &tapstack_protocol::pki::Certificate, cert_path: &Path, key_path: &Path) {
    println!(
        "issued {} certificate {:?}",
        cert.role(),
        cert.common_name()
    );
    println!("  certificate:    {}", cert_path.display());
    println!("  private key:    {}", key_path.display());
    println!("  serial:         {}", hex::encode(cert.serial()));
    println!("  sha256:         {}", hex::encode(cert.hash()));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tap-certs: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
