//! `tap-readers`: list the NFC readers attached, or SELECT an application
//! through one. The terminal exposes the same as `tap-terminal readers`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tapstack_reader::{Cancel, DiscoverOptions, OpenOptions};

#[derive(Parser)]
#[command(
    name = "tap-readers",
    version,
    about = "List NFC readers and talk to the target in their field"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List attached readers as connection strings.
    List {
        /// Also probe this serial port for a PN532 (repeatable).
        #[arg(long = "probe")]
        probe: Vec<PathBuf>,
        /// Do not probe serial ports (probing writes a wake-up to each).
        #[arg(long)]
        no_serial_probe: bool,
    },
    /// Wait for a target and SELECT an application by AID.
    Select {
        /// Connection string: pcsc:NAME, libnfc:CONNSTRING, pn532:PATH[?baud=N].
        connection: String,
        /// AID in hex (default: tapstack's).
        #[arg(long)]
        aid: Option<String>,
        /// Seconds to wait for a target.
        #[arg(long, default_value_t = 30)]
        wait: u64,
        /// Milliseconds allowed per APDU.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

fn main() -> std::process::ExitCode {
    // The error and its causes in one line: no backtrace for a user error,
    // whatever RUST_BACKTRACE says (a panic still prints its own).
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tap-readers: error: {e:#}");
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
    match Cli::parse().command {
        Cmd::List {
            probe,
            no_serial_probe,
        } => {
            let found = tapstack_reader::discover_with(&DiscoverOptions {
                serial_paths: probe,
                no_serial_probe,
            });
            if found.is_empty() {
                eprintln!("no readers found");
            }
            for d in found {
                println!("{}\t{}\t{}", d.connection, d.driver, d.name);
            }
        }
        Cmd::Select {
            connection,
            aid,
            wait,
            timeout_ms,
        } => {
            let aid = match aid {
                Some(h) => hex::decode(h.replace([' ', ':'], "")).context("AID is not hex")?,
                None => tapstack_protocol::messages::AID.to_vec(),
            };
            let opts = OpenOptions {
                transmit_timeout: Duration::from_millis(timeout_ms),
                ..Default::default()
            };
            let mut reader = tapstack_reader::open_with(&connection, &opts)
                .with_context(|| format!("opening {connection}"))?;
            let info = reader.info();
            eprintln!("{} ({}): waiting for a target", info.name, info.driver);
            let mut session = reader.wait_for_target(Duration::from_secs(wait), &Cancel::new())?;
            let t = session.target().clone();
            println!("uid: {}", hex::encode_upper(&t.uid));
            if let Some(atr) = &t.atr {
                println!("atr: {}", hex::encode_upper(atr));
            }
            if let Some(ats) = &t.ats {
                println!("ats: {}", hex::encode_upper(ats));
            }
            let r = session.select(&aid)?;
            println!(
                "select {}: {} {}",
                hex::encode_upper(&aid),
                r.sw,
                hex::encode_upper(&r.data)
            );
        }
    }
    Ok(())
}
