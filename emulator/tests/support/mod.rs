//! Shared by the emulator's end-to-end tests: a PKI, wallet profiles, a
//! terminal, and a tap driven over any APDU transport.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rand_core::OsRng;
use tapstack_certs::{LeafOptions, Pki};
use tapstack_protocol::apdu::{LinkLimits, Response, TerminalLink};
use tapstack_protocol::error::Error;
use tapstack_protocol::scenario::{Cart, Receipt};
use tapstack_protocol::terminal::{
    TapOutcome, TapParams, TerminalContext, TerminalEvent, TerminalSession,
};
use tapstack_tests::{Child, Pcscd, VPCD_READER};

pub fn now() -> u64 {
    tapstack_emulator::phone::unix_now()
}

/// A PKI directory, a terminal context and a directory for wallets.
pub struct World {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub terminal: TerminalContext,
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
        // The terminal is also the operator-endorsed kiosk of the test sites.
        let kiosk = pki
            .issue_kiosk(
                &t.identity.cert,
                &["LOCKER-7".to_string(), "LOCKER-8".to_string()],
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

    /// A wallet profile named `name`, optionally with a pickup credential.
    pub fn wallet(&self, name: &str, edit: impl FnOnce(&mut String)) -> PathBuf {
        let out = self.dir.path().join("wallets");
        let profile =
            tapstack_emulator::profile::create(self.pki.dir(), name, &out, now(), &mut OsRng)
                .unwrap();
        let mut text = std::fs::read_to_string(&profile).unwrap();
        edit(&mut text);
        std::fs::write(&profile, text).unwrap();
        profile
    }

    /// Issue a pickup credential for the wallet of `profile` and add it.
    pub fn give_credential(&self, profile: &Path, site: &str, slot: u16) {
        let w = tapstack_emulator::profile::load(profile).unwrap();
        let path = self.dir.path().join(format!("{site}-{slot}.cred"));
        let req = tapstack_certs::CredentialRequest {
            wallet: &w.context.certificate,
            site,
            slot,
            parcel: "SF1234567890",
            days: None,
        };
        self.pki
            .issue_credential(&req, &path, now(), &mut OsRng)
            .unwrap();
        tapstack_emulator::profile::add_credential(profile, &path).unwrap();
    }
}

/// What one tap through a real transport did.
#[derive(Debug)]
pub struct Tap {
    pub outcome: Option<TapOutcome>,
    pub confirm_on_phone: bool,
    pub receipt_delivered: bool,
    pub error: Option<String>,
    pub exchanges: usize,
}

/// The receipt a terminal sends after an approval: the record's sequence
/// number, the slot of a pickup; no order number or cart.
pub fn plain_receipt(o: &TapOutcome) -> Receipt {
    Receipt {
        record_check: [0x11; 4],
        seq: u64::from(o.atc),
        order_number: None,
        cart: None,
        slot: o.credential.as_ref().map(|c| c.slot),
    }
}

/// The receipt of an order: the order number to show and the cart whose
/// hash the tap bound (the wallet refuses a receipt with another cart).
pub fn order_receipt(cart: &Cart, number: &str) -> impl Fn(&TapOutcome) -> Receipt {
    let (cart, number) = (cart.clone(), number.to_owned());
    move |o| Receipt {
        order_number: Some(number.clone()),
        cart: Some(cart.clone()),
        ..plain_receipt(o)
    }
}

/// Drive a whole tap (and its receipt) over `transmit`.
pub fn run_tap<E: std::fmt::Display>(
    terminal: &mut TerminalContext,
    params: TapParams,
    limits: LinkLimits,
    transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, E>,
) -> Tap {
    run_tap_with(terminal, params, limits, &plain_receipt, transmit)
}

/// Drive a whole tap over `transmit`; after an approval send the receipt
/// `receipt` builds.
pub fn run_tap_with<E: std::fmt::Display>(
    terminal: &mut TerminalContext,
    params: TapParams,
    limits: LinkLimits,
    receipt: &dyn Fn(&TapOutcome) -> Receipt,
    mut transmit: impl FnMut(&[u8]) -> Result<Vec<u8>, E>,
) -> Tap {
    let mut link = TerminalLink::new(limits);
    let mut session = TerminalSession::new(params);
    let mut tap = Tap {
        outcome: None,
        confirm_on_phone: false,
        receipt_delivered: false,
        error: None,
        exchanges: 0,
    };
    let mut receipt_sent = false;
    loop {
        let Some(cmd) = session.poll_command() else {
            match (&tap.outcome, receipt_sent) {
                (Some(o), false) => {
                    receipt_sent = true;
                    session.send_receipt(&receipt(o)).unwrap();
                    continue;
                }
                _ => return tap,
            }
        };
        link.send(cmd);
        let resp: Response = loop {
            let Some(wire) = link.poll_transmit() else {
                tap.error = Some("link idle".into());
                return tap;
            };
            tap.exchanges += 1;
            let reply = match transmit(&wire) {
                Ok(r) => r,
                Err(e) => {
                    tap.error = Some(format!("transport: {e}"));
                    return tap;
                }
            };
            match link.handle_response(&reply) {
                Ok(Some(r)) => break r,
                Ok(None) => {}
                Err(e) => {
                    tap.error = Some(Error::from(e).to_string());
                    return tap;
                }
            }
        };
        if let Err(e) = session.handle_response(terminal, resp, Duration::ZERO, now(), &mut OsRng) {
            tap.error = Some(e.to_string());
            return tap;
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                TerminalEvent::Approved(o) => tap.outcome = Some(*o),
                TerminalEvent::ConfirmOnPhone => tap.confirm_on_phone = true,
                TerminalEvent::ReceiptDelivered => tap.receipt_delivered = true,
                TerminalEvent::Selected { extended, .. } if !extended => {
                    link.set_limits(LinkLimits::SHORT)
                }
                _ => {}
            }
        }
    }
}

/// Start `tap-emu vpcd` for `wallets` against `pcscd`.
pub fn emu_vpcd(pcscd: &Pcscd, dir: &Path, wallets: &[&Path], extra: &[&str]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tap-emu"));
    cmd.arg("vpcd")
        .arg("--port")
        .arg(pcscd.port.to_string())
        .args(["--idle-ms", "400", "--gap-ms", "1000"]);
    for w in wallets {
        cmd.arg("--wallet").arg(w);
    }
    cmd.args(extra);
    Child::spawn("tap-emu", &mut cmd, Some(&dir.join("emu.log"))).unwrap()
}

/// A PC/SC client on vpcd's first slot.
pub struct Reader {
    ctx: pcsc::Context,
    name: CString,
}

impl Reader {
    pub fn new() -> Self {
        Reader {
            ctx: pcsc::Context::establish(pcsc::Scope::User).unwrap(),
            name: CString::new(VPCD_READER).unwrap(),
        }
    }

    /// Wait up to `timeout` for a card; returns the reader's event counter.
    pub fn present_within(&self, timeout: Duration) -> Option<u32> {
        let mut states = vec![pcsc::ReaderState::new(
            self.name.clone(),
            pcsc::State::UNAWARE,
        )];
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            self.ctx
                .get_status_change(Duration::from_millis(100), &mut states)
                .ok();
            let s = states[0].event_state();
            if s.contains(pcsc::State::PRESENT) && !s.contains(pcsc::State::MUTE) {
                return Some(states[0].event_count());
            }
            states[0].sync_current_state();
        }
        None
    }

    /// Wait for a card; returns the reader's event counter.
    pub fn wait_present(&self) -> u32 {
        self.present_within(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no card in {VPCD_READER}"))
    }

    /// Wait until the card that was there at `count` has gone (absent, or
    /// another insertion counted since).
    pub fn wait_gone(&self, count: u32) {
        let mut states = vec![pcsc::ReaderState::new(
            self.name.clone(),
            pcsc::State::UNAWARE,
        )];
        for _ in 0..300 {
            self.ctx
                .get_status_change(Duration::from_millis(100), &mut states)
                .ok();
            let s = states[0].event_state();
            if !s.contains(pcsc::State::PRESENT) || states[0].event_count() != count {
                return;
            }
            states[0].sync_current_state();
        }
        panic!("the card never left {VPCD_READER}");
    }

    /// One tap with the phone that is (or comes within `timeout`) in the field.
    pub fn tap_until_gone(
        &self,
        world: &mut World,
        params: TapParams,
        limits: LinkLimits,
        timeout: Duration,
    ) -> Option<Tap> {
        self.tap_with(world, params, limits, timeout, &plain_receipt)
    }

    /// One tap that sends the receipt `receipt` builds.
    pub fn tap_with(
        &self,
        world: &mut World,
        params: TapParams,
        limits: LinkLimits,
        timeout: Duration,
        receipt: &dyn Fn(&TapOutcome) -> Receipt,
    ) -> Option<Tap> {
        let count = self.present_within(timeout)?;
        let card = match self
            .ctx
            .connect(&self.name, pcsc::ShareMode::Shared, pcsc::Protocols::ANY)
        {
            Ok(c) => c,
            Err(e) => {
                return Some(Tap {
                    outcome: None,
                    confirm_on_phone: false,
                    receipt_delivered: false,
                    error: Some(format!("connect: {e}")),
                    exchanges: 0,
                })
            }
        };
        let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
        let tap = run_tap_with(&mut world.terminal, params, limits, receipt, |apdu| {
            card.transmit(apdu, &mut buf).map(<[u8]>::to_vec)
        });
        let _ = card.disconnect(pcsc::Disposition::LeaveCard);
        self.wait_gone(count);
        Some(tap)
    }

    pub fn tap(&self, world: &mut World, params: TapParams, limits: LinkLimits) -> Tap {
        self.tap_until_gone(world, params, limits, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no card in {VPCD_READER}"))
    }
}
