//! The conformance suite every driver runs: the same cases against the same
//! emulated phones, through the driver's real transport (pcscd + vpcd, the
//! PN532 PTY, in-process). One test file per driver instantiates
//! [`suite!`] with its [`Rig`].
//!
//! Times here are bounds against hanging, never speed assertions; the one
//! bound that is the point of a case (a late phone ends in `Timeout` before
//! it answers) leaves a margin of seconds.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod rigs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand_core::OsRng;
use tapstack_certs::{LeafOptions, Pki};
use tapstack_protocol::airtime;
use tapstack_protocol::apdu::{Command, LinkLimits, StatusWord};
use tapstack_protocol::error::Error;
use tapstack_protocol::messages::AID;
use tapstack_protocol::scenario::{Amount, Currency, Receipt, Scenario};
use tapstack_protocol::terminal::{
    RelayPolicy, TapOutcome, TapParams, TerminalContext, TerminalEvent, TerminalSession,
};
use tapstack_reader::{Cancel, Capabilities, Reader, ReaderError, Session, TargetInfo};

/// Bound on waiting for a phone (the emulator may be between phones).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The emulated hardware under one driver.
pub trait Rig {
    /// Start the emulator with these wallets and extra `tap-emu` arguments
    /// (`--fault …`) and open the driver on it.
    fn start(&mut self, wallets: &[&Path], extra: &[&str]) -> Box<dyn Reader>;
    /// Whether the reader can be taken away and brought back.
    fn can_lose_reader(&self) -> bool {
        true
    }
    /// The reader disappears (pcscd stopped, PTY emulator killed).
    fn take_reader_away(&mut self);
    /// It comes back, serving these wallets.
    fn bring_reader_back(&mut self, wallets: &[&Path], extra: &[&str]);
    /// The emulator's log so far, for failure messages.
    fn log(&self) -> String;
}

/// A PKI, a terminal and wallet profiles in a temporary directory.
pub struct World {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub terminal: TerminalContext,
}

pub fn now() -> u64 {
    tapstack_emulator::phone::unix_now()
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        tapstack_certs::init(&pki_dir, now(), &mut OsRng).unwrap();
        let pki = Pki::load(&pki_dir).unwrap();
        let t = pki
            .issue_terminal(
                "Tea House #12",
                &dir.path().join("terminal"),
                &LeafOptions::default(),
                now(),
                &mut OsRng,
            )
            .unwrap();
        // Also the operator-endorsed kiosk of LOCKER-7 (pickups carry the
        // longest answers: a credential and a certificate).
        let kiosk = pki
            .issue_kiosk(
                &t.identity.cert,
                &["LOCKER-7".to_string()],
                &dir.path().join("terminal/kiosk.pem"),
                None,
                now(),
                &mut OsRng,
            )
            .unwrap();
        let mut terminal =
            TerminalContext::new(t.identity.cert, t.identity.key, pki.terminal_trust());
        terminal.endorsement = Some(kiosk);
        World { dir, pki, terminal }
    }

    /// A wallet holding a LOCKER-7 letter (a credential that needs no user
    /// presence: a pickup takes one tap).
    pub fn pickup_wallet(&self, name: &str) -> PathBuf {
        let profile = self.wallet(name);
        let w = tapstack_emulator::profile::load(&profile).unwrap();
        let path = self.dir.path().join(format!("{name}-LOCKER-7.cred"));
        let req = tapstack_certs::CredentialRequest {
            wallet: &w.context.certificate,
            site: "LOCKER-7",
            slot: 12,
            parcel: "SF1234567890",
            days: None,
        };
        // A letter: the operator relaxed user presence for it (signed in
        // the credential), so a pickup takes one tap.
        self.pki
            .issue_credential_with_class(&req, Some("letter"), &path, now(), &mut OsRng)
            .unwrap();
        tapstack_emulator::profile::add_credential(&profile, &path).unwrap();
        profile
    }

    pub fn wallet(&self, name: &str) -> PathBuf {
        tapstack_emulator::profile::create(
            self.pki.dir(),
            name,
            &self.dir.path().join("wallets"),
            now(),
            &mut OsRng,
        )
        .unwrap()
    }

    pub fn counter(profile: &Path) -> u32 {
        tapstack_emulator::profile::load(profile)
            .unwrap()
            .atc
            .value()
    }
}

pub fn pickup() -> TapParams {
    TapParams {
        scenario: Scenario::Pickup {
            site: "LOCKER-7".into(),
        },
        cvm_limit: 0,
        send_certificate: true,
    }
}

pub fn pay(minor: u64) -> TapParams {
    TapParams {
        scenario: Scenario::Pay {
            amount: Amount {
                minor,
                currency: Currency::new("CNY").unwrap(),
            },
        },
        cvm_limit: 1_000_000,
        send_certificate: true,
    }
}

/// A session that records what crossed the wire.
pub struct Recorder<'a> {
    pub inner: &'a mut dyn Session,
    pub exchanges: usize,
    pub longest_command: usize,
    pub longest_response: usize,
    /// Time spent in the driver's transmit since the last reset.
    pub spent: Duration,
}

impl<'a> Recorder<'a> {
    pub fn new(inner: &'a mut dyn Session) -> Self {
        Recorder {
            inner,
            exchanges: 0,
            longest_command: 0,
            longest_response: 0,
            spent: Duration::ZERO,
        }
    }
}

impl Session for Recorder<'_> {
    fn target(&self) -> &TargetInfo {
        self.inner.target()
    }
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ReaderError> {
        self.exchanges += 1;
        self.longest_command = self.longest_command.max(apdu.len());
        // Timed at the driver's boundary: what the terminal judges the
        // timed exchange by.
        let sent = Instant::now();
        let r = self.inner.transmit(apdu);
        self.spent += sent.elapsed();
        let r = r?;
        self.longest_response = self.longest_response.max(r.len());
        Ok(r)
    }
    fn transport(&self) -> Duration {
        self.inner.transport()
    }
    fn is_present(&mut self) -> Result<bool, ReaderError> {
        self.inner.is_present()
    }
    fn wait_removed(&mut self, timeout: Duration, cancel: &Cancel) -> Result<(), ReaderError> {
        self.inner.wait_removed(timeout, cancel)
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// How a tap ended.
#[derive(Debug)]
pub enum TapError {
    Reader(ReaderError),
    Protocol(String),
    /// The timed exchange took too long on every try.
    Relayed {
        micros: u32,
        bound: u32,
    },
}

/// What a tap did on the wire.
#[derive(Debug)]
pub struct Tap {
    pub outcome: TapOutcome,
    pub exchanges: usize,
    pub longest_command: usize,
    pub longest_response: usize,
    /// Longest logical response (after GET RESPONSE).
    pub longest_logical: usize,
    pub receipt_delivered: bool,
}

/// A whole pay tap through `session`: SELECT, AUTHORIZE, the receipt.
/// `limits`: the link limits to start with (the session's by default).
pub fn run_tap(
    session: &mut dyn Session,
    terminal: &mut TerminalContext,
    params: TapParams,
    limits: Option<LinkLimits>,
) -> Result<Tap, TapError> {
    let mut rec = Recorder::new(session);
    let mut limits = limits.unwrap_or_else(|| rec.link_limits());
    // The relay bound of this reader: a PN532-class radio link plus the
    // driver's transport, and the default allowance.
    terminal.relay = RelayPolicy::for_link(&airtime::Link::pn532(), rec.transport());
    let mut tap = TerminalSession::new(params);
    let mut outcome = None;
    let mut receipt_sent = false;
    let mut receipt_delivered = false;
    let mut longest_logical = 0;
    loop {
        let Some(cmd) = tap.poll_command() else {
            match (&outcome, receipt_sent) {
                (Some(o), false) => {
                    let o: &TapOutcome = o;
                    receipt_sent = true;
                    let r = Receipt {
                        record_check: [0x11; 4],
                        seq: u64::from(o.atc),
                        order_number: None,
                        cart: None,
                        slot: None,
                    };
                    tap.send_receipt(&r)
                        .map_err(|e| TapError::Protocol(e.to_string()))?;
                    continue;
                }
                _ => break,
            }
        };
        rec.spent = Duration::ZERO;
        let resp = rec
            .transmit_logical_with(cmd, limits)
            .map_err(TapError::Reader)?;
        longest_logical = longest_logical.max(resp.data.len());
        tap.handle_response(terminal, resp, rec.spent, now(), &mut OsRng)
            .map_err(|e| match e {
                Error::Relayed { micros, bound } => TapError::Relayed { micros, bound },
                e => TapError::Protocol(e.to_string()),
            })?;
        while let Some(ev) = tap.poll_event() {
            match ev {
                TerminalEvent::Selected {
                    extended: false, ..
                } => limits = LinkLimits::SHORT,
                TerminalEvent::Approved(o) => outcome = Some(*o),
                TerminalEvent::ReceiptDelivered => receipt_delivered = true,
                _ => {}
            }
        }
    }
    let outcome = outcome.ok_or_else(|| TapError::Protocol("not approved".into()))?;
    Ok(Tap {
        outcome,
        exchanges: rec.exchanges,
        longest_command: rec.longest_command,
        longest_response: rec.longest_response,
        longest_logical,
        receipt_delivered,
    })
}

fn wait<'r>(reader: &'r mut dyn Reader, rig: &dyn Rig) -> Box<dyn Session + 'r> {
    match reader.wait_for_target(PATIENCE, &Cancel::new()) {
        Ok(s) => s,
        Err(e) => panic!("no phone came: {e}; emulator:\n{}", rig.log()),
    }
}

// ---- the cases ----

/// SELECT the tapstack AID: FCI and 9000; the target looks like a phone.
pub fn select(rig: &mut dyn Rig) {
    let world = World::new();
    let alice = world.wallet("alice");
    let mut reader = rig.start(&[&alice], &[]);
    let info = reader.info();
    assert!(info.connection.contains(':'), "{info:?}");
    let mut s = wait(reader.as_mut(), rig);
    let t = s.target().clone();
    match (&t.ats, &t.atr) {
        (Some(ats), _) => assert_eq!(ats, &tapstack_emulator::phone::ATS, "{t:?}"),
        (None, Some(atr)) => assert_eq!(atr, &tapstack_emulator::phone::ATR, "{t:?}"),
        _ => panic!("neither ATS nor ATR: {t:?}"),
    }
    if t.ats.is_some() {
        assert_eq!(t.uid.len(), 4, "{t:?}");
    }
    let r = s
        .select(&AID)
        .unwrap_or_else(|e| panic!("{e}; emulator:\n{}", rig.log()));
    assert_eq!(r.sw, StatusWord::Ok, "{r:?}");
    assert_eq!(r.data.first(), Some(&0x6F), "FCI template: {r:?}");
    // An unknown instruction is a status word, not a reader error.
    let r = s
        .transmit_logical(Command::new(0x80, 0x99, 0, 0, Vec::new(), None))
        .unwrap();
    assert_eq!(r.sw, StatusWord::InsNotSupported);
    assert!(s.is_present().unwrap());
}

/// Short and extended/chained APDUs with responses over 256 bytes: a
/// pickup tap (the longest answer: credential and certificate) with the
/// reader's own limits and one with short APDUs only (command chaining and
/// GET RESPONSE), then a long command on its own.
pub fn long_apdus(rig: &mut dyn Rig) {
    let mut world = World::new();
    let alice = world.pickup_wallet("alice");
    let mut reader = rig.start(&[&alice], &["--idle-ms", "600000"]);
    let mut s = wait(reader.as_mut(), rig);
    let caps = s.capabilities();
    let tap = run_tap(s.as_mut(), &mut world.terminal, pickup(), None)
        .unwrap_or_else(|e| panic!("{e:?}; emulator:\n{}", rig.log()));
    assert!(
        tap.longest_logical > 256,
        "AUTHORIZE answers more than 256 bytes: {tap:?}"
    );
    if caps.extended_length {
        assert!(tap.longest_response > 258, "one extended response: {tap:?}");
        assert!(tap.longest_command > 261, "one extended command: {tap:?}");
    } else {
        assert!(
            tap.longest_command <= caps.max_apdu && tap.longest_response <= 258,
            "{tap:?}"
        );
    }
    // First encounter again, so the wallet sends its certificate.
    world.terminal.forget_wallet_certificates();
    let short = run_tap(
        s.as_mut(),
        &mut world.terminal,
        pickup(),
        Some(LinkLimits::SHORT),
    )
    .unwrap_or_else(|e| panic!("{e:?}; emulator:\n{}", rig.log()));
    assert!(
        short.longest_command <= 261 && short.longest_response <= 258,
        "{short:?}"
    );
    assert!(
        short.exchanges > 3,
        "chained commands and GET RESPONSE: {short:?}"
    );
    assert!(short.longest_logical > 256, "{short:?}");
    assert_eq!(short.outcome.atc, tap.outcome.atc + 1);
    // A 600-byte SELECT: chained (or one extended APDU), refused by the
    // card with a status word after it was reassembled.
    let r = s
        .transmit_logical(Command::new(
            0x00,
            0xA4,
            0x04,
            0x00,
            vec![0xA0; 600],
            Some(256),
        ))
        .unwrap_or_else(|e| panic!("{e}; emulator:\n{}", rig.log()));
    assert_ne!(r.sw, StatusWord::Ok, "{r:?}");
}

/// A relay between reader and phone adds 20 ms to every exchange: the
/// timed exchange gives it away on every try, the tap is declined before
/// AUTHORIZE, the counter is untouched. (An honest phone passes the same
/// timed exchange in every other case of this suite.)
pub fn relayed_tap(rig: &mut dyn Rig) {
    let mut world = World::new();
    let alice = world.wallet("alice");
    let mut reader = rig.start(&[&alice], &["--idle-ms", "600000", "--fault", "relay@1:20"]);
    let mut s = wait(reader.as_mut(), rig);
    match run_tap(s.as_mut(), &mut world.terminal, pay(1250), None) {
        Err(TapError::Relayed { micros, bound }) => {
            assert!(micros >= 20_000, "measured {micros} µs");
            assert!(bound < 20_000, "bound {bound} µs");
        }
        other => panic!("{other:?}; emulator:\n{}", rig.log()),
    }
    assert_eq!(World::counter(&alice), 0, "no AUTHORIZE was sent");
}

/// A full pay tap, approved, the counter persisted, the receipt delivered.
pub fn pay_tap(rig: &mut dyn Rig) {
    let mut world = World::new();
    let alice = world.wallet("alice");
    let mut reader = rig.start(&[&alice], &["--idle-ms", "600000"]);
    let mut s = wait(reader.as_mut(), rig);
    let tap = run_tap(s.as_mut(), &mut world.terminal, pay(1250), None)
        .unwrap_or_else(|e| panic!("{e:?}; emulator:\n{}", rig.log()));
    assert_eq!(tap.outcome.atc, 1);
    assert!(tap.receipt_delivered, "{tap:?}");
    assert_eq!(World::counter(&alice), 1);
}

/// The phone leaves instead of answering AUTHORIZE: `Removed`, promptly,
/// and the reader sees it gone; the next tap pays.
pub fn removal_mid_exchange(rig: &mut dyn Rig) {
    let mut world = World::new();
    let alice = world.wallet("alice");
    let mut reader = rig.start(&[&alice], &["--fault", "remove@3/1"]);
    {
        let mut s = wait(reader.as_mut(), rig);
        let started = Instant::now();
        let err =
            run_tap(s.as_mut(), &mut world.terminal, pay(1250), None).expect_err("removed mid-tap");
        assert!(
            matches!(err, TapError::Reader(ReaderError::Removed)),
            "{err:?}; emulator:\n{}",
            rig.log()
        );
        assert!(started.elapsed() < PATIENCE, "no hang");
        s.wait_removed(PATIENCE, &Cancel::new())
            .unwrap_or_else(|e| panic!("{e}; emulator:\n{}", rig.log()));
        assert!(!s.is_present().unwrap_or(false));
    }
    assert_eq!(World::counter(&alice), 0, "AUTHORIZE never processed");
    let mut s = wait(reader.as_mut(), rig);
    let tap = run_tap(s.as_mut(), &mut world.terminal, pay(1250), None)
        .unwrap_or_else(|e| panic!("{e:?}; emulator:\n{}", rig.log()));
    assert_eq!(tap.outcome.atc, 1);
}

/// A phone that answers the timed exchange (command 2) 5 s late, with a
/// 1 s transmit timeout:
/// `Timeout` before the phone answers; the reader works afterwards.
pub fn late_phone(rig: &mut dyn Rig) {
    let mut world = World::new();
    let alice = world.wallet("alice");
    let mut reader = rig.start(&[&alice], &["--fault", "delay@2:5000/1"]);
    reader.set_transmit_timeout(Duration::from_secs(1));
    {
        let mut s = wait(reader.as_mut(), rig);
        let mut rec = Recorder::new(s.as_mut());
        let mut tap = TerminalSession::new(pay(1250));
        let select = tap.poll_command().unwrap();
        let limits = rec.link_limits();
        let fci = rec.transmit_logical_with(select, limits).unwrap();
        tap.handle_response(&mut world.terminal, fci, Duration::ZERO, now(), &mut OsRng)
            .unwrap();
        let timed = tap.poll_command().unwrap();
        let started = Instant::now();
        let err = rec
            .transmit_logical_with(timed, limits)
            .expect_err("too late");
        let took = started.elapsed();
        assert!(
            matches!(err, ReaderError::Timeout),
            "{err}; emulator:\n{}",
            rig.log()
        );
        // The point of this case: the reader gave up before the phone
        // answered (5 s), after about its 1 s bound.
        assert!(took < Duration::from_millis(4500), "Timeout after {took:?}");
    }
    reader.set_transmit_timeout(Duration::from_secs(10));
    // The reader recovers: the phone is served again (tap 2 has no delay).
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let mut s = wait(reader.as_mut(), rig);
        match run_tap(s.as_mut(), &mut world.terminal, pay(1250), None) {
            Ok(tap) => {
                assert!(tap.outcome.atc >= 1);
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no recovery: {e:?}; emulator:\n{}",
                    rig.log()
                );
                let _ = s.wait_removed(PATIENCE, &Cancel::new());
            }
        }
    }
}

/// The reader disappears with a session open (transmit: `ReaderGone`) and
/// comes back: the same reader object finds the phone again.
pub fn reader_gone_and_back(rig: &mut dyn Rig) {
    if !rig.can_lose_reader() {
        return;
    }
    let mut world = World::new();
    let alice = world.wallet("alice");
    let mut reader = rig.start(&[&alice], &["--idle-ms", "600000"]);
    {
        let mut s = wait(reader.as_mut(), rig);
        assert_eq!(s.select(&AID).unwrap().sw, StatusWord::Ok);
        rig.take_reader_away();
        let err = s.select(&AID).expect_err("the reader is gone");
        assert!(
            err.is_reader_gone() || matches!(err, ReaderError::Removed),
            "{err}; emulator:\n{}",
            rig.log()
        );
    }
    // Gone: waiting says so (after its timeout), or times out.
    let err = reader
        .wait_for_target(Duration::from_millis(500), &Cancel::new())
        .err()
        .expect("no reader, no target");
    assert!(
        err.is_reader_gone() || matches!(err, ReaderError::Timeout),
        "{err}"
    );
    rig.bring_reader_back(&[&alice], &["--idle-ms", "600000"]);
    let mut s = wait(reader.as_mut(), rig);
    let tap = run_tap(s.as_mut(), &mut world.terminal, pay(300), None)
        .unwrap_or_else(|e| panic!("{e:?}; emulator:\n{}", rig.log()));
    assert_eq!(tap.outcome.atc, 1);
}

/// Two phones, one after the other: each pays once with its own wallet.
pub fn two_phones(rig: &mut dyn Rig) {
    let mut world = World::new();
    let alice = world.wallet("alice");
    let bob = world.wallet("bob");
    let mut reader = rig.start(&[&alice, &bob], &[]);
    let mut wallets = Vec::new();
    for _ in 0..2 {
        let mut s = wait(reader.as_mut(), rig);
        let tap = run_tap(s.as_mut(), &mut world.terminal, pay(700), None)
            .unwrap_or_else(|e| panic!("{e:?}; emulator:\n{}", rig.log()));
        assert_eq!(tap.outcome.atc, 1);
        wallets.push(tap.outcome.wallet.clone());
        s.wait_removed(PATIENCE, &Cancel::new())
            .unwrap_or_else(|e| panic!("{e}; emulator:\n{}", rig.log()));
    }
    assert_ne!(wallets[0], wallets[1], "two different phones");
    assert_eq!((World::counter(&alice), World::counter(&bob)), (1, 1));
}

/// A wait with nothing in the field ends at its timeout or promptly on
/// cancel.
pub fn waits_end(rig: &mut dyn Rig) {
    let world = World::new();
    let alice = world.wallet("alice");
    let mut reader = rig.start(&[&alice], &["--taps", "1", "--idle-ms", "600000"]);
    {
        let s = wait(reader.as_mut(), rig);
        drop(s);
    }
    // The one phone stays in the field (taken); cancel from another thread.
    let cancel = Cancel::new();
    let c2 = cancel.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.cancel();
    });
    let started = Instant::now();
    let r = reader.wait_for_target(PATIENCE, &cancel);
    t.join().unwrap();
    match r {
        // The phone that stayed may be found again before the cancel.
        Ok(_) => {}
        Err(e) => assert!(matches!(e, ReaderError::Cancelled), "{e}"),
    }
    assert!(started.elapsed() < PATIENCE, "cancel is prompt");
}

/// Instantiate the suite for a rig constructor.
macro_rules! tapstack_reader_conformance_suite {
    ($rig:expr) => {
        #[test]
        fn select() {
            conformance::select(&mut $rig);
        }
        #[test]
        fn long_apdus() {
            conformance::long_apdus(&mut $rig);
        }
        #[test]
        fn pay_tap() {
            conformance::pay_tap(&mut $rig);
        }
        #[test]
        fn relayed_tap() {
            conformance::relayed_tap(&mut $rig);
        }
        #[test]
        fn removal_mid_exchange() {
            conformance::removal_mid_exchange(&mut $rig);
        }
        #[test]
        fn late_phone() {
            conformance::late_phone(&mut $rig);
        }
        #[test]
        fn reader_gone_and_back() {
            conformance::reader_gone_and_back(&mut $rig);
        }
        #[test]
        fn two_phones() {
            conformance::two_phones(&mut $rig);
        }
        #[test]
        fn waits_end() {
            conformance::waits_end(&mut $rig);
        }
    };
}
