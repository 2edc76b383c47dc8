//! `tap-terminal`: the tapstack terminal for a person at the counter, a
//! locker kiosk, or point-of-sale software.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tapstack_reader::Cancel;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use tapstack_protocol::scenario::Amount;
use tapstack_terminal::app;
use tapstack_terminal::config::{Config, EXAMPLE};
use tapstack_terminal::counter::{self, Progress};
use tapstack_terminal::report::{exit, integrity_lines, Outcome, QueueReport};
use tapstack_terminal::request::{CartRequest, IntentRequest};
use tapstack_terminal::tap::{Engine, Intent};
use tapstack_terminal::upload::{self, Repair};

const EXIT_HELP: &str = "\
Exit status of pay, order and kiosk:
  0  approved (kiosk: its last tap was approved)
  1  error, or refused before any phone was asked for: an amount of zero,
     another currency than terminal.currency, an unknown currency code, above
     risk.floor_limit, past a queue cap, the terminal's certificate expired or
     not yet valid (no tap is taken)
  2  a phone tapped and the tap was declined
  3  timed out (no phone within terminal.tap_timeout_secs) or cancelled
     (Ctrl-C or SIGTERM while waiting for a phone)
Other commands exit 0 on success and 1 on an error; a usage error exits 1.
--json prints one JSON object per outcome on stdout (docs/operations.md, \"JSON output\").";

#[derive(Parser)]
#[command(
    name = "tap-terminal",
    version,
    about = "tapstack NFC tap-to-pay terminal",
    after_help = EXIT_HELP
)]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, default_value = "terminal.toml")]
    config: PathBuf,
    /// Log what the reader and the emulated phones do.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented example configuration (to --out, else to the
    /// --config path).
    Init {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Take a payment: `tap-terminal pay 12.50 CNY`.
    #[command(after_help = EXIT_HELP)]
    Pay {
        amount: String,
        currency: String,
        /// Print the outcome as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Take an itemized order from a cart file (JSON).
    #[command(after_help = EXIT_HELP)]
    Order {
        #[arg(long)]
        cart: PathBuf,
        /// Print the outcome as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Locker kiosk: hand out parcels to phones with pickup credentials, forever
    /// (or `--taps N`).
    #[command(after_help = EXIT_HELP)]
    Kiosk {
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        taps: Option<usize>,
        /// Print each tap's outcome as one JSON object (a line) on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show what waits for upload and the last transactions (exits 1 when
    /// the queue is damaged).
    Queue {
        #[arg(long, default_value_t = 10)]
        last: usize,
        #[command(subcommand)]
        action: Option<QueueAction>,
        /// Print the counts and the records as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Upload now (and fetch the revocation list).
    Upload,
    /// List the readers attached to this machine, with their connection strings.
    Readers,
    /// Run the reader loop with the local HTTP+JSON API on `[api] listen`
    /// (docs/terminal-api.yaml) and upload in the background, until SIGTERM
    /// or Ctrl-C. Prints `listening on http://ADDR` first.
    Serve,
}

#[derive(Subcommand)]
enum QueueAction {
    /// Check every record from the host's acknowledged point to the
    /// high-water mark (checksums, hash chain, nothing missing). Exits 0
    /// when intact, 1 when damaged, naming the damaged seqs.
    Verify {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a damaged queue from what the host already holds (asks the
    /// host for its head). Refuses when approved records would be lost.
    Repair,
}

/// Where the CLI writes. Stdout may be a pipe closed early (`tap-terminal
/// queue | head`): then writing stops quietly. With `--json` stdout carries
/// only JSON; the lines for a person go to stderr.
#[derive(Debug, Clone, Copy)]
struct Out {
    json: bool,
    closed: bool,
}

impl Out {
    fn new(json: bool) -> Self {
        Out {
            json,
            closed: false,
        }
    }

    /// A line on stdout; false once nobody reads it any more.
    fn line(&mut self, line: &str) -> bool {
        if self.closed {
            return false;
        }
        let mut o = std::io::stdout().lock();
        if writeln!(o, "{line}").and_then(|()| o.flush()).is_err() {
            self.closed = true;
        }
        !self.closed
    }

    /// A line for the person at the counter.
    fn say(&mut self, line: &str) {
        if self.json {
            note(line);
        } else {
            self.line(line);
        }
    }

    fn json<T: Serialize>(&mut self, v: &T) -> bool {
        match serde_json::to_string(v) {
            Ok(s) => self.line(&s),
            Err(e) => {
                note(&format!("error: {e}"));
                false
            }
        }
    }

    /// Report an outcome: JSON, or a line for a person.
    fn outcome(&mut self, o: &Outcome) {
        if self.json {
            self.json(o);
            return;
        }
        match o {
            Outcome::Approved(a) => {
                let mut line = format!("approved — queued #{}", a.seq);
                if let Some(n) = &a.order_number {
                    line.push_str(&format!(", order {n}"));
                }
                if let (Some(s), Some(p)) = (a.slot, &a.parcel) {
                    line.push_str(&format!(", slot {s} for parcel {p}"));
                }
                if !a.receipt_delivered {
                    line.push_str(" (receipt not shown on the phone)");
                }
                self.line(&line);
            }
            Outcome::Declined { decline, message } => {
                self.line(&format!("declined: {message} [{}]", decline.code()));
            }
            Outcome::Refused { code, message } => note(&format!("refused: {message} [{code}]")),
            Outcome::TimedOut { message } | Outcome::Cancelled { message } => {
                self.line(message);
            }
            Outcome::Error { message } => note(&format!("error: {message}")),
        }
    }
}

/// A line on stderr (never panics, even if stderr is closed).
fn note(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Read a cart file (JSON, at most 64 KiB): `Err` if it cannot be read,
/// `Ok(Err(refusal))` if it is not a cart.
fn read_cart(path: &Path) -> Result<std::result::Result<CartRequest, Outcome>> {
    let meta = std::fs::metadata(path).with_context(|| format!("cart {}", path.display()))?;
    if meta.len() > 64 * 1024 {
        bail!("cart {} is larger than 64 KiB", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cart {}", path.display()))?;
    Ok(
        serde_json::from_slice(&bytes).map_err(|e| Outcome::Refused {
            code: "bad_cart",
            message: format!("cart {}: {e}", path.display()),
        }),
    )
}

/// A token cancelled by Ctrl-C or SIGTERM: a wait for a phone ends
/// (`cancelled`, exit 3); a tap in progress finishes and is reported. The
/// handlers are in place when this returns.
fn cancel_on_signal() -> Cancel {
    use tokio::signal::unix::{signal, SignalKind};
    let cancel = Cancel::new();
    let warn = |e: &dyn std::fmt::Display| {
        note(&format!(
            "warning: Ctrl-C will not be reported as cancelled: {e}"
        ))
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            warn(&e);
            return cancel;
        }
    };
    let signals = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    });
    let (mut int, mut term) = match signals {
        Ok(s) => s,
        Err(e) => {
            warn(&e);
            return cancel;
        }
    };
    let token = cancel.clone();
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
            token.cancel();
        });
    if let Err(e) = spawned {
        warn(&e);
    }
    cancel
}

/// Take one request at the counter (`pay`, `order`).
fn take(
    engine: &mut Engine,
    config: &Config,
    request: &IntentRequest,
    out: &mut Out,
) -> Result<Outcome> {
    let intent = match counter::intent(engine, request, None) {
        Ok(i) => i,
        Err(refusal) => return Ok(refusal.into()),
    };
    match &intent {
        Intent::Pay { amount } => out.say(&format!(
            "pay {amount} at {}",
            engine.ctx.certificate.common_name()
        )),
        Intent::Order { cart } => {
            let total = Amount {
                minor: cart.total().unwrap_or(0),
                currency: cart.currency,
            };
            out.say(&format!(
                "order of {} item(s), total {total}",
                cart.items.len()
            ));
        }
        Intent::Pickup { .. } => {}
    }
    let mut field = app::field(config)?;
    let cancel = cancel_on_signal();
    let timeout = Duration::from_secs(config.terminal.tap_timeout_secs);
    Ok(counter::take(
        engine,
        &mut field,
        &intent,
        timeout,
        &cancel,
        &mut |p| match p {
            Progress::WaitingForPhone => out.say("tap your phone …"),
            Progress::Reading => out.say("reading …"),
            Progress::ConfirmOnPhone => out.say("confirm on your phone, then tap again"),
        },
    )?)
}

/// The kiosk's slot-open hook, run to its end (its output on stdout unless
/// `--json`).
fn open_slot(out: &mut Out, command: &[String], slot: u16) -> Result<()> {
    let Some(mut cmd) = tapstack_terminal::config::open_slot_command(command, slot) else {
        out.say(&format!("open slot {slot} (no open_command configured)"));
        return Ok(());
    };
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let status = cmd
        .stdout(if out.json {
            std::process::Stdio::null()
        } else {
            std::process::Stdio::inherit()
        })
        .status()
        .with_context(|| format!("open_command {prog}"))?;
    if !status.success() {
        bail!("open_command for slot {slot} failed: {status}");
    }
    Ok(())
}

fn main() -> ExitCode {
    // clap exits 2 on a usage error: here 2 means declined.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit::ERROR)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    let level = if cli.verbose {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_max_level(level)
        .init();
    let json = match &cli.command {
        Command::Pay { json, .. }
        | Command::Order { json, .. }
        | Command::Kiosk { json, .. }
        | Command::Queue { json, .. } => *json,
        _ => false,
    };
    let mut out = Out::new(json);
    match run(cli, &mut out) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            out.outcome(&Outcome::Error {
                message: format!("{e:#}"),
            });
            if out.json {
                note(&format!("error: {e:#}"));
            }
            ExitCode::from(exit::ERROR)
        }
    }
}

fn run(cli: Cli, out: &mut Out) -> Result<u8> {
    if let Command::Init { out: path } = &cli.command {
        let path = path.as_ref().unwrap_or(&cli.config);
        if path.exists() {
            bail!("{} exists; not overwriting", path.display());
        }
        std::fs::write(path, EXAMPLE).with_context(|| format!("writing {}", path.display()))?;
        out.line(&format!("wrote {}", path.display()));
        return Ok(0);
    }
    if let Command::Readers = &cli.command {
        let found = tapstack_reader::discover();
        if found.is_empty() {
            out.line("no reader found (PC/SC readers need pcscd running; serial PN532 boards are probed on /dev/ttyUSB* and /dev/ttyACM*)");
        }
        for r in found {
            if !out.line(&format!("{:<8} {:<40} {}", r.driver, r.connection, r.name)) {
                break;
            }
        }
        return Ok(0);
    }
    let config = Config::load(&cli.config, std::env::vars())?;
    if let Command::Queue {
        action: Some(QueueAction::Repair),
        ..
    } = &cli.command
    {
        match upload::repair(&config)? {
            Repair::Intact { path } => {
                out.line(&format!("queue {path}: intact; nothing to repair"))
            }
            Repair::Repaired { host_seq, summary } => {
                out.line(&format!(
                    "the host holds this terminal's records up to #{host_seq}"
                ));
                out.line(&summary)
            }
        };
        return Ok(0);
    }
    let mut engine = app::engine(&config)?;
    if matches!(
        cli.command,
        Command::Pay { .. } | Command::Order { .. } | Command::Kiosk { .. }
    ) {
        upload::ensure_host_checked(&config, &mut engine)?;
    }
    match cli.command {
        Command::Init { .. } | Command::Readers => unreachable!(),
        Command::Pay {
            amount, currency, ..
        } => {
            let request = IntentRequest::Pay { amount, currency };
            let outcome = take(&mut engine, &config, &request, out)?;
            out.outcome(&outcome);
            Ok(outcome.exit_code())
        }
        Command::Order { cart, .. } => {
            let cart_path = cart;
            let outcome = match read_cart(&cart_path)? {
                Err(refusal) => refusal,
                Ok(cart) => {
                    match take(&mut engine, &config, &IntentRequest::Order { cart }, out)? {
                        // Which file the refused cart came from.
                        Outcome::Refused { code, message } => Outcome::Refused {
                            code,
                            message: format!("cart {}: {message}", cart_path.display()),
                        },
                        o => o,
                    }
                }
            };
            out.outcome(&outcome);
            Ok(outcome.exit_code())
        }
        Command::Kiosk { site, taps, .. } => {
            let kiosk = config.kiosk.clone();
            let site = site
                .or_else(|| kiosk.as_ref().map(|k| k.site.clone()))
                .context("no site: pass --site or set [kiosk] site")?;
            let command = kiosk.map(|k| k.open_command).unwrap_or_default();
            let request = IntentRequest::Pickup {
                site: Some(site.clone()),
            };
            if let Err(refusal) = counter::intent(&engine, &request, None) {
                let refusal = Outcome::from(refusal);
                out.outcome(&refusal);
                return Ok(refusal.exit_code());
            }
            let timeout = Duration::from_secs(config.terminal.tap_timeout_secs);
            let mut field = app::field(&config)?;
            let cancel = cancel_on_signal();
            out.say(&format!(
                "kiosk at {site}: tap your phone to collect a parcel"
            ));
            let shared = std::cell::RefCell::new(&mut *out);
            Ok(counter::kiosk(
                &mut engine,
                &mut field,
                &site,
                taps,
                timeout,
                &cancel,
                &mut |o| shared.borrow_mut().outcome(o),
                &mut |slot, seq| {
                    if let Err(e) = open_slot(&mut shared.borrow_mut(), &command, slot) {
                        note(&format!(
                            "{e:#} — the pickup is recorded (#{seq}); open slot {slot} by hand"
                        ));
                    }
                },
            )?)
        }
        Command::Queue {
            action: Some(QueueAction::Verify { json }),
            ..
        } => {
            let report = engine.queue.integrity();
            if json {
                out.line(&serde_json::to_string_pretty(&report)?);
            } else {
                for line in integrity_lines(&report) {
                    out.line(&line);
                }
            }
            Ok(if report.is_ok() { 0 } else { exit::ERROR })
        }
        Command::Queue { last, .. } => {
            let report = QueueReport::of(&engine, last)?;
            let damaged = !report.integrity.is_ok();
            if damaged {
                note(&format!(
                    "queue {}: {} — run `tap-terminal queue verify`",
                    report.integrity.path,
                    report.integrity.summary()
                ));
            }
            if out.json {
                out.json(&report);
            } else {
                for line in report.lines() {
                    if !out.line(&line) {
                        break; // `queue | head`: the reader has what it wanted
                    }
                }
            }
            Ok(if damaged { exit::ERROR } else { 0 })
        }
        Command::Serve => {
            let field = app::field(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(&config.api.listen)
                    .await
                    .with_context(|| format!("api.listen {}", config.api.listen))?;
                out.line(&format!("listening on http://{}", listener.local_addr()?));
                let daemon = tapstack_terminal::daemon::Daemon::new(
                    &config,
                    engine,
                    field,
                    Default::default(),
                )?;
                daemon
                    .serve(listener, tapstack_terminal::daemon::shutdown_signal())
                    .await?;
                anyhow::Ok(())
            })?;
            Ok(0)
        }
        Command::Upload => {
            let report = upload::sync_blocking(&config, &mut engine)?;
            out.line(&serde_json::to_string_pretty(&report)?);
            Ok(0)
        }
    }
}
