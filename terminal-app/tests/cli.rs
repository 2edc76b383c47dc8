//! The `tap-terminal` binary as a person at the counter or a script runs
//! it: what is refused before a phone is asked for (and with which exit
//! status), exit statuses 0/1/2/3, `--json`, the terminal's own
//! certificate, a closed stdout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand_core::OsRng;
use serde_json::Value;
use tapstack_certs::LeafOptions;
use tapstack_tests::{workspace_binary, Child};

use common::now;

const DAY: u64 = 86_400;
/// What the emulator logs (with `--verbose`) when a phone is asked for and
/// comes: its absence proves no tap was taken.
const PHONE_CAME: &str = "phone enters the field";

/// A counter: a PKI started 10 days ago, three certificates for the same
/// merchant (valid now, expired 9 days ago, valid only from in 2 days),
/// alice (pays) and bob (declines everything).
struct Counter {
    dir: tempfile::TempDir,
}

impl Counter {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let t0 = now() - 10 * DAY;
        tapstack_certs::init(&d.join("pki"), t0, &mut OsRng).unwrap();
        let mut pki = tapstack_certs::Pki::load(&d.join("pki")).unwrap();
        // The list of a PKI made 10 days ago is stale by now: re-sign it.
        pki.resign_revocations(now()).unwrap();
        for (stem, at, days) in [
            ("terminal", now(), None),
            ("expired", t0, Some(1)),
            ("future", now() + 2 * DAY, Some(30)),
        ] {
            pki.issue_terminal(
                "Tea House #12",
                d,
                &LeafOptions {
                    file_stem: Some(stem.into()),
                    days,
                },
                at,
                &mut OsRng,
            )
            .unwrap();
        }
        for name in ["alice", "bob"] {
            tapstack_emulator::profile::create(
                &d.join("pki"),
                name,
                &d.join("phones"),
                now(),
                &mut OsRng,
            )
            .unwrap();
        }
        let bob = d.join("phones/bob.toml");
        let text = std::fs::read_to_string(&bob).unwrap();
        assert!(text.contains("policy = \"confirm-on-phone\""), "{text}");
        std::fs::write(
            &bob,
            text.replace("policy = \"confirm-on-phone\"", "policy = \"decline\""),
        )
        .unwrap();
        let c = Counter { dir };
        c.configure(&Setup::default());
        c
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Write `terminal.toml`.
    fn configure(&self, s: &Setup<'_>) {
        let text = format!(
            r#"[terminal]
certificate = "{cert}.pem"
key = "{cert}.key"
currency = "{currency}"
tap_timeout_secs = {timeout}

[reader]
connection = "{connection}"

[trust]
root = "pki/root.pem"
issuers = ["pki/issuer.pem"]
operators = ["pki/operator.pem"]
revocations = "pki/revocations.tlv"

[queue]
path = "queue"

[risk]
floor_limit = 10000
cvm_limit = 10000
wallet_max_amount = 100000
wallet_max_count = 100
queue_max_amount = 1000000
queue_max_count = {queue_max_count}
queue_max_age_secs = 86400
"#,
            cert = s.cert,
            currency = s.currency,
            timeout = s.timeout,
            connection = s.connection,
            queue_max_count = s.queue_max_count,
        );
        std::fs::write(self.path("terminal.toml"), text).unwrap();
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tap-terminal"));
        c.arg("--config")
            .arg(self.path("terminal.toml"))
            .arg("--verbose")
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        Run(self.command(args).output().unwrap())
    }

    /// `queue --json`.
    fn queue(&self) -> Value {
        let r = self.run(&["queue", "--json"]);
        assert_eq!(r.code(), 0, "{r:?}");
        r.json()
    }
}

struct Setup<'a> {
    cert: &'a str,
    currency: &'a str,
    connection: String,
    timeout: u64,
    queue_max_count: u32,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            cert: "terminal",
            currency: "CNY",
            connection: "emu:phones/alice.toml".into(),
            timeout: 10,
            queue_max_count: 1000,
        }
    }
}

struct Run(Output);

impl core::fmt::Debug for Run {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "status {:?}\n--- stdout\n{}--- stderr\n{}",
            self.0.status,
            self.stdout(),
            self.stderr()
        )
    }
}

impl Run {
    fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Stdout is exactly one JSON object.
    fn json(&self) -> Value {
        let out = self.stdout();
        let mut lines = out.lines();
        let v = serde_json::from_str(lines.next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}: {self:?}"));
        assert_eq!(lines.next(), None, "one object only: {self:?}");
        v
    }
    /// Refused before a tap: exit 1, the code on stderr, no phone asked for.
    fn assert_refused(&self, code: &str) {
        assert_eq!(self.code(), 1, "{self:?}");
        assert!(
            self.stderr().contains(&format!("[{code}]")),
            "{code}: {self:?}"
        );
        assert!(
            !self.stderr().contains(PHONE_CAME),
            "a tap was taken: {self:?}"
        );
        assert!(!self.stdout().contains("tap your phone"), "{self:?}");
    }
}

#[test]
fn refusals_come_before_any_tap_with_exit_status_1() {
    let c = Counter::new();
    // An amount of nothing: the API refuses it, so does the CLI now.
    c.run(&["pay", "0", "CNY"]).assert_refused("bad_amount");
    c.run(&["pay", "0.00", "CNY"]).assert_refused("bad_amount");
    // A cart whose total is zero.
    std::fs::write(
        c.path("free.json"),
        r#"{"currency":"CNY","items":[{"sku":"W","name":"Water","qty":2,"price":"0.00"}]}"#,
    )
    .unwrap();
    c.run(&["order", "--cart", c.path("free.json").to_str().unwrap()])
        .assert_refused("bad_amount");
    // Another currency than the terminal's.
    let r = c.run(&["pay", "5.00", "USD"]);
    r.assert_refused("wrong_currency");
    assert!(
        r.stderr().contains("this terminal takes CNY only, not USD"),
        "{r:?}"
    );
    std::fs::write(
        c.path("eur.json"),
        r#"{"currency":"EUR","items":[{"sku":"T","name":"Tea","qty":1,"price":"8.00"}]}"#,
    )
    .unwrap();
    c.run(&["order", "--cart", c.path("eur.json").to_str().unwrap()])
        .assert_refused("wrong_currency");
    // Above the floor limit (100.00), by one cent; an order's total too.
    let r = c.run(&["pay", "100.01", "CNY"]);
    r.assert_refused("floor_limit");
    assert!(
        r.stderr().contains("largest offline tap: 100.00 CNY"),
        "{r:?}"
    );
    std::fs::write(
        c.path("big.json"),
        r#"{"currency":"CNY","items":[{"sku":"T","name":"Tea","qty":13,"price":"8.00"}]}"#,
    )
    .unwrap();
    c.run(&["order", "--cart", c.path("big.json").to_str().unwrap()])
        .assert_refused("floor_limit");
    // Not an ISO 4217 code.
    let r = c.run(&["pay", "1.00", "XYZ"]);
    r.assert_refused("bad_currency");
    assert!(
        r.stderr()
            .contains("XYZ is not an active ISO 4217 currency code"),
        "{r:?}"
    );
    // --json: the refusal is the one object on stdout.
    let r = c.run(&["pay", "0", "CNY", "--json"]);
    assert_eq!(r.code(), 1, "{r:?}");
    let v = r.json();
    assert_eq!(
        (v["status"].as_str(), v["code"].as_str()),
        (Some("refused"), Some("bad_amount")),
        "{v}"
    );
    // Nothing of it reached the queue.
    let q = c.queue();
    assert_eq!(
        (q["head_seq"].as_u64(), q["pending"].as_u64()),
        (Some(0), Some(0)),
        "{q}"
    );

    // At the limit it is a tap (exit 0): the refusal is exact.
    let r = c.run(&["pay", "100.00", "CNY"]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(r.stderr().contains(PHONE_CAME), "{r:?}");
}

#[test]
fn past_a_queue_cap_the_cli_refuses_before_a_tap() {
    let c = Counter::new();
    c.configure(&Setup {
        queue_max_count: 1,
        ..Setup::default()
    });
    let r = c.run(&["pay", "1.00", "CNY"]);
    assert_eq!(r.code(), 0, "{r:?}");
    c.run(&["pay", "1.00", "CNY"])
        .assert_refused("queue_count_cap");
    assert_eq!(c.queue()["head_seq"].as_u64(), Some(1));
}

#[test]
fn an_unknown_currency_in_the_configuration_is_refused() {
    let c = Counter::new();
    c.configure(&Setup {
        currency: "XYZ",
        ..Setup::default()
    });
    for args in [&["pay", "1.00", "XYZ"][..], &["queue"]] {
        let r = c.run(args);
        assert_eq!(r.code(), 1, "{r:?}");
        assert!(
            r.stderr()
                .contains("terminal.currency: XYZ is not an active ISO 4217 currency code"),
            "{r:?}"
        );
        assert!(!r.stderr().contains(PHONE_CAME), "{r:?}");
    }
}

#[cfg(unix)]
#[test]
fn a_group_readable_terminal_key_is_refused_with_the_chmod_fix() {
    use std::os::unix::fs::PermissionsExt;
    let c = Counter::new();
    let key = c.path("terminal.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let r = c.run(&["pay", "1.00", "CNY"]);
    assert_ne!(r.code(), 0, "{r:?}");
    assert!(
        r.stderr()
            .contains(&format!("run `chmod 600 {}`", key.display())),
        "{r:?}"
    );
    assert!(!r.stderr().contains(PHONE_CAME), "{r:?}");
    // Fixed as told, the same command taps.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = c.run(&["pay", "1.00", "CNY"]);
    assert_eq!(r.code(), 0, "{r:?}");
}

#[test]
fn approved_exits_0_declined_2_and_json_has_the_outcome() {
    let c = Counter::new();
    let r = c.run(&["pay", "12.50", "CNY", "--json"]);
    assert_eq!(r.code(), 0, "{r:?}");
    let first = r.json();
    let v = &first;
    assert_eq!(
        (
            v["status"].as_str(),
            v["seq"].as_u64(),
            v["kind"].as_str(),
            v["amount"].as_u64(),
            v["currency"].as_str(),
            v["record_id"].as_str().map(str::len),
        ),
        (
            Some("approved"),
            Some(1),
            Some("pay"),
            Some(1250),
            Some("CNY"),
            Some(64)
        ),
        "{v}"
    );
    // The person's lines went to stderr, not into the JSON.
    assert!(r.stderr().contains("tap your phone"), "{r:?}");

    // Without --json: the human line, still exit 0.
    let r = c.run(&["pay", "2.00", "CNY"]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert!(r.stdout().contains("approved — queued #2"), "{r:?}");

    std::fs::write(
        c.path("cart.json"),
        r#"{"currency":"CNY","items":[{"sku":"T","name":"Tea","qty":2,"price":"8.00"}]}"#,
    )
    .unwrap();
    let r = c.run(&[
        "order",
        "--cart",
        c.path("cart.json").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code(), 0, "{r:?}");
    let v = r.json();
    assert_eq!(
        (
            v["status"].as_str(),
            v["order_number"].as_str(),
            v["amount"].as_u64()
        ),
        (Some("approved"), Some("A3"), Some(1600)),
        "{v}"
    );

    // bob declines every tap: exit 2, with the code.
    c.configure(&Setup {
        connection: "emu:phones/bob.toml".into(),
        ..Setup::default()
    });
    let r = c.run(&["pay", "3.00", "CNY"]);
    assert_eq!(r.code(), 2, "{r:?}");
    assert!(
        r.stdout()
            .contains("\ndeclined: the phone refused: declined on the phone (9103)")
            && r.stdout().contains("[phone_refused]"),
        "{r:?}"
    );
    let r = c.run(&["pay", "3.00", "CNY", "--json"]);
    assert_eq!(r.code(), 2, "{r:?}");
    let v = r.json();
    assert_eq!(
        (v["status"].as_str(), v["code"].as_str()),
        (Some("declined"), Some("phone_refused")),
        "{v}"
    );
    // The status word itself and its meaning, for a point of sale.
    assert_eq!(
        (v["sw"].as_str(), v["meaning"].as_str()),
        (Some("9103"), Some("declined on the phone")),
        "{v}"
    );

    // queue --json: the counts and the records, newest first.
    let q = c.queue();
    assert_eq!(
        (
            q["terminal"].as_str(),
            q["currency"].as_str(),
            q["pending"].as_u64(),
            q["pending_amount"].as_u64(),
            q["head_seq"].as_u64(),
            q["acked_seq"].as_u64(),
        ),
        (
            Some("Tea House #12"),
            Some("CNY"),
            Some(3),
            Some(1250 + 200 + 1600),
            Some(3),
            Some(0)
        ),
        "{q}"
    );
    let records = q["records"].as_array().unwrap();
    let seqs: Vec<_> = records.iter().map(|r| r["seq"].as_u64()).collect();
    assert_eq!(seqs, [Some(3), Some(2), Some(1)], "{q}");
    assert_eq!(
        (
            records[2]["amount"].as_u64(),
            records[2]["kind"].as_str(),
            records[2]["uploaded"].as_bool(),
            records[0]["order_number"].as_str()
        ),
        (Some(1250), Some("pay"), Some(false), Some("A3")),
        "{q}"
    );
    assert_eq!(records[2]["record_id"], first["record_id"], "{q}");
    let q = c.run(&["queue", "--json", "--last", "1"]).json();
    assert_eq!(q["records"].as_array().map(Vec::len), Some(1), "{q}");
}

#[test]
fn a_closed_stdout_ends_queue_quietly() {
    let c = Counter::new();
    for _ in 0..3 {
        assert_eq!(c.run(&["pay", "1.00", "CNY"]).code(), 0);
    }
    for json in [false, true] {
        let mut args = vec!["queue", "--last", "100"];
        if json {
            args.push("--json");
        }
        let mut child = c
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -0`: the reader is gone before the first line.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn the_terminal_certificate_must_be_valid_at_tap_time() {
    let c = Counter::new();
    let expired_at = tapstack_terminal::utc(
        tapstack_certs::read_certificate(&c.path("expired.pem"))
            .unwrap()
            .not_after(),
    );
    c.configure(&Setup {
        cert: "expired",
        ..Setup::default()
    });
    for args in [
        &["pay", "1.00", "CNY"][..],
        &["kiosk", "--site", "LOCKER-7", "--taps", "1"],
    ] {
        let r = c.run(args);
        r.assert_refused("terminal_certificate_expired");
        assert!(
            r.stderr().contains(&format!(
                "terminal certificate expired at {expired_at}, renew it with `tap-certs terminal`"
            )),
            "{r:?}"
        );
    }
    c.configure(&Setup {
        cert: "future",
        ..Setup::default()
    });
    let r = c.run(&["pay", "1.00", "CNY", "--json"]);
    assert_eq!(r.code(), 1, "{r:?}");
    assert_eq!(
        r.json()["code"].as_str(),
        Some("terminal_certificate_not_yet_valid"),
        "{r:?}"
    );
    assert!(!r.stderr().contains(PHONE_CAME), "{r:?}");
    assert_eq!(c.queue()["head_seq"].as_u64(), Some(0));
}

// ---------------------------------------------------------------- serve

fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn serve_under_an_expired_certificate_refuses_intents_and_says_so() {
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let c = Counter::new();
    c.configure(&Setup {
        cert: "expired",
        ..Setup::default()
    });
    let mut child = Kill(
        c.command(&["serve"])
            .env("TAPSTACK_API_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .parse()
        .unwrap();
    let (status, h) = http(addr, "GET", "/v1/health", None);
    assert_eq!(
        (
            status,
            h["status"].as_str(),
            h["certificate"]["status"].as_str()
        ),
        (200, Some("degraded"), Some("terminal_certificate_expired")),
        "{h}"
    );
    assert!(
        h["certificate"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("renew it with `tap-certs terminal`")),
        "{h}"
    );
    let (status, v) = http(
        addr,
        "POST",
        "/v1/intents",
        Some(r#"{"kind":"pay","amount":"1.00","currency":"CNY"}"#),
    );
    assert_eq!(
        (status, v["error"].as_str()),
        (422, Some("terminal_certificate_expired")),
        "{v}"
    );
}

// ---------------------------------------------------------------- a real reader: time-outs

/// `tap-emu pn532` on a PTY: alice taps once, then stays away (a gap of
/// ten minutes).
fn pn532(c: &Counter) -> Child {
    let bin = workspace_binary("tap-emu");
    assert!(
        bin.exists(),
        "{} missing: `cargo build --workspace --bins` first (make test does)",
        bin.display()
    );
    let link = c.path("pn532");
    let emu = Child::spawn(
        "tap-emu",
        Command::new(bin).args([
            "pn532",
            "--link",
            link.to_str().unwrap(),
            "--wallet",
            c.path("phones/alice.toml").to_str().unwrap(),
            "--idle-ms",
            "300",
            "--gap-ms",
            "600000",
        ]),
        Some(&c.path("emu.log")),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !link.exists() {
        assert!(Instant::now() < deadline, "tap-emu pn532 did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    emu
}

#[test]
fn no_phone_in_time_or_cancelled_exits_3() {
    let c = Counter::new();
    let _emu = pn532(&c);
    let connection = format!("pn532:{}", c.path("pn532").display());
    c.configure(&Setup {
        connection: connection.clone(),
        timeout: 20,
        ..Setup::default()
    });
    let r = c.run(&["pay", "1.00", "CNY", "--json"]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert_eq!(r.json()["seq"].as_u64(), Some(1), "{r:?}");

    // The phone is gone: no tap within 2 s.
    c.configure(&Setup {
        connection: connection.clone(),
        timeout: 2,
        ..Setup::default()
    });
    let r = c.run(&["pay", "1.00", "CNY"]);
    assert_eq!(r.code(), 3, "{r:?}");
    assert!(r.stdout().contains("timed out: no phone"), "{r:?}");
    let r = c.run(&["pay", "1.00", "CNY", "--json"]);
    assert_eq!(r.code(), 3, "{r:?}");
    assert_eq!(r.json()["status"].as_str(), Some("timed_out"), "{r:?}");

    // Ctrl-C / SIGTERM while waiting for a phone: cancelled, exit 3.
    c.configure(&Setup {
        connection,
        timeout: 60,
        ..Setup::default()
    });
    let mut child = c
        .command(&["pay", "1.00", "CNY"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("tap your phone") {
        let mut line = String::new();
        assert_ne!(stdout.read_line(&mut line).unwrap(), 0, "{seen}");
        seen.push_str(&line);
    }
    std::thread::sleep(Duration::from_millis(300));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let asked = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(status.code(), Some(3), "{seen}{rest}");
    assert!(rest.contains("cancelled"), "{seen}{rest}");
    assert!(asked.elapsed() < Duration::from_secs(10));
    assert_eq!(c.queue()["head_seq"].as_u64(), Some(1));

    // The kiosk loop too: SIGTERM while it waits for the next phone is a
    // cancelled outcome and exit 3, not a silent exit with the last tap's.
    let mut child = c
        .command(&["kiosk", "--site", "LOCKER-7", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("kiosk at LOCKER-7") {
        let mut line = String::new();
        assert_ne!(stderr.read_line(&mut line).unwrap(), 0, "{said}");
        said.push_str(&line);
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(last["status"], "cancelled", "{text}");
}

#[test]
fn help_documents_the_exit_statuses() {
    let c = Counter::new();
    for args in [&["--help"][..], &["pay", "--help"]] {
        let r = c.run(args);
        assert_eq!(r.code(), 0, "{r:?}");
        for needle in [
            "0  approved",
            "1  error",
            "2  a phone tapped and the tap was declined",
            "3  timed out",
        ] {
            assert!(r.stdout().contains(needle), "{needle}: {r:?}");
        }
    }
    // A usage error is an error (1), not clap's 2, which means declined here.
    for args in [&["pay", "1.00"][..], &["pay", "1.00", "CNY", "--tip"]] {
        let r = c.run(args);
        assert_eq!(r.code(), 1, "{r:?}");
        assert!(!r.stderr().contains(PHONE_CAME), "{r:?}");
    }
}

#[test]
fn kiosk_json_prints_one_object_per_tap_and_exits_with_the_last() {
    let c = Counter::new();
    // alice holds no credential for LOCKER-7: every pickup is declined.
    let r = c.run(&["kiosk", "--site", "LOCKER-7", "--taps", "2", "--json"]);
    assert_eq!(r.code(), 2, "{r:?}");
    let lines: Vec<Value> = r
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {r:?}")))
        .collect();
    assert_eq!(lines.len(), 2, "{r:?}");
    for v in &lines {
        assert_eq!(v["status"].as_str(), Some("declined"), "{v}");
        assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
    }
}

#[test]
fn a_revocation_list_past_next_update_and_grace_stops_approvals() {
    let c = Counter::new();
    let mut pki = tapstack_certs::Pki::load(&c.path("pki")).unwrap();
    // Signed 8 days ago: next update was due yesterday.
    pki.resign_revocations(now() - 8 * DAY).unwrap();
    // Inside the default grace (72 h): still approved, reported overdue.
    let r = c.run(&["pay", "1.00", "CNY"]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert_eq!(c.queue()["revocations"]["status"].as_str(), Some("overdue"));
    // A grace of one hour: nothing is approved, before any phone is asked.
    let toml = c.path("terminal.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        text.replace(
            "revocations = \"pki/revocations.tlv\"",
            "revocations = \"pki/revocations.tlv\"\nrevocation_grace_secs = 3600",
        ),
    )
    .unwrap();
    for args in [
        &["pay", "1.00", "CNY"][..],
        &["kiosk", "--site", "LOCKER-7", "--taps", "1"],
    ] {
        let r = c.run(args);
        r.assert_refused("revocations_stale");
        assert!(r.stderr().contains("is out of date"), "{r:?}");
        assert!(!r.stderr().contains(PHONE_CAME), "{r:?}");
    }
    let q = c.queue();
    assert_eq!(q["revocations"]["status"].as_str(), Some("expired"), "{q}");
    assert_eq!(q["head_seq"].as_u64(), Some(1), "{q}");
    // A fresh list: approvals resume.
    pki.resign_revocations(now()).unwrap();
    let r = c.run(&["pay", "1.00", "CNY"]);
    assert_eq!(r.code(), 0, "{r:?}");
    assert_eq!(c.queue()["revocations"]["status"].as_str(), Some("current"));
}

#[test]
fn a_missing_or_invalid_revocation_list_stops_the_terminal_from_starting() {
    let c = Counter::new();
    let list = c.path("pki/revocations.tlv");
    std::fs::remove_file(&list).unwrap();
    for args in [&["pay", "1.00", "CNY"][..], &["queue"]] {
        let r = c.run(args);
        assert!(r.code() != 0 && r.code() != 101, "{r:?}");
        assert!(
            r.stderr().contains("revocations.tlv: missing")
                && r.stderr().contains("does not run without"),
            "{r:?}"
        );
        assert!(!r.stderr().contains(PHONE_CAME), "{r:?}");
    }
    std::fs::write(&list, b"not a list").unwrap();
    let r = c.run(&["queue"]);
    assert!(r.code() != 0 && r.code() != 101, "{r:?}");
    assert!(r.stderr().contains("not a revocation list"), "{r:?}");
}

/// `init` writes where `--config` points (the path every later command
/// reads) unless `--out` says otherwise, and never overwrites.
#[test]
fn init_writes_to_the_config_path_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("etc").join("terminal.toml");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    let init = |extra: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_tap-terminal"))
            .current_dir(dir.path())
            .arg("--config")
            .arg(&cfg)
            .arg("init")
            .args(extra)
            .output()
            .unwrap()
    };
    let out = init(&[]);
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("[terminal]"));
    assert!(
        !dir.path().join("terminal.toml").exists(),
        "wrote to the working directory"
    );
    // Never overwrites: exit 1, the file unchanged.
    std::fs::write(&cfg, "# mine\n").unwrap();
    let out = init(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), "# mine\n");
    // --out wins.
    let other = dir.path().join("other.toml");
    let out = init(&["--out".as_ref(), other.as_os_str()]);
    assert!(out.status.success(), "{out:?}");
    assert!(other.exists());
}
