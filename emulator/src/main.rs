//! `tap-emu`: an emulated phone for tapstack terminals and any PC/SC or
//! libnfc program.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use tapstack_emulator::faults::{Fault, FaultScript};
use tapstack_emulator::phone::{unix_now, Phone, PhoneQueue};
use tapstack_emulator::{pn532, profile, vpcd};

#[derive(Parser)]
#[command(
    name = "tap-emu",
    version,
    about = "Emulated phone (wallet app) for tapstack terminals"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct PhoneArgs {
    /// Wallet profile; repeat for several phones that tap in turn.
    #[arg(long = "wallet", required = true)]
    wallets: Vec<PathBuf>,
    /// Fault rule ACTION@N[:ARG][/TAP]: remove@3, delay@1:600, relay@1:20, corrupt@3, sw@3:6F00, garbage@1.
    #[arg(long = "fault")]
    faults: Vec<String>,
    /// Each phone leaves the field this many milliseconds after arriving.
    #[arg(long)]
    present_ms: Option<u64>,
    /// Stop after this many taps.
    #[arg(long)]
    taps: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Manage wallet profiles.
    Wallet {
        #[command(subcommand)]
        command: WalletCommand,
    },
    /// Be a card in pcscd's virtual reader (vsmartcard vpcd).
    Vpcd {
        #[command(flatten)]
        phones: PhoneArgs,
        /// vpcd's address (host:port).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 35963)]
        port: u16,
        /// Leave the field after this many milliseconds without a command.
        #[arg(long, default_value_t = 1500)]
        idle_ms: u64,
        /// Milliseconds between one phone leaving and the next arriving.
        #[arg(long, default_value_t = 1000)]
        gap_ms: u64,
    },
    /// Be a PN532 NFC chip behind a pseudo-terminal (libnfc pn532_uart, native drivers).
    Pn532 {
        #[command(flatten)]
        phones: PhoneArgs,
        /// Symbolic link to create to the PTY (the serial port: pn532_uart:PATH).
        #[arg(long)]
        link: PathBuf,
        /// Leave the field after this many milliseconds without an APDU.
        #[arg(long, default_value_t = 1500)]
        idle_ms: u64,
        /// Milliseconds between one phone leaving and the next arriving.
        #[arg(long, default_value_t = 1000)]
        gap_ms: u64,
    },
}

#[derive(Subcommand)]
enum WalletCommand {
    /// Issue a wallet from a tap-certs PKI and write its profile.
    New {
        #[arg(long)]
        pki: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a pickup credential (from `tap-certs credential`) to a profile.
    AddCredential {
        #[arg(long)]
        wallet: PathBuf,
        credential: PathBuf,
    },
    /// Print a profile's state: certificate, counter, credentials.
    Show {
        #[arg(long)]
        wallet: PathBuf,
    },
}

fn phones(args: &PhoneArgs) -> Result<PhoneQueue> {
    let mut phones = Vec::new();
    for w in &args.wallets {
        let loaded = profile::load(w).with_context(|| format!("loading wallet {}", w.display()))?;
        phones.push(Phone::from_wallet(loaded));
    }
    let faults = args
        .faults
        .iter()
        .map(|f| Fault::parse(f))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PhoneQueue::new(
        phones,
        FaultScript {
            faults,
            present: args.present_ms.map(Duration::from_millis),
        },
    ))
}

/// Stop cleanly on SIGTERM and SIGINT: the first one sets `stop` (the
/// front-end finishes the frame at hand, the phone leaves, the PN532 link is
/// removed); a second one exits at once. The signals are blocked in this
/// thread before any other starts, so every thread inherits the mask and
/// only the waiting thread receives them.
fn stop_on_signals(stop: Arc<AtomicBool>) -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block().context("blocking SIGTERM and SIGINT")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(sig) if !stop.swap(true, Ordering::SeqCst) => {
                    tracing::info!(signal = sig.as_str(), "stopping");
                }
                Ok(sig) => {
                    tracing::warn!(signal = sig.as_str(), "second signal: exiting at once");
                    std::process::exit(128 + sig as i32);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot wait for signals");
                    return;
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    // The error and its causes in one line: no backtrace for a user error,
    // whatever RUST_BACKTRACE says (a panic still prints its own).
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tap-emu: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    match cli.command {
        Command::Wallet {
            command: WalletCommand::New { pki, name, out },
        } => {
            let path = profile::create(&pki, &name, &out, unix_now(), &mut rand_core::OsRng)?;
            println!("{}", path.display());
        }
        Command::Wallet {
            command: WalletCommand::AddCredential { wallet, credential },
        } => {
            profile::add_credential(&wallet, &credential)?;
        }
        Command::Wallet {
            command: WalletCommand::Show { wallet },
        } => {
            let w = profile::load(&wallet)?;
            let c = &w.context.certificate;
            println!("name:        {}", w.profile.name);
            println!(
                "certificate: serial {} sha256 {}",
                hex::encode(c.serial()),
                hex::encode(c.hash())
            );
            println!("counter:     {}", w.atc.value());
            println!(
                "cvm:         {:?} above {} minor units",
                w.profile.cvm.policy, w.profile.cvm.limit
            );
            for cred in &w.context.credentials {
                println!(
                    "credential:  parcel {} at {} slot {} until {}",
                    cred.parcel, cred.site, cred.slot, cred.not_after
                );
            }
        }
        Command::Vpcd {
            phones: args,
            host,
            port,
            idle_ms,
            gap_ms,
        } => {
            let mut queue = phones(&args)?;
            stop_on_signals(stop.clone())?;
            let addr = format!("{host}:{port}")
                .parse()
                .with_context(|| format!("{host}:{port} is not an address"))?;
            let opts = vpcd::VpcdOptions {
                addr,
                taps: args.taps,
                idle: Duration::from_millis(idle_ms),
                gap: Duration::from_millis(gap_ms),
                ..Default::default()
            };
            vpcd::run(&mut queue, &opts, &stop)?;
        }
        Command::Pn532 {
            phones: args,
            link,
            idle_ms,
            gap_ms,
        } => {
            let mut queue = phones(&args)?;
            stop_on_signals(stop.clone())?;
            let opts = pn532::Pn532Options {
                taps: args.taps,
                idle: Duration::from_millis(idle_ms),
                gap: Duration::from_millis(gap_ms),
                ..pn532::Pn532Options::new(link)
            };
            pn532::run(&mut queue, &opts, &stop)?;
        }
    }
    Ok(())
}
