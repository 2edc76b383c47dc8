//! `tap-terminal`: the tapstack terminal for a person at the counter, a
//! locker kiosk, or point-of-sale software.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tapstack_reader::Cancel;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency};
use tapstack_terminal::app;
use tapstack_terminal::config::{Config, EXAMPLE};
use tapstack_terminal::report::{exit, Outcome, QueueReport};
use tapstack_terminal::tap::{Engine, Intent, TapResult};
use tapstack_terminal::{unix_now, upload, utc};

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

/// The cart file: amounts as decimal strings in the cart's currency.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CartFile {
    currency: String,
    items: Vec<CartLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CartLine {
    sku: String,
    name: String,
    qty: u32,
    /// Unit price, e.g. "8.00".
    price: String,
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

fn refused(code: &'static str, message: String) -> Outcome {
    Outcome::Refused { code, message }
}

/// Read a cart file: `Err` if it cannot be read, `Ok(Err(refusal))` if
/// it is not a valid cart.
fn read_cart(path: &Path) -> Result<std::result::Result<Cart, Outcome>> {
    let meta = std::fs::metadata(path).with_context(|| format!("cart {}", path.display()))?;
    if meta.len() > 64 * 1024 {
        bail!("cart {} is larger than 64 KiB", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cart {}", path.display()))?;
    let bad = |code, what: String| {
        Ok(Err(refused(
            code,
            format!("cart {}: {what}", path.display()),
        )))
    };
    let f: CartFile = match serde_json::from_slice(&bytes) {
        Ok(f) => f,
        Err(e) => return bad("bad_cart", e.to_string()),
    };
    let currency = match Currency::parse(&f.currency) {
        Ok(c) => c,
        Err(e) => return bad("bad_currency", format!("currency: {e}")),
    };
    let mut items = Vec::with_capacity(f.items.len());
    for l in f.items {
        let Some(price) = Amount::parse(&l.price, currency) else {
            return bad(
                "bad_amount",
                format!(
                    "item {}: price {:?} is not an amount in {currency}",
                    l.sku, l.price
                ),
            );
        };
        items.push(CartItem {
            sku: l.sku,
            name: l.name,
            qty: l.qty,
            unit_price: price.minor,
        });
    }
    let cart = Cart { currency, items };
    if let Err(e) = cart.validate() {
        return bad("bad_cart", e.to_string());
    }
    Ok(Ok(cart))
}

/// Ctrl-C or SIGTERM while `pay` or `order` waits for a phone: report
/// `cancelled` and exit 3. Never while a phone is being read: the tap
/// finishes and its outcome is reported instead. The flag is true once an
/// outcome is known.
fn cancel_on_signal(settled: Arc<Mutex<bool>>, out: Out) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(tapstack_terminal::daemon::shutdown_signal());
            let settled = settled.lock().unwrap_or_else(PoisonError::into_inner);
            if *settled {
                return; // the main thread reports the outcome
            }
            let mut out = out;
            out.outcome(&Outcome::Cancelled {
                message: "cancelled: no tap was taken".into(),
            });
            // Holding the lock: no tap can start.
            std::process::exit(i32::from(exit::TIMED_OUT));
        });
    if let Err(e) = spawned {
        note(&format!(
            "warning: Ctrl-C will not be reported as cancelled: {e}"
        ));
    }
}

/// Take one intent: the checks first (no phone is asked for if they
/// fail), then wait for phones (a second tap after "confirm on your
/// phone") until approved, declined or out of time.
fn take(engine: &mut Engine, config: &Config, intent: &Intent, out: &mut Out) -> Result<Outcome> {
    if let Err(d) = engine.check_intent(intent, unix_now()) {
        return Ok(Outcome::refused(&engine.terms(), &d));
    }
    let mut field = app::field(config)?;
    let settled = Arc::new(Mutex::new(false));
    cancel_on_signal(settled.clone(), *out);
    let timeout = Duration::from_secs(config.terminal.tap_timeout_secs);
    let deadline = Instant::now() + timeout;
    out.say("tap your phone …");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let mut settled = settled.lock().unwrap_or_else(PoisonError::into_inner);
            *settled = true;
            return Ok(Outcome::TimedOut {
                message: "timed out: no phone".into(),
            });
        }
        let result = field.with_phone(left, &Cancel::new(), &Cancel::new(), &mut |link| {
            let mut settled = settled.lock().unwrap_or_else(PoisonError::into_inner);
            out.say("reading …");
            let r = engine.tap(intent, link, unix_now(), &mut OsRng);
            *settled = !matches!(r, TapResult::ConfirmOnPhone);
            r
        })?;
        match result.as_ref().and_then(Outcome::from_tap) {
            Some(o) => return Ok(o),
            None if result.is_some() => out.say("confirm on your phone, then tap again"),
            None => {}
        }
    }
}

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

/// `queue repair`: ask the host for its head, rebuild from it.
fn repair(config: &Config) -> Result<u8> {
    let path = config.path(&config.queue.path);
    let (seq, hash) = {
        let engine = app::engine(config)?;
        let integrity = engine.queue.integrity();
        if integrity.is_ok() {
            println!("queue {}: intact; nothing to repair", integrity.path);
            return Ok(0);
        }
        let client = upload::client(config, &engine.ctx)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let resp = rt
            .block_on(client.upload(&[]))
            .map_err(|e| anyhow::anyhow!("asking the host for its head: {e}"))?;
        let hash: Option<[u8; 32]> = resp
            .head_hash
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|v| v.try_into().ok());
        (resp.acked_seq, hash)
    };
    println!("the host holds this terminal's records up to #{seq}");
    let done = tapstack_terminal::queue::Queue::repair(&path, seq, hash)?;
    println!("{done}");
    Ok(0)
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
        return repair(&config);
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
            let outcome = match Currency::parse(&currency) {
                Err(e) => refused("bad_currency", e.to_string()),
                Ok(cur) => match Amount::parse(&amount, cur) {
                    None => refused(
                        "bad_amount",
                        format!(
                            "{amount:?} is not an amount in {cur}: digits, at most {} decimals",
                            cur.exponent()
                        ),
                    ),
                    Some(amount) => {
                        out.say(&format!(
                            "pay {amount} at {}",
                            engine.ctx.certificate.common_name()
                        ));
                        take(&mut engine, &config, &Intent::Pay { amount }, out)?
                    }
                },
            };
            out.outcome(&outcome);
            Ok(outcome.exit_code())
        }
        Command::Order { cart, .. } => {
            let outcome = match read_cart(&cart)? {
                Err(refusal) => refusal,
                Ok(cart) => {
                    let total = Amount {
                        minor: cart.total().unwrap_or(0),
                        currency: cart.currency,
                    };
                    out.say(&format!(
                        "order of {} item(s), total {total}",
                        cart.items.len()
                    ));
                    take(&mut engine, &config, &Intent::Order { cart }, out)?
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
            let intent = Intent::Pickup { site: site.clone() };
            if let Err(d) = engine.check_intent(&intent, unix_now()) {
                let outcome = Outcome::refused(&engine.terms(), &d);
                out.outcome(&outcome);
                return Ok(outcome.exit_code());
            }
            let timeout = Duration::from_secs(config.terminal.tap_timeout_secs);
            let mut field = app::field(&config)?;
            out.say(&format!(
                "kiosk at {site}: tap your phone to collect a parcel"
            ));
            let mut done = 0;
            let mut last = exit::TIMED_OUT;
            while taps.is_none_or(|n| done < n) {
                let result =
                    field.with_phone(timeout, &Cancel::new(), &Cancel::new(), &mut |link| {
                        engine.tap(&intent, link, unix_now(), &mut OsRng)
                    })?;
                let Some(outcome) = result.as_ref().and_then(Outcome::from_tap) else {
                    continue;
                };
                done += 1;
                out.outcome(&outcome);
                last = outcome.exit_code();
                if let Outcome::Approved(a) = &outcome {
                    if let Some(slot) = a.slot {
                        if let Err(e) = open_slot(out, &command, slot) {
                            note(&format!(
                                "{e:#} — the pickup is recorded (#{}); open slot {slot} by hand",
                                a.seq
                            ));
                        }
                    }
                }
            }
            Ok(last)
        }
        Command::Queue {
            action: Some(QueueAction::Verify { json }),
            ..
        } => {
            let report = engine.queue.integrity();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "queue {}: {} — approved up to #{}, host holds up to #{}",
                    report.path,
                    report.summary(),
                    report.approved,
                    report.acked
                );
                if !report.set_aside.is_empty() {
                    println!(
                        "set aside (appends that never completed, never approved): {:?}",
                        report.set_aside
                    );
                }
                if !report.damaged.is_empty() {
                    println!("the terminal approves nothing until this is repaired: see `tap-terminal queue repair` and docs/operations.md");
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
            let code = if damaged { exit::ERROR } else { 0 };
            if out.json {
                out.json(&report);
                return Ok(code);
            }
            let queued = Amount {
                minor: report.pending_amount,
                currency: engine.currency,
            };
            let oldest = report.oldest.map_or_else(|| "-".to_owned(), utc);
            let lines = [
                format!(
                    "terminal {} — {} record(s) waiting for upload, {} in total, host holds up to #{}",
                    report.terminal, report.pending, report.head_seq, report.acked_seq
                ),
                format!("queued {queued}, oldest from {oldest}"),
                match &report.revocations {
                    None => "revocation list: none configured".to_owned(),
                    Some(r) => format!(
                        "revocation list #{} {} — next update due {}{}",
                        r.number,
                        r.status,
                        utc(r.next_update),
                        match r.status {
                            "overdue" => " (refresh from the host failing; approvals stop after the grace)",
                            "expired" => " (past the grace: NO approvals until `tap-terminal upload` refreshes it)",
                            _ => "",
                        }
                    ),
                },
            ];
            let records = report.records.iter().map(|r| {
                format!(
                    "  #{} {} at {}{}",
                    r.seq,
                    r.record_id.get(..16).unwrap_or(&r.record_id),
                    utc(r.recorded_at),
                    r.order_number
                        .as_ref()
                        .map(|n| format!(" order {n}"))
                        .unwrap_or_default()
                )
            });
            for line in lines.into_iter().chain(records) {
                if !out.line(&line) {
                    break; // `queue | head`: the reader has what it wanted
                }
            }
            Ok(if report.integrity.is_ok() {
                0
            } else {
                exit::ERROR
            })
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
            let client = upload::client(&config, &engine.ctx)?;
            let batch = config.host.as_ref().map_or(200, |h| h.batch_size);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let revocations = config.trust.revocations.as_ref().map(|p| config.path(p));
            let report = rt.block_on(upload::sync(
                &engine.queue,
                &client,
                batch,
                &mut engine.ctx,
                revocations,
            ))?;
            out.line(&serde_json::to_string_pretty(&report)?);
            Ok(0)
        }
    }
}
