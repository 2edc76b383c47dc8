//! The daemon's local API over real HTTP on 127.0.0.1: the daemon runs
//! in-process (library [`Daemon::serve`] with a listener and a shutdown
//! future) with `emu:` phones behind a gate the test opens tap by tap, and
//! uploads to a real in-process `tap-host` over mutual TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tapstack_emulator::phone::{Phone, PhoneQueue};
use tapstack_emulator::{inprocess, FaultScript};
use tapstack_reader::{
    Cancel, Capabilities, LoopbackReader, Reader, ReaderError, ReaderInfo, Session, TargetInfo,
};
use tapstack_terminal::app;
use tapstack_terminal::config::Config;
use tapstack_terminal::daemon::{Daemon, Options};
use tapstack_terminal::field::Field;
use tapstack_terminal::queue::{Queue, QueueStore};

use common::Shop;

/// Generous bound for waiting on the daemon (a hang guard, not a timing
/// assertion).
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- the shop

impl Shop {
    /// Write `terminal.toml`: `terminal` and `host` are extra lines for those
    /// sections; `host: None` leaves `[host]` out.
    fn write_config(&self, terminal: &str, host: Option<&str>) -> PathBuf {
        let host = match host {
            Some(extra) => format!(
                "[host]\nurl = \"https://{}\"\nca = \"tls/tls-ca.pem\"\n{extra}\n",
                self.host_addr
            ),
            None => String::new(),
        };
        let text = format!(
            r#"[terminal]
certificate = "terminal.pem"
key = "terminal.key"
currency = "CNY"
{terminal}

[reader]
connection = "emu:phones/alice.toml"

[trust]
root = "pki/root.pem"
issuers = ["pki/issuer.pem"]
operators = ["pki/operator.pem"]
revocations = "pki/revocations.tlv"

[queue]
path = "queue"

{host}
[risk]
floor_limit = 10000
cvm_limit = 5000
wallet_max_amount = 100000
wallet_max_count = 100
queue_max_amount = 1000000
queue_max_count = 1000
queue_max_age_secs = 86400

[kiosk]
site = "LOCKER-7"
endorsement = "terminal-kiosk.pem"
"#
        );
        let path = self.dir.path().join("terminal.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn host_head(&self) -> u64 {
        self.host_store
            .head(&self.terminal)
            .unwrap()
            .map_or(0, |h| h.seq)
    }
}

// ---------------------------------------------------------------- the gate

/// One tap the test lets through: at once, or held inside the field until
/// the test says go (a tap "in flight").
enum Tap {
    Now,
    Held {
        started: mpsc::Sender<()>,
        go: mpsc::Receiver<()>,
    },
    /// The phone stays on the reader after the tap until `left` fires.
    Stays {
        left: mpsc::Receiver<()>,
    },
}

/// The emulated phones (the emulator's loopback reader, as `emu:` has
/// them), but a phone enters the field only when the test offers a tap.
struct GatedReader {
    inner: LoopbackReader,
    taps: mpsc::Receiver<Tap>,
    used: Arc<AtomicUsize>,
    /// Waits for a phone that ended because their token was cancelled.
    cancelled: Arc<AtomicUsize>,
}

impl Reader for GatedReader {
    fn info(&self) -> ReaderInfo {
        self.inner.info()
    }

    fn wait_for_target(
        &mut self,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Result<Box<dyn Session + '_>, ReaderError> {
        let deadline = Instant::now() + timeout;
        let tap = loop {
            if let Err(e) = cancel.check() {
                self.cancelled.fetch_add(1, Ordering::SeqCst);
                return Err(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReaderError::Timeout);
            }
            match self.taps.recv_timeout(left.min(Duration::from_millis(10))) {
                Ok(t) => break t,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(left.min(Duration::from_millis(10)))
                }
            }
        };
        let stays = match tap {
            Tap::Now => None,
            Tap::Held { started, go } => {
                let _ = started.send(());
                let _ = go.recv();
                None
            }
            Tap::Stays { left } => Some(left),
        };
        self.used.fetch_add(1, Ordering::SeqCst);
        let inner = self.inner.wait_for_target(timeout, &Cancel::new())?;
        Ok(Box::new(GatedSession { inner, stays }))
    }

    fn set_transmit_timeout(&mut self, timeout: Duration) {
        self.inner.set_transmit_timeout(timeout);
    }
}

/// The phone of a [`GatedReader`]: it may rest on the reader after the tap.
struct GatedSession<'a> {
    inner: Box<dyn Session + 'a>,
    /// Fires when the phone is lifted away.
    stays: Option<mpsc::Receiver<()>>,
}

impl Session for GatedSession<'_> {
    fn target(&self) -> &TargetInfo {
        self.inner.target()
    }

    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ReaderError> {
        self.inner.transmit(apdu)
    }

    fn is_present(&mut self) -> Result<bool, ReaderError> {
        self.inner.is_present()
    }

    fn wait_removed(&mut self, timeout: Duration, cancel: &Cancel) -> Result<(), ReaderError> {
        if let Some(left) = self.stays.take() {
            let _ = left.recv();
        }
        self.inner.wait_removed(timeout, cancel)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// A daemon serving on 127.0.0.1:<free port>.
struct Running {
    addr: SocketAddr,
    taps: mpsc::Sender<Tap>,
    used: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), tapstack_terminal::Error>>>,
}

impl Running {
    fn tap(&self) {
        self.taps.send(Tap::Now).unwrap();
    }

    /// Stop it; the serve future must end cleanly.
    fn stop(mut self, shop: &Shop) {
        let _ = self.shutdown.take().unwrap().send(());
        let r = shop.rt.block_on(self.handle.take().unwrap()).unwrap();
        r.unwrap();
    }
}

fn start(shop: &Shop, config: &Path, opts: Options) -> Running {
    let config = Config::load(config, std::iter::empty()).unwrap();
    let engine = app::engine(&config).unwrap();
    let spec = shop.phones[0].display().to_string();
    let (taps_tx, taps_rx) = mpsc::channel();
    let used = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let wallet = tapstack_emulator::profile::load(&shop.phones[0]).unwrap();
    let reader = GatedReader {
        inner: inprocess::loopback(PhoneQueue::new(
            vec![Phone::from_wallet(wallet)],
            FaultScript::default(),
        )),
        taps: taps_rx,
        used: used.clone(),
        cancelled: cancelled.clone(),
    };
    let field = Field::new(Box::new(reader), format!("gated emu:{spec}"));
    let daemon = Daemon::new(&config, engine, field, opts).unwrap();
    let listener = shop
        .rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = shop.rt.spawn(daemon.serve(listener, async move {
        let _ = rx.await;
    }));
    let running = Running {
        addr,
        taps: taps_tx,
        used,
        cancelled,
        shutdown: Some(tx),
        handle: Some(handle),
    };
    if config.host.is_some() {
        // Let the start-up sync finish, so counts below are deterministic.
        wait_for(addr, "the start-up sync", |a| {
            get(a, "/v1/queue").1["last_sync"]["attempted_at"].is_u64()
        });
    }
    running
}

// ---------------------------------------------------------------- HTTP client

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    s
}

fn write_request(
    s: &mut TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        s.write_all(b).unwrap();
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(
            std::str::from_utf8(&raw[..eol])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap();
        raw = &raw[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size.min(raw.len())]);
        raw = &raw[(size + 2).min(raw.len())..];
    }
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end: {}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    Reply {
        status,
        body: if chunked {
            dechunk(rest)
        } else {
            rest.to_vec()
        },
        headers,
    }
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut s = connect(addr);
    write_request(&mut s, addr, method, path, headers, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_reply(&raw)
}

fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let r = request(addr, "GET", path, &[], None);
    (r.status, r.json())
}

fn post_intent(addr: SocketAddr, key: Option<&str>, body: &Value) -> Reply {
    let text = body.to_string();
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(k) = key {
        headers.push(("Idempotency-Key", k));
    }
    request(addr, "POST", "/v1/intents", &headers, Some(text.as_bytes()))
}

fn create(addr: SocketAddr, body: &Value) -> String {
    let r = post_intent(addr, None, body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_string()
}

/// Long-poll until the intent ends.
fn outcome(addr: SocketAddr, id: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, v) = get(addr, &format!("/v1/intents/{id}?wait=30"));
        assert_eq!(status, 200, "{v}");
        if v["final"] == json!(true) {
            return v;
        }
        assert!(Instant::now() < deadline, "intent {id} did not end: {v}");
    }
}

fn wait_for(addr: SocketAddr, what: &str, mut ok: impl FnMut(SocketAddr) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !ok(addr) {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_state(addr: SocketAddr, id: &str, state: &str) {
    wait_for(addr, state, |a| {
        get(a, &format!("/v1/intents/{id}")).1["state"] == state
    });
}

fn pay(amount: &str) -> Value {
    json!({"kind": "pay", "amount": amount, "currency": "CNY"})
}

/// The queue's head, read after the daemon stopped (sled's background
/// threads may hold its lock a moment longer than the daemon).
fn queue_head(shop: &Shop) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match Queue::open(&shop.dir.path().join("queue")) {
            Ok(q) => return q.head().unwrap().0,
            Err(e) if Instant::now() < deadline => {
                eprintln!("queue not yet released: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("queue does not open: {e}"),
        }
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn pay_order_pickup_and_two_tap_over_http() {
    let shop = Shop::new();
    let cfg = shop.write_config("", Some("sync_interval_secs = 3600\nsync_after_taps = 0"));
    let d = start(&shop, &cfg, Options::default());
    let a = d.addr;

    let id = create(a, &pay("12.50"));
    d.tap();
    let v = outcome(a, &id);
    assert_eq!(v["state"], "approved", "{v}");
    assert_eq!(
        (
            v["approved"]["seq"].as_u64(),
            v["approved"]["amount"].as_u64()
        ),
        (Some(1), Some(1250))
    );
    assert_eq!(
        (
            v["approved"]["kind"].as_str(),
            v["approved"]["receipt_delivered"].as_bool()
        ),
        (Some("pay"), Some(true))
    );
    assert_eq!(v["approved"]["record_id"].as_str().unwrap().len(), 64);
    assert_eq!(v["message"], "approved — queued #1");

    let cart = json!({"kind": "order", "cart": {"currency": "CNY", "items": [
        {"sku": "TEA-01", "name": "Jasmine tea", "qty": 2, "price": "8.00"},
        {"sku": "BUN-07", "name": "Pork bun", "qty": 1, "price": "4.5"}]}});
    let id = create(a, &cart);
    d.tap();
    let v = outcome(a, &id);
    assert_eq!(v["approved"]["order_number"], "A2", "{v}");
    assert_eq!(v["approved"]["amount"], 2050);

    // A pickup needs the user's presence: confirm on the phone, tap again.
    let id = create(a, &json!({"kind": "pickup", "site": "LOCKER-7"}));
    d.tap();
    wait_state(a, &id, "confirm_on_phone");
    d.tap();
    let v = outcome(a, &id);
    assert_eq!(
        (
            v["approved"]["slot"].as_u64(),
            v["approved"]["parcel"].as_str()
        ),
        (Some(12), Some("SF1")),
        "{v}"
    );
    assert_eq!(v["approved"]["amount"], Value::Null);

    // Above the phone's own limit (30.00): it asks its user, then taps again.
    let id = create(a, &pay("45.00"));
    d.tap();
    wait_state(a, &id, "confirm_on_phone");
    let (_, v) = get(a, &format!("/v1/intents/{id}"));
    assert_eq!(v["message"], "confirm on your phone, then tap again");
    d.tap();
    let v = outcome(a, &id);
    assert_eq!(
        (v["approved"]["seq"].as_u64(), v["approved"]["cvm"].as_str()),
        (Some(4), Some("confirmed_on_phone")),
        "{v}"
    );
    assert_eq!(v["taps"], 2);

    let (status, t) = get(a, "/v1/transactions?limit=10");
    assert_eq!(status, 200);
    let list = t["transactions"].as_array().unwrap();
    let summary: Vec<(u64, &str)> = list
        .iter()
        .map(|r| (r["seq"].as_u64().unwrap(), r["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        vec![(4, "pay"), (3, "pickup"), (2, "order"), (1, "pay")]
    );
    assert_eq!(list[2]["order_number"], "A2");
    assert_eq!(
        (list[0]["amount"].as_u64(), list[0]["currency"].as_str()),
        (Some(4500), Some("CNY"))
    );
    let (_, t) = get(a, "/v1/transactions?limit=1");
    assert_eq!(t["transactions"].as_array().unwrap().len(), 1);

    let (_, q) = get(a, "/v1/queue");
    assert_eq!(
        (
            q["pending"].as_u64(),
            q["pending_amount"].as_u64(),
            q["head_seq"].as_u64()
        ),
        (Some(4), Some(1250 + 2050 + 4500), Some(4)),
        "{q}"
    );
    d.stop(&shop);
    assert_eq!(queue_head(&shop), 4);
}

#[test]
fn idempotency_keys_and_no_second_charge_for_one_intent() {
    let shop = Shop::new();
    let cfg = shop.write_config("", Some("sync_interval_secs = 3600\nsync_after_taps = 0"));
    let d = start(&shop, &cfg, Options::default());
    let a = d.addr;

    let first = post_intent(a, Some("pos-7/order-17"), &pay("5.00"));
    assert_eq!(first.status, 201);
    assert!(first
        .header("location")
        .unwrap()
        .starts_with("/v1/intents/in_"));
    let id = first.json()["id"].as_str().unwrap().to_string();
    // A retry: the same intent, not a second one.
    let again = post_intent(a, Some("pos-7/order-17"), &pay("5.00"));
    assert_eq!(
        (again.status, again.json()["id"].as_str()),
        (200, Some(id.as_str()))
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // The same request spelled differently is still the same request.
    let spelled = br#"{ "currency" : "CNY", "amount": "5.00",  "kind":"pay" }"#;
    let r = request(
        a,
        "POST",
        "/v1/intents",
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("Idempotency-Key", "pos-7/order-17"),
        ],
        Some(spelled),
    );
    assert_eq!(
        (r.status, r.json()["id"].as_str()),
        (200, Some(id.as_str()))
    );
    // Another request under the same key: refused, nothing created.
    let other = post_intent(a, Some("pos-7/order-17"), &pay("6.00"));
    assert_eq!(
        (other.status, other.json()["error"].as_str()),
        (409, Some("idempotency_conflict"))
    );
    assert_eq!(get(a, "/v1/queue").1["intents"]["open"], 1);

    d.tap();
    let v = outcome(a, &id);
    assert_eq!(v["approved"]["seq"], 1);

    // The point of sale retries after the approval: it gets the approved
    // intent back; nothing new waits for a phone, no tap is taken.
    let retry = post_intent(a, Some("pos-7/order-17"), &pay("5.00"));
    assert_eq!(retry.status, 200);
    let rv = retry.json();
    assert_eq!(
        (
            rv["id"].as_str(),
            rv["state"].as_str(),
            rv["approved"]["seq"].as_u64()
        ),
        (Some(id.as_str()), Some("approved"), Some(1))
    );
    let (_, q) = get(a, "/v1/queue");
    assert_eq!(
        (q["intents"]["open"].as_u64(), q["head_seq"].as_u64()),
        (Some(0), Some(1)),
        "{q}"
    );
    assert_eq!(d.used.load(Ordering::SeqCst), 1);

    // The same phone taps again: the finished intent cannot take it. Only a
    // new intent does, as a charge of its own.
    d.tap();
    let second = create(a, &pay("7.00"));
    let v2 = outcome(a, &second);
    assert_eq!(
        (
            v2["approved"]["seq"].as_u64(),
            v2["approved"]["amount"].as_u64()
        ),
        (Some(2), Some(700)),
        "{v2}"
    );
    let (_, v) = get(a, &format!("/v1/intents/{id}"));
    assert_eq!(
        (v["approved"]["seq"].as_u64(), v["taps"].as_u64()),
        (Some(1), Some(1)),
        "the first intent is unchanged: {v}"
    );
    let (_, t) = get(a, "/v1/transactions");
    let amounts: Vec<u64> = t["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["amount"].as_u64().unwrap())
        .collect();
    assert_eq!(amounts, vec![700, 500], "one record for each intent");
    d.stop(&shop);
}

/// `DELETE` of the intent waiting for a phone ends the reader's wait then
/// and there (its cancel token), not at the end of a polling slice; the
/// next intent takes the reader.
#[test]
fn a_cancel_ends_the_wait_for_a_phone_through_its_token() {
    let shop = Shop::new();
    let cfg = shop.write_config("", None);
    let d = start(&shop, &cfg, Options::default());
    let a = d.addr;
    let first = create(a, &pay("1.00"));
    wait_state(a, &first, "waiting_for_phone");
    // Waiting for a phone, and nobody ended the wait yet.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.cancelled.load(Ordering::SeqCst), 0);
    let r = request(a, "DELETE", &format!("/v1/intents/{first}"), &[], None);
    assert_eq!(r.status, 200);
    wait_for(a, "the wait to be cancelled", |_| {
        d.cancelled.load(Ordering::SeqCst) == 1
    });
    let second = create(a, &pay("2.00"));
    wait_state(a, &second, "waiting_for_phone");
    d.tap();
    assert_eq!(outcome(a, &second)["approved"]["amount"], 200);
    assert_eq!(
        d.used.load(Ordering::SeqCst),
        1,
        "one phone, for the second"
    );
    d.stop(&shop);
}

#[test]
fn cancel_queue_order_and_the_intent_cap() {
    let shop = Shop::new();
    let cfg = shop.write_config("", None);
    let d = start(
        &shop,
        &cfg,
        Options {
            max_intents: 3,
            ..Options::default()
        },
    );
    let a = d.addr;

    let first = create(a, &pay("1.00"));
    let second = create(a, &pay("2.00"));
    wait_state(a, &first, "waiting_for_phone");
    assert_eq!(
        get(a, &format!("/v1/intents/{second}")).1["state"],
        "queued"
    );
    let third = create(a, &pay("3.00"));
    let r = post_intent(a, None, &pay("4.00"));
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (429, Some("too_many_intents"))
    );
    assert!(r.header("retry-after").is_some());

    // A queued intent is cancelled; cancelling twice is fine.
    let r = request(a, "DELETE", &format!("/v1/intents/{second}"), &[], None);
    assert_eq!(
        (r.status, r.json()["state"].as_str()),
        (200, Some("cancelled"))
    );
    let r = request(a, "DELETE", &format!("/v1/intents/{second}"), &[], None);
    assert_eq!(
        (r.status, r.json()["cancel_reason"].as_str()),
        (200, Some("request"))
    );
    // The active one, waiting for a phone: cancelled, the next moves up.
    let r = request(a, "DELETE", &format!("/v1/intents/{first}"), &[], None);
    assert_eq!(r.status, 200);
    wait_state(a, &third, "waiting_for_phone");
    d.tap();
    let v = outcome(a, &third);
    assert_eq!(
        (
            v["approved"]["seq"].as_u64(),
            v["approved"]["amount"].as_u64()
        ),
        (Some(1), Some(300)),
        "{v}"
    );

    let r = request(a, "DELETE", &format!("/v1/intents/{third}"), &[], None);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (409, Some("already_final"))
    );
    let r = request(
        a,
        "DELETE",
        "/v1/intents/in_000000000000000000000000",
        &[],
        None,
    );
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("unknown_intent"))
    );
    let (_, v) = get(a, &format!("/v1/intents/{first}"));
    assert_eq!(
        (v["state"].as_str(), v["taps"].as_u64()),
        (Some("cancelled"), Some(0))
    );
    // No [host]: nothing to sync with.
    let r = request(a, "POST", "/v1/sync", &[], None);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (409, Some("no_host"))
    );
    d.stop(&shop);
    assert_eq!(
        queue_head(&shop),
        1,
        "only the approved intent wrote a record"
    );
}

#[test]
fn bad_input_gets_codes_and_writes_nothing() {
    let shop = Shop::new();
    let cfg = shop.write_config("", None);
    let d = start(&shop, &cfg, Options::default());
    let a = d.addr;
    let json_ct = [("Content-Type", "application/json")];
    let item = |extra: Value| {
        let mut i = json!({"sku": "TEA", "name": "Tea", "qty": 1, "price": "8.00"});
        for (k, v) in extra.as_object().unwrap() {
            i[k] = v.clone();
        }
        json!({"kind": "order", "cart": {"currency": "CNY", "items": [i]}})
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{".to_vec(), 400, "bad_json"),
        (b"[]".to_vec(), 400, "bad_json"),
        (b"".to_vec(), 400, "bad_json"),
        (br#"{"amount":"1.00","currency":"CNY"}"#.to_vec(), 400, "missing_field"),
        (br#"{"kind":"refund","amount":"1.00","currency":"CNY"}"#.to_vec(), 422, "bad_kind"),
        (br#"{"kind":7}"#.to_vec(), 400, "bad_field"),
        (br#"{"kind":"pay","amount":"1.00","currency":"CNY","tip":"1.00"}"#.to_vec(), 400, "unknown_field"),
        (br#"{"kind":"pay","amount":"1.00"}"#.to_vec(), 400, "missing_field"),
        // Several faults: the currency is judged first, as it is read
        // (amounts are read in its minor units).
        (br#"{"kind":"pay","currency":"XYZ"}"#.to_vec(), 422, "bad_currency"),
        (br#"{"kind":"pay","currency":"EUR","amount":12.5}"#.to_vec(), 422, "wrong_currency"),
        (br#"{"kind":"order","cart":{"currency":"EUR","items":"x"}}"#.to_vec(), 422, "wrong_currency"),
        (br#"{"kind":"pay","amount":"12.50","currency":"USD"}"#.to_vec(), 422, "wrong_currency"),
        (br#"{"kind":"pay","amount":"12.50","currency":"cny"}"#.to_vec(), 422, "bad_currency"),
        (br#"{"kind":"pay","amount":"1e3","currency":"CNY"}"#.to_vec(), 422, "bad_amount"),
        (br#"{"kind":"pay","amount":"-1","currency":"CNY"}"#.to_vec(), 422, "bad_amount"),
        (br#"{"kind":"pay","amount":"-1.00","currency":"CNY"}"#.to_vec(), 422, "bad_amount"),
        (br#"{"kind":"pay","amount":"12.505","currency":"CNY"}"#.to_vec(), 422, "bad_amount"),
        (br#"{"kind":"pay","amount":" 12.50","currency":"CNY"}"#.to_vec(), 422, "bad_amount"),
        (br#"{"kind":"pay","amount":"12.","currency":"CNY"}"#.to_vec(), 422, "bad_amount"),
        (br#"{"kind":"pay","amount":"0x10","currency":"CNY"}"#.to_vec(), 422, "bad_amount"),
        (br#"{"kind":"pay","amount":12.5,"currency":"CNY"}"#.to_vec(), 422, "bad_amount"),
        (br#"{"kind":"pay","amount":"0","currency":"CNY"}"#.to_vec(), 422, "bad_amount"),
        (br#"{"kind":"pay","amount":"99999999999999999999","currency":"CNY"}"#.to_vec(), 422, "bad_amount"),
        (br#"{"kind":"pay","amount":"100.01","currency":"CNY"}"#.to_vec(), 422, "floor_limit"),
        (item(json!({"qty": 0})).to_string().into_bytes(), 422, "bad_cart"),
        (item(json!({"qty": -1})).to_string().into_bytes(), 422, "bad_cart"),
        (item(json!({"qty": 1.5})).to_string().into_bytes(), 422, "bad_cart"),
        (item(json!({"qty": "2"})).to_string().into_bytes(), 400, "bad_field"),
        (item(json!({"price": "8.001"})).to_string().into_bytes(), 422, "bad_amount"),
        (item(json!({"sku": ""})).to_string().into_bytes(), 422, "bad_cart"),
        (item(json!({"colour": "red"})).to_string().into_bytes(), 400, "unknown_field"),
        (item(json!({"qty": 20, "price": "8.00"})).to_string().into_bytes(), 422, "floor_limit"),
        (br#"{"kind":"order","cart":{"currency":"CNY","items":[]}}"#.to_vec(), 422, "bad_cart"),
        (br#"{"kind":"order","cart":{"currency":"CNY","items":[{"sku":"W","name":"W","qty":2,"price":"0.00"}]}}"#.to_vec(), 422, "bad_amount"),
        (br#"{"kind":"pay","amount":"1.00","currency":"XYZ"}"#.to_vec(), 422, "bad_currency"),
        (br#"{"kind":"order","cart":{"currency":"EUR","items":[{"sku":"A","name":"A","qty":1,"price":"1.00"}]}}"#.to_vec(), 422, "wrong_currency"),
        (br#"{"kind":"pickup","site":""}"#.to_vec(), 422, "bad_site"),
        (br#"{"kind":"pickup","site":"LOCKER-8"}"#.to_vec(), 422, "wrong_site"),
    ];
    for (body, status, code) in &cases {
        let r = request(a, "POST", "/v1/intents", &json_ct, Some(body));
        let v = r.json();
        assert_eq!(
            (r.status, v["error"].as_str()),
            (*status, Some(*code)),
            "{}: {v}",
            String::from_utf8_lossy(body)
        );
        assert!(!v["message"].as_str().unwrap().is_empty());
    }
    // Too large: 413, and the client reads the answer (no reset).
    let mut huge = br#"{"kind":"pay","currency":"CNY","amount":"1.00","pad":""#.to_vec();
    huge.extend(std::iter::repeat_n(b'x', 70 * 1024));
    huge.extend_from_slice(b"\"}");
    let r = request(a, "POST", "/v1/intents", &json_ct, Some(&huge));
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (413, Some("body_too_large"))
    );
    let ok = pay("1.00").to_string();
    let r = request(
        a,
        "POST",
        "/v1/intents",
        &[("Content-Type", "text/plain")],
        Some(ok.as_bytes()),
    );
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let r = request(
        a,
        "POST",
        "/v1/intents",
        &[
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "has space"),
        ],
        Some(ok.as_bytes()),
    );
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_idempotency_key"))
    );
    let r = request(
        a,
        "POST",
        "/v1/intents",
        &[
            ("Content-Type", "application/json"),
            ("Host", "evil.example:7300"),
        ],
        Some(ok.as_bytes()),
    );
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("forbidden_host"))
    );
    for (method, path, status, code) in [
        ("GET", "/v1/intents/in_nope", 404, "unknown_intent"),
        ("GET", "/v1/intents/in_nope/events", 404, "unknown_intent"),
        ("PUT", "/v1/intents", 405, "method_not_allowed"),
        ("POST", "/v1/queue", 405, "method_not_allowed"),
        ("GET", "/v1/nothing", 404, "not_found"),
        ("GET", "/v1/transactions?limit=abc", 400, "bad_query"),
        ("GET", "/v1/transactions?limit=0", 400, "bad_query"),
    ] {
        let r = request(a, method, path, &[], None);
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (status, Some(code)),
            "{method} {path}"
        );
    }
    // Nothing was created or written, and the server still serves.
    let (status, h) = get(a, "/v1/health");
    assert_eq!((status, h["status"].as_str()), (200, Some("ok")), "{h}");
    let (_, q) = get(a, "/v1/queue");
    assert_eq!(
        (q["intents"]["open"].as_u64(), q["head_seq"].as_u64()),
        (Some(0), Some(0)),
        "{q}"
    );
    assert_eq!(d.used.load(Ordering::SeqCst), 0);
    let id = create(a, &pay("1.00"));
    let r = request(a, "GET", &format!("/v1/intents/{id}?wait=soon"), &[], None);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("bad_query"))
    );
    d.tap();
    assert_eq!(outcome(a, &id)["approved"]["seq"], 1);
    d.stop(&shop);
}

/// The event stream of a two-tap payment, read as it happens.
#[test]
fn event_stream_delivers_the_states_in_order() {
    let shop = Shop::new();
    let cfg = shop.write_config("", None);
    let d = start(&shop, &cfg, Options::default());
    let a = d.addr;
    let id = create(a, &pay("45.00"));

    let mut s = connect(a);
    write_request(
        &mut s,
        a,
        "GET",
        &format!("/v1/intents/{id}/events"),
        &[("Accept", "text/event-stream")],
        None,
    );
    let mut raw = Vec::new();
    read_until(&mut s, &mut raw, "event: waiting_for_phone");
    d.tap();
    read_until(&mut s, &mut raw, "event: confirm_on_phone");
    d.tap();
    read_until(&mut s, &mut raw, "event: approved");
    // The stream ends at the final state.
    s.read_to_end(&mut raw).unwrap();
    let reply = parse_reply(&raw);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
    let events = parse_sse(&reply.body);
    let states: Vec<&str> = events.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(
        states,
        [
            "queued",
            "waiting_for_phone",
            "reading",
            "confirm_on_phone",
            "reading",
            "approved"
        ]
    );
    let ids: Vec<usize> = events.iter().map(|(i, _, _)| *i).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    for (_, e, data) in &events {
        assert_eq!(
            (data["intent"].as_str(), data["state"].as_str()),
            (Some(id.as_str()), Some(e.as_str()))
        );
    }
    assert_eq!(events[1].2["message"], "tap your phone");
    assert_eq!(events[5].2["approved"]["seq"], 1);

    // A reconnecting client resumes after the last event it saw.
    let r = request(
        a,
        "GET",
        &format!("/v1/intents/{id}/events"),
        &[("Last-Event-ID", "4")],
        None,
    );
    let resumed: Vec<String> = parse_sse(&r.body).into_iter().map(|(_, e, _)| e).collect();
    assert_eq!(resumed, ["reading", "approved"]);
    d.stop(&shop);
}

/// Read a stream until `needle` has arrived.
fn read_until(s: &mut TcpStream, raw: &mut Vec<u8>, needle: &str) {
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(raw).contains(needle) {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "stream ended before {needle}: {}",
            String::from_utf8_lossy(raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
}

fn parse_sse(body: &[u8]) -> Vec<(usize, String, Value)> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    for block in text
        .split("\n\n")
        .filter(|b| !b.trim().is_empty() && !b.starts_with(':'))
    {
        let (mut id, mut event, mut data) = (0, String::new(), Value::Null);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().unwrap();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = serde_json::from_str(v).unwrap();
            }
        }
        out.push((id, event, data));
    }
    out
}

#[test]
fn sync_uploads_and_the_queue_empties() {
    let shop = Shop::new();
    let cfg = shop.write_config("", Some("sync_interval_secs = 3600\nsync_after_taps = 0"));
    let d = start(&shop, &cfg, Options::default());
    let a = d.addr;
    for amount in ["3.00", "4.00"] {
        let id = create(a, &pay(amount));
        d.tap();
        assert_eq!(outcome(a, &id)["state"], "approved");
    }
    let (_, q) = get(a, "/v1/queue");
    assert_eq!(
        (
            q["pending"].as_u64(),
            q["pending_amount"].as_u64(),
            q["acked_seq"].as_u64()
        ),
        (Some(2), Some(700), Some(0)),
        "{q}"
    );
    assert_eq!(q["last_sync"]["ok"], true, "the start-up sync: {q}");
    assert_eq!(shop.host_head(), 0);

    let r = request(a, "POST", "/v1/sync", &[], None);
    let v = r.json();
    assert_eq!(r.status, 200, "{v}");
    assert_eq!(
        (
            v["report"]["accepted"].as_u64(),
            v["report"]["acked_seq"].as_u64()
        ),
        (Some(2), Some(2)),
        "{v}"
    );
    assert_eq!(
        (
            v["queue"]["pending"].as_u64(),
            v["queue"]["acked_seq"].as_u64()
        ),
        (Some(0), Some(2)),
        "{v}"
    );
    assert_eq!(shop.host_head(), 2);
    let (_, q) = get(a, "/v1/queue");
    assert_eq!(
        (
            q["pending"].as_u64(),
            q["last_sync"]["report"]["pruned"].as_u64()
        ),
        (Some(0), Some(2)),
        "{q}"
    );
    assert_eq!(
        get(a, "/v1/transactions").1["transactions"],
        json!([]),
        "pruned after the host acknowledged"
    );
    // Taps go on after the sync (the risk state was rebuilt), with the next seq.
    let id = create(a, &pay("5.00"));
    d.tap();
    assert_eq!(outcome(a, &id)["approved"]["seq"], 3);
    d.stop(&shop);
}

#[test]
fn background_upload_after_every_n_taps() {
    let shop = Shop::new();
    let cfg = shop.write_config("", Some("sync_interval_secs = 3600\nsync_after_taps = 2"));
    let d = start(&shop, &cfg, Options::default());
    let a = d.addr;
    for amount in ["3.00", "4.00"] {
        let id = create(a, &pay(amount));
        d.tap();
        assert_eq!(outcome(a, &id)["state"], "approved");
    }
    wait_for(a, "the upload after two taps", |a| {
        get(a, "/v1/queue").1["acked_seq"] == 2
    });
    assert_eq!(shop.host_head(), 2);
    d.stop(&shop);
}

#[test]
fn an_intent_without_a_phone_expires() {
    let shop = Shop::new();
    let cfg = shop.write_config("tap_timeout_secs = 1", None);
    let d = start(&shop, &cfg, Options::default());
    let a = d.addr;
    let first = create(a, &pay("1.00"));
    let second = create(a, &pay("2.00"));
    for id in [&first, &second] {
        let v = outcome(a, id);
        assert_eq!(
            (
                v["state"].as_str(),
                v["message"].as_str(),
                v["taps"].as_u64()
            ),
            (Some("expired"), Some("no phone in time"), Some(0)),
            "{v}"
        );
        assert!(v["expires_at"].as_u64().unwrap() >= v["created_at"].as_u64().unwrap());
    }
    d.stop(&shop);
    assert_eq!(queue_head(&shop), 0);
}

/// A reader waits for the phone to leave before the next tap; the outcome
/// is published before that, and the next intent waits its turn.
#[test]
fn the_outcome_is_out_while_the_phone_still_rests_on_the_reader() {
    let shop = Shop::new();
    let cfg = shop.write_config("", None);
    let d = start(&shop, &cfg, Options::default());
    let a = d.addr;
    let id = create(a, &pay("6.00"));
    let (left_tx, left_rx) = mpsc::channel();
    d.taps.send(Tap::Stays { left: left_rx }).unwrap();
    assert_eq!(outcome(a, &id)["approved"]["seq"], 1);
    // One phone in the field at a time: the next intent is not active yet.
    let next = create(a, &pay("7.00"));
    assert_eq!(get(a, &format!("/v1/intents/{next}")).1["state"], "queued");
    left_tx.send(()).unwrap();
    wait_state(a, &next, "waiting_for_phone");
    d.tap();
    assert_eq!(outcome(a, &next)["approved"]["seq"], 2);
    d.stop(&shop);
}

/// SIGTERM-like shutdown while a phone is being read: the tap completes and
/// is reported; waiting intents are cancelled; the serve future ends.
#[test]
fn shutdown_finishes_the_tap_in_flight_and_cancels_the_rest() {
    let shop = Shop::new();
    let cfg = shop.write_config("", None);
    let mut d = start(&shop, &cfg, Options::default());
    let a = d.addr;
    let id = create(a, &pay("2.00"));
    let queued = create(a, &pay("3.00"));
    // Two event streams, provably in flight (their first events are read).
    let open_stream = |id: &str, first: &str| {
        let mut s = connect(a);
        write_request(
            &mut s,
            a,
            "GET",
            &format!("/v1/intents/{id}/events"),
            &[],
            None,
        );
        let mut raw = Vec::new();
        read_until(&mut s, &mut raw, first);
        (s, raw)
    };
    let mut first_stream = open_stream(&id, "event: waiting_for_phone");
    let mut queued_stream = open_stream(&queued, "event: queued");
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    d.taps
        .send(Tap::Held {
            started: started_tx,
            go: go_rx,
        })
        .unwrap();
    started_rx.recv().unwrap();
    // The phone is in the field; now the daemon is told to stop.
    let _ = d.shutdown.take().unwrap().send(());
    wait_for(a, "the listener to close", |a| {
        TcpStream::connect(a).is_err()
    });
    go_tx.send(()).unwrap();
    shop.rt.block_on(d.handle.take().unwrap()).unwrap().unwrap();
    for (s, raw) in [&mut first_stream, &mut queued_stream] {
        s.read_to_end(raw).unwrap();
    }
    let events = parse_sse(&parse_reply(&first_stream.1).body);
    let last = &events.last().unwrap().2;
    assert_eq!(
        (last["state"].as_str(), last["approved"]["seq"].as_u64()),
        (Some("approved"), Some(1)),
        "{events:?}"
    );
    let events = parse_sse(&parse_reply(&queued_stream.1).body);
    let last = &events.last().unwrap().2;
    assert_eq!(
        (last["state"].as_str(), last["message"].as_str()),
        (
            Some("cancelled"),
            Some("cancelled: the terminal is shutting down")
        ),
        "{events:?}"
    );
    assert_eq!(queue_head(&shop), 1);
}

/// The binary: `tap-terminal serve` prints where it listens, takes intents
/// from `emu:` phones (always in the field) and stops cleanly on SIGTERM.
#[test]
fn serve_binary_prints_its_address_and_stops_on_sigterm() {
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let shop = Shop::new();
    let cfg = shop.write_config("", Some("sync_interval_secs = 3600"));
    let child = Command::new(env!("CARGO_BIN_EXE_tap-terminal"))
        .args(["--config", cfg.to_str().unwrap(), "serve"])
        .env("TAPSTACK_API_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
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
    let (status, h) = get(addr, "/v1/health");
    assert_eq!(
        (
            status,
            h["terminal"].as_str(),
            h["host_configured"].as_bool()
        ),
        (200, Some("Tea House #12"), Some(true)),
        "{h}"
    );
    let id = create(addr, &pay("8.80"));
    let v = outcome(addr, &id);
    assert_eq!(v["approved"]["seq"], 1, "{v}");
    let r = request(addr, "POST", "/v1/sync", &[], None);
    assert_eq!(
        (r.status, r.json()["queue"]["pending"].as_u64()),
        (200, Some(0))
    );
    assert_eq!(shop.host_head(), 1);

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.0.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(queue_head(&shop), 1);
}

// ------------------------------------------------- the binary under attack

/// `tap-terminal serve` as a child, killed (SIGKILL) when dropped.
struct Serve(Child, SocketAddr);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(cfg: &Path, env: &[(&str, &str)]) -> Serve {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tap-terminal"));
    cmd.args(["--config", cfg.to_str().unwrap(), "serve"])
        .env("TAPSTACK_API_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .parse()
        .unwrap();
    Serve(child, addr)
}

/// A retry with the same Idempotency-Key after the daemon was killed gets
/// the original approval — not a second charge.
#[test]
fn idempotency_keys_survive_kill_9_of_the_daemon() {
    let shop = Shop::new();
    let cfg = shop.write_config("", Some("sync_interval_secs = 3600"));
    let d = serve(&cfg, &[]);
    let r = post_intent(d.1, Some("sale-1"), &pay("1.00"));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let first = outcome(d.1, &id);
    assert_eq!(first["state"], "approved", "{first}");
    drop(d); // kill -9: the daemon's memory is gone

    let d = serve(&cfg, &[]);
    let r = post_intent(d.1, Some("sale-1"), &pay("1.00"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let again = r.json();
    assert_eq!(again["state"], "approved", "{again}");
    assert_eq!(again["approved"]["seq"], first["approved"]["seq"]);
    assert_eq!(
        again["approved"]["record_id"],
        first["approved"]["record_id"]
    );
    // Another request under the same key is a conflict, as before a restart.
    let r = post_intent(d.1, Some("sale-1"), &pay("2.00"));
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let r = request(d.1, "POST", "/v1/sync", &[], None);
    assert_eq!(r.status, 200);
    drop(d);
    assert_eq!(shop.host_head(), 1, "one tap, one record");
}

/// The queue on a full disk (a 2 MiB tmpfs): taps are declined `storage`,
/// health says so, nothing declined reaches the host, and the daemon
/// recovers by itself once there is room.
#[test]
fn a_full_disk_under_serve_declines_storage_and_recovers() {
    let shop = Shop::new();
    let mnt = shop.dir.path().join("mnt");
    let Some(disk) = common::Tmpfs::mount(&mnt, "2m") else {
        return;
    };
    let cfg = shop.write_config("", Some("sync_interval_secs = 3600"));
    let queue = mnt.join("queue");
    let d = serve(&cfg, &[("TAPSTACK_QUEUE_PATH", queue.to_str().unwrap())]);
    let mut approved = Vec::new();
    let id = create(d.1, &pay("1.00"));
    let v = outcome(d.1, &id);
    assert_eq!(v["state"], "approved", "{v}");
    approved.push(v["approved"].clone());
    let filler = disk.fill("filler");
    let mut declined = None;
    for _ in 0..100 {
        let id = create(d.1, &pay("1.00"));
        let v = outcome(d.1, &id);
        match v["state"].as_str() {
            Some("approved") => approved.push(v["approved"].clone()),
            Some("declined") => {
                declined = Some(v);
                break;
            }
            _ => panic!("{v}"),
        }
    }
    let v = declined.expect("a full disk never declined a tap");
    assert_eq!(v["declined"]["code"], "storage", "{v}");
    let (_, h) = get(d.1, "/v1/health");
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["problems"]
            .as_array()
            .unwrap()
            .contains(&json!("storage")),
        "{h}"
    );
    // Still full: still declined, up front.
    let v = outcome(d.1, &create(d.1, &pay("1.00")));
    assert_eq!(v["declined"]["code"], "storage", "{v}");
    // Room again: recovered without a restart; the next seq follows.
    std::fs::remove_file(&filler).unwrap();
    wait_for(d.1, "recovery", |a| {
        get(a, "/v1/health").1["status"] == "ok"
    });
    let v = outcome(d.1, &create(d.1, &pay("1.00")));
    assert_eq!(v["state"], "approved", "{v}");
    assert_eq!(
        v["approved"]["seq"].as_u64(),
        Some(approved.len() as u64 + 1),
        "{v}"
    );
    approved.push(v["approved"].clone());
    let r = request(d.1, "POST", "/v1/sync", &[], None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    drop(d);
    // The host holds exactly the approved taps: none declined, none lost.
    assert_eq!(shop.host_head(), approved.len() as u64);
    for a in &approved {
        let seq = a["seq"].as_u64().unwrap();
        let held = shop.host_store.record_hash(&shop.terminal, seq).unwrap();
        assert_eq!(
            held.map(hex::encode).as_deref(),
            a["record_id"].as_str(),
            "host's #{seq}"
        );
    }
}

/// A queue damaged while the daemon was down: `serve` starts, reports it in
/// `/v1/health` and `/v1/queue`, approves nothing, and uploads only what
/// is intact.
#[test]
fn a_damaged_queue_under_serve_is_reported_and_approves_nothing() {
    let shop = Shop::new();
    let cfg = shop.write_config("", Some("sync_interval_secs = 3600"));
    let d = serve(&cfg, &[]);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let v = outcome(d.1, &create(d.1, &pay("1.00")));
        assert_eq!(v["state"], "approved", "{v}");
        ids.push(v["approved"]["record_id"].as_str().unwrap().to_string());
    }
    drop(d); // kill -9
             // The log loses record #3 where it begins.
    let qdir = shop.dir.path().join("queue");
    let db = std::fs::read(qdir.join("db")).unwrap();
    let hash = hex::decode(&ids[2]).unwrap();
    let at = db.windows(32).position(|w| w == hash).unwrap();
    std::fs::write(qdir.join("db"), &db[..at]).unwrap();

    let d = serve(&cfg, &[]);
    let (_, h) = get(d.1, "/v1/health");
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["problems"]
            .as_array()
            .unwrap()
            .contains(&json!("queue_damaged")),
        "{h}"
    );
    assert_eq!(h["queue"]["damaged"][0]["to"], 3, "{h}");
    let v = outcome(d.1, &create(d.1, &pay("1.00")));
    assert_eq!(v["declined"]["code"], "queue_damaged", "{v}");
    let (_, q) = get(d.1, "/v1/queue");
    assert_eq!(q["head_seq"], 3, "{q}");
    assert!(
        !q["integrity"]["damaged"].as_array().unwrap().is_empty(),
        "{q}"
    );
    // The sync sends the intact prefix and says the queue is damaged.
    let r = request(d.1, "POST", "/v1/sync", &[], None);
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("damaged"));
    drop(d);
    assert!(shop.host_head() < 3, "the host cannot hold what was lost");
}

/// Past a queue cap a new intent is refused at once, as the CLI refuses
/// before asking for a tap; a retry of an earlier request still gets its
/// intent back.
#[test]
fn past_a_queue_cap_new_intents_are_refused_at_once_but_retries_replay() {
    let shop = Shop::new();
    let cfg = shop.write_config("", None);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("queue_max_count = 1000"));
    std::fs::write(
        &cfg,
        text.replace("queue_max_count = 1000", "queue_max_count = 1"),
    )
    .unwrap();
    let d = start(&shop, &cfg, Options::default());
    let a = d.addr;
    let r = post_intent(a, Some("lane1-1"), &pay("1.00"));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    d.tap();
    assert_eq!(outcome(a, &id)["state"], "approved");

    let r = post_intent(a, Some("lane1-2"), &pay("1.00"));
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (422, Some("queue_count_cap")),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = post_intent(a, Some("lane1-1"), &pay("1.00"));
    assert_eq!(
        (
            r.status,
            r.json()["id"].as_str(),
            r.json()["state"].as_str()
        ),
        (200, Some(id.as_str()), Some("approved"))
    );
    assert_eq!(d.used.load(Ordering::SeqCst), 1, "one phone asked for");
    d.stop(&shop);
    assert_eq!(queue_head(&shop), 1);
}
