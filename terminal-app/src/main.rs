//! `tap-terminal`: the tapstack terminal for a person at the counter, a
//! locker kiosk, or point-of-sale software.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rand_core::OsRng;
use serde::Deserialize;
use tapstack_protocol::record::TransactionRecord;
use tapstack_protocol::scenario::{Amount, Cart, CartItem, Currency};
use tapstack_terminal::app::{self, Field};
use tapstack_terminal::config::{Config, EXAMPLE};
use tapstack_terminal::queue::QueueStore;
use tapstack_terminal::tap::{Engine, Intent, TapResult};
use tapstack_terminal::upload;

#[derive(Parser)]
#[command(
    name = "tap-terminal",
    version,
    about = "tapstack NFC tap-to-pay terminal"
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
    /// Write a commented example configuration.
    Init {
        #[arg(long, default_value = "terminal.toml")]
        out: PathBuf,
    },
    /// Take a payment: `tap-terminal pay 12.50 CNY`.
    Pay { amount: String, currency: String },
    /// Take an itemized order from a cart file (JSON).
    Order {
        #[arg(long)]
        cart: PathBuf,
    },
    /// Locker kiosk: hand out parcels to phones with pickup credentials, forever
    /// (or `--taps N`).
    Kiosk {
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        taps: Option<usize>,
    },
    /// Show what waits for upload and the last transactions (exits 1 when
    /// the queue is damaged).
    Queue {
        #[arg(long, default_value_t = 10)]
        last: usize,
        #[command(subcommand)]
        action: Option<QueueAction>,
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

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, proleptic
/// Gregorian).
fn utc(t: u64) -> String {
    let (days, secs) = (t / 86_400, t % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

fn read_cart(path: &Path) -> Result<Cart> {
    let meta = std::fs::metadata(path).with_context(|| format!("cart {}", path.display()))?;
    if meta.len() > 64 * 1024 {
        bail!("cart {} is larger than 64 KiB", path.display());
    }
    let f: CartFile = serde_json::from_slice(&std::fs::read(path)?)
        .with_context(|| format!("cart {}", path.display()))?;
    let currency = Currency::new(&f.currency)
        .with_context(|| format!("cart currency {:?} is not an ISO 4217 code", f.currency))?;
    let items = f
        .items
        .into_iter()
        .map(|l| {
            let price = Amount::parse(&l.price, currency)
                .with_context(|| format!("item {}: price {:?}", l.sku, l.price))?;
            Ok(CartItem {
                sku: l.sku,
                name: l.name,
                qty: l.qty,
                unit_price: price.minor,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let cart = Cart { currency, items };
    cart.validate()
        .map_err(|e| anyhow::anyhow!("cart {}: {e}", path.display()))?;
    Ok(cart)
}

/// Run one intent to its end: wait for phones (a second tap after "confirm
/// on your phone"), until approved, declined or out of time.
fn run_intent(
    engine: &mut Engine,
    field: &mut dyn Field,
    intent: &Intent,
    timeout: Duration,
) -> Result<Option<TapResult>> {
    let deadline = Instant::now() + timeout;
    println!("tap your phone …");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            println!("timed out: no phone");
            return Ok(None);
        }
        let result = field.with_phone(left, &mut |link| {
            println!("reading …");
            engine.tap(intent, link, now(), &mut OsRng)
        })?;
        match result {
            None => continue,
            Some(TapResult::ConfirmOnPhone) => println!("confirm on your phone, then tap again"),
            Some(r) => return Ok(Some(r)),
        }
    }
}

fn report(r: &TapResult) {
    match r {
        TapResult::Approved(a) => {
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
            println!("{line}");
        }
        TapResult::Declined(d) => println!("declined: {d} [{}]", d.code()),
        TapResult::ConfirmOnPhone => println!("confirm on your phone, then tap again"),
    }
}

fn open_slot(command: &[String], slot: u16) -> Result<()> {
    let Some((prog, args)) = command.split_first() else {
        println!("open slot {slot} (no open_command configured)");
        return Ok(());
    };
    let status = std::process::Command::new(prog)
        .args(args)
        .arg(slot.to_string())
        .status()
        .with_context(|| format!("open_command {prog}"))?;
    if !status.success() {
        bail!("open_command for slot {slot} failed: {status}");
    }
    Ok(())
}

/// `queue repair`: ask the host for its head, rebuild from it.
fn repair(config: &Config) -> Result<()> {
    let path = config.path(&config.queue.path);
    let (seq, hash) = {
        let engine = app::engine(config)?;
        let integrity = engine.queue.integrity();
        if integrity.is_ok() {
            println!("queue {}: intact; nothing to repair", integrity.path);
            return Ok(());
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
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let level = if cli.verbose {
        tracing::Level::INFO
    } else {
        tracing::Level::WARN
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_max_level(level)
        .init();
    if let Command::Init { out } = &cli.command {
        if out.exists() {
            bail!("{} exists; not overwriting", out.display());
        }
        std::fs::write(out, EXAMPLE).with_context(|| format!("writing {}", out.display()))?;
        println!("wrote {}", out.display());
        return Ok(());
    }
    if let Command::Readers = &cli.command {
        let found = tapstack_reader::discover();
        if found.is_empty() {
            println!("no reader found (PC/SC readers need pcscd running; serial PN532 boards are probed on /dev/ttyUSB* and /dev/ttyACM*)");
        }
        for r in found {
            println!("{:<8} {:<40} {}", r.driver, r.connection, r.name);
        }
        return Ok(());
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
    let timeout = Duration::from_secs(config.terminal.tap_timeout_secs);
    match cli.command {
        Command::Init { .. } | Command::Readers => unreachable!(),
        Command::Pay { amount, currency } => {
            let cur = Currency::new(&currency)
                .with_context(|| format!("{currency:?} is not an ISO 4217 code like CNY"))?;
            let amount = Amount::parse(&amount, cur)
                .with_context(|| format!("{amount:?} is not an amount in {cur} (like 12.50)"))?;
            println!("pay {amount} at {}", engine.ctx.certificate.common_name());
            let mut field = app::field(&config)?;
            if let Some(r) = run_intent(
                &mut engine,
                field.as_mut(),
                &Intent::Pay { amount },
                timeout,
            )? {
                report(&r);
                if matches!(r, TapResult::Declined(_)) {
                    std::process::exit(2);
                }
            }
        }
        Command::Order { cart } => {
            let cart = read_cart(&cart)?;
            let total = Amount {
                minor: cart.total().unwrap_or(0),
                currency: cart.currency,
            };
            println!("order of {} item(s), total {total}", cart.items.len());
            let mut field = app::field(&config)?;
            if let Some(r) = run_intent(
                &mut engine,
                field.as_mut(),
                &Intent::Order { cart },
                timeout,
            )? {
                report(&r);
                if matches!(r, TapResult::Declined(_)) {
                    std::process::exit(2);
                }
            }
        }
        Command::Kiosk { site, taps } => {
            let kiosk = config.kiosk.clone();
            let site = site
                .or_else(|| kiosk.as_ref().map(|k| k.site.clone()))
                .context("no site: pass --site or set [kiosk] site")?;
            let command = kiosk.map(|k| k.open_command).unwrap_or_default();
            let mut field = app::field(&config)?;
            println!("kiosk at {site}: tap your phone to collect a parcel");
            let mut done = 0;
            while taps.is_none_or(|n| done < n) {
                let result = field.with_phone(timeout, &mut |link| {
                    engine.tap(
                        &Intent::Pickup { site: site.clone() },
                        link,
                        now(),
                        &mut OsRng,
                    )
                })?;
                let Some(r) = result else { continue };
                done += 1;
                report(&r);
                if let TapResult::Approved(a) = &r {
                    if let Some(slot) = a.slot {
                        if let Err(e) = open_slot(&command, slot) {
                            eprintln!(
                                "{e:#} — the pickup is recorded (#{}); open slot {slot} by hand",
                                a.seq
                            );
                        }
                    }
                }
            }
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
            if !report.is_ok() {
                std::process::exit(1);
            }
        }
        Command::Queue { last, .. } => {
            let integrity = engine.queue.integrity();
            if !integrity.is_ok() {
                eprintln!(
                    "queue {}: {} — run `tap-terminal queue verify`",
                    integrity.path,
                    integrity.summary()
                );
            }
            let pending = engine.queue.pending(usize::MAX)?;
            let (head, _) = engine.queue.head()?;
            println!(
                "terminal {} — {} record(s) waiting for upload, {} in total, host holds up to #{}",
                engine.ctx.certificate.common_name(),
                pending.len(),
                head,
                engine.queue.acked()?
            );
            let queued = Amount {
                minor: engine.risk.queued_amount,
                currency: engine.currency,
            };
            let oldest = engine.risk.oldest.map_or_else(|| "-".to_owned(), utc);
            println!("queued {queued}, oldest from {oldest}");
            for s in engine.queue.recent(last)? {
                let r: TransactionRecord = s.record()?;
                println!(
                    "  #{} {} at {}{}",
                    s.seq,
                    hex::encode(&s.hash[..8]),
                    utc(r.recorded_at),
                    r.order_number
                        .map(|n| format!(" order {n}"))
                        .unwrap_or_default()
                );
            }
            if !integrity.is_ok() {
                std::process::exit(1);
            }
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
                println!("listening on http://{}", listener.local_addr()?);
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
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_formats_unix_seconds() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_780_000_000), "2026-05-28 20:26:40 UTC");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }
}
