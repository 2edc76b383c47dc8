//! One emulated phone (the wallet app plus the card-emulation plumbing an
//! HCE service gets from Android), and a queue of phones tapping in turn.
//! Front-ends (vpcd, PN532, in-process) only move bytes and field events.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand_core::{OsRng, RngCore};
use tapstack_protocol::apdu::{CardInput, CardLink, Response, StatusWord};
use tapstack_protocol::wallet::{WalletContext, WalletEvent, WalletSession};

use crate::faults::{FaultAction, FaultScript};
use crate::profile::{CvmPolicy, LoadedWallet};
use crate::state::AtcStore;

/// ATR a PC/SC reader reports for an ISO 14443-4 type A target without
/// historical bytes (PC/SC part 3), as Android phones show up.
pub const ATR: [u8; 5] = [0x3B, 0x80, 0x80, 0x01, 0x01];
/// ATS of an Android HCE phone: FSCI 8 (256-byte frames), TA/TB/TC present.
pub const ATS: [u8; 5] = [0x05, 0x78, 0x80, 0x70, 0x02];
/// ATQA (SENS_RES) and SAK (SEL_RES) of an ISO 14443-4 type A target.
pub const ATQA: [u8; 2] = [0x00, 0x04];
pub const SAK: u8 = 0x20;

/// What the phone did with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The response APDU (data and status word).
    Data(Vec<u8>),
    /// The phone left the field instead of answering.
    Removed,
}

/// The phone's clock, Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An emulated phone.
#[derive(Debug)]
pub struct Phone {
    pub name: String,
    ctx: WalletContext,
    atc: AtcStore,
    session: WalletSession,
    card: CardLink,
    policy: CvmPolicy,
    latency: Duration,
    uid: [u8; 4],
    commands: usize,
    entered: Option<Instant>,
    authorized: bool,
    events: Vec<WalletEvent>,
}

impl Phone {
    pub fn new(
        name: &str,
        ctx: WalletContext,
        atc: AtcStore,
        policy: CvmPolicy,
        latency: Duration,
    ) -> Self {
        let card = CardLink::new(ctx.extended);
        Phone {
            name: name.to_owned(),
            ctx,
            atc,
            session: WalletSession::new(),
            card,
            policy,
            latency,
            uid: random_uid(),
            commands: 0,
            entered: None,
            authorized: false,
            events: Vec::new(),
        }
    }

    pub fn from_wallet(w: LoadedWallet) -> Self {
        let latency = Duration::from_millis(w.profile.device.latency_ms);
        Phone::new(
            &w.profile.name,
            w.context,
            w.atc,
            w.profile.cvm.policy,
            latency,
        )
    }

    /// The phone enters the field: a fresh random UID (as Android does per
    /// presence), a fresh session.
    pub fn enter_field(&mut self) {
        self.uid = random_uid();
        self.session.deselect();
        self.card = CardLink::new(self.ctx.extended);
        self.commands = 0;
        self.authorized = false;
        self.entered = Some(Instant::now());
        if self.policy == CvmPolicy::AutoApprove {
            self.ctx.arm(unix_now(), 60);
        }
    }

    /// The phone leaves the field: session secrets are wiped.
    pub fn leave_field(&mut self) {
        self.session.deselect();
        self.card.reset();
        self.entered = None;
    }

    pub fn in_field(&self) -> bool {
        self.entered.is_some()
    }

    /// How long the phone has been in the field.
    pub fn presence(&self) -> Option<Duration> {
        self.entered.map(|e| e.elapsed())
    }

    pub fn uid(&self) -> [u8; 4] {
        self.uid
    }

    /// The last transaction counter value used (and persisted).
    pub fn atc(&self) -> u32 {
        self.atc.value()
    }

    /// Whether this presence produced an authorization.
    pub fn authorized_this_tap(&self) -> bool {
        self.authorized
    }

    pub fn policy(&self) -> CvmPolicy {
        self.policy
    }

    pub fn context(&self) -> &WalletContext {
        &self.ctx
    }

    pub fn context_mut(&mut self) -> &mut WalletContext {
        &mut self.ctx
    }

    /// Events of the wallet app so far (what its screen showed).
    pub fn take_events(&mut self) -> Vec<WalletEvent> {
        std::mem::take(&mut self.events)
    }

    /// Answer one command APDU of tap `tap` (1-based), applying `faults`.
    pub fn transmit(&mut self, apdu: &[u8], tap: usize, faults: &FaultScript) -> Reply {
        self.commands = self.commands.saturating_add(1);
        if let (Some(limit), Some(p)) = (faults.present, self.presence()) {
            if p >= limit {
                self.leave_field();
                return Reply::Removed;
            }
        }
        let actions: Vec<FaultAction> = faults.at(tap, self.commands).collect();
        for a in &actions {
            match a {
                FaultAction::Remove => {
                    tracing::info!(phone = %self.name, command = self.commands, "fault: phone leaves the field");
                    self.leave_field();
                    return Reply::Removed;
                }
                FaultAction::Delay(d) | FaultAction::Relay(d) => std::thread::sleep(*d),
                _ => {}
            }
        }
        if !self.latency.is_zero() {
            std::thread::sleep(self.latency);
        }
        let mut out = self.process(apdu);
        for a in &actions {
            match a {
                FaultAction::Corrupt => {
                    let i = if out.len() > 2 {
                        0
                    } else {
                        out.len().saturating_sub(1)
                    };
                    if let Some(b) = out.get_mut(i) {
                        *b ^= 0x01;
                    }
                }
                FaultAction::StatusWord(sw) => out = sw.to_be_bytes().to_vec(),
                FaultAction::Garbage => {
                    let mut g = vec![0u8; 1 + (OsRng.next_u32() % 40) as usize];
                    OsRng.fill_bytes(&mut g);
                    out = g;
                }
                FaultAction::Remove | FaultAction::Delay(_) | FaultAction::Relay(_) => {}
            }
        }
        Reply::Data(out)
    }

    fn process(&mut self, apdu: &[u8]) -> Vec<u8> {
        let cmd = match self.card.handle_command(apdu) {
            CardInput::Reply(r) => return r,
            CardInput::Command(c) => c,
        };
        let now = unix_now();
        let mut resp = self
            .session
            .handle_command(&mut self.ctx, &cmd, now, &mut OsRng);
        // Persist the counter before the response that uses it leaves.
        if self.ctx.atc > self.atc.value() {
            if let Err(e) = self.atc.advance_to(self.ctx.atc) {
                tracing::error!(phone = %self.name, error = %e, "cannot persist the transaction counter; refusing");
                resp = Response::status(StatusWord::Unknown);
            }
        }
        while let Some(ev) = self.session.poll_event() {
            match &ev {
                WalletEvent::ConfirmationRequested {
                    merchant,
                    scenario,
                    prompt,
                } => {
                    tracing::info!(phone = %self.name, %merchant, scenario = scenario.kind().as_str(), prompt = %hex::encode(prompt), "phone asks: confirm, then tap again");
                    // The simulated user confirms exactly the prompt on
                    // screen: the confirmation carries its hash.
                    if self.policy == CvmPolicy::ConfirmOnPhone
                        && self.ctx.confirm_pending(prompt, now)
                    {
                        tracing::info!(phone = %self.name, prompt = %hex::encode(prompt), "user confirmed the prompt");
                    }
                }
                WalletEvent::Authorized {
                    merchant,
                    atc,
                    cvm,
                    scenario,
                } => {
                    tracing::info!(phone = %self.name, %merchant, atc, ?cvm, scenario = scenario.kind().as_str(), "authorized");
                    self.authorized = true;
                }
                WalletEvent::Receipt { merchant, receipt } => {
                    tracing::info!(phone = %self.name, %merchant, seq = receipt.seq, order = ?receipt.order_number, slot = ?receipt.slot, "receipt");
                }
                WalletEvent::Refused { sw } => {
                    tracing::debug!(phone = %self.name, %sw, "refused a command")
                }
                _ => {}
            }
            self.events.push(ev);
        }
        self.card.respond(resp, cmd.le)
    }
}

fn random_uid() -> [u8; 4] {
    // ISO 14443-3 random single-size UID: first byte 0x08.
    let mut uid = [0x08, 0, 0, 0];
    OsRng.fill_bytes(&mut uid[1..]);
    uid
}

/// Phones waiting to tap, in turn. A phone that asked for confirmation taps
/// again before the next one; one that authorized (or declined) makes room.
#[derive(Debug)]
pub struct PhoneQueue {
    phones: Vec<Phone>,
    current: usize,
    taps: usize,
    pub faults: FaultScript,
}

impl PhoneQueue {
    pub fn new(phones: Vec<Phone>, faults: FaultScript) -> Self {
        PhoneQueue {
            phones,
            current: 0,
            taps: 0,
            faults,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.phones.is_empty()
    }

    /// Taps started so far.
    pub fn taps(&self) -> usize {
        self.taps
    }

    pub fn current(&mut self) -> Option<&mut Phone> {
        self.phones.get_mut(self.current)
    }

    pub fn phones(&self) -> &[Phone] {
        &self.phones
    }

    /// The next phone enters the field. Without phones nothing enters and
    /// no tap is counted.
    pub fn enter(&mut self) -> Option<&mut Phone> {
        let p = self.phones.get_mut(self.current)?;
        self.taps = self.taps.saturating_add(1);
        p.enter_field();
        tracing::info!(phone = %p.name, tap = self.taps, uid = %hex::encode(p.uid()), "phone enters the field");
        Some(p)
    }

    /// Answer a command from the phone in the field.
    pub fn transmit(&mut self, apdu: &[u8]) -> Reply {
        let tap = self.taps;
        match self.phones.get_mut(self.current) {
            Some(p) if p.in_field() => p.transmit(apdu, tap, &self.faults),
            _ => Reply::Removed,
        }
    }

    /// Whether the phone in the field should leave now (its presence time
    /// from the fault script is up).
    pub fn should_leave(&self) -> bool {
        match (
            self.faults.present,
            self.phones.get(self.current).and_then(Phone::presence),
        ) {
            (Some(limit), Some(p)) => p >= limit,
            _ => false,
        }
    }

    /// The phone in the field leaves; the queue moves on if it is done.
    pub fn leave(&mut self) {
        let Some(p) = self.phones.get_mut(self.current) else {
            return;
        };
        let was_in = p.in_field();
        p.leave_field();
        if was_in {
            tracing::info!(phone = %p.name, authorized = p.authorized_this_tap(), "phone leaves the field");
        }
        if p.authorized_this_tap()
            || p.policy() == CvmPolicy::Decline
            || p.context().pending.is_none()
        {
            self.current = (self.current + 1) % self.phones.len().max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapstack_protocol::testkit::Pki;

    #[test]
    fn entering_an_empty_queue_counts_no_tap() {
        let mut empty = PhoneQueue::new(Vec::new(), FaultScript::default());
        assert!(empty.enter().is_none());
        assert!(empty.enter().is_none());
        assert_eq!(empty.taps(), 0);
        assert_eq!(empty.transmit(&[0x00, 0xA4, 0x04, 0x00]), Reply::Removed);
        empty.leave();

        let pki = Pki::generate(&mut OsRng);
        let phone = Phone::new(
            "alice",
            pki.wallet_context(),
            AtcStore::in_memory(0),
            CvmPolicy::Decline,
            Duration::ZERO,
        );
        let mut queue = PhoneQueue::new(vec![phone], FaultScript::default());
        assert!(queue.enter().is_some_and(|p| p.in_field()));
        assert_eq!(queue.taps(), 1);
        queue.leave();
        assert!(!queue.phones()[0].in_field());
    }
}
