//! The wallet (phone) side of the tap handshake, sans-IO — what an HCE
//! service runs. It answers every command with a response; status words say
//! what went wrong.
//!
//! ```text
//!   Idle ──SELECT──▶ Selected ──AUTHORIZE──▶ Authorized ──CONFIRM──▶ Done
//!     ▲                │  9101 / 9102 keep it Selected      │ GET CERTIFICATE
//!     └──── deselect() / SELECT (new key share) ◀───────────┘
//! ```
//!
//! **User presence (v2):** a tap needs the user — a confirmation on the
//! phone or a biometric arming — when the amount is above the wallet's CVM
//! limit, when the terminal sent `D3`, and for every pickup whose credential
//! the operator did not relax. A confirmation names the prompt it confirms
//! ([`messages::prompt_hash`]); a prompt on screen is never replaced by a
//! later AUTHORIZE (that one is answered `9101` and shown nothing).
//!
//! **Kiosks:** a pickup credential goes only to a terminal whose key the
//! credential's operator endorsed for the site (a kiosk certificate, `CA`
//! in AUTHORIZE); any other terminal gets `9104` and no credential bytes.
//!
//! **ATC durability:** after [`WalletSession::handle_command`] returns a
//! response to AUTHORIZE, [`WalletContext::atc`] has advanced; the driver must
//! persist it before transmitting that response.

use std::collections::VecDeque;

use p256::ecdsa::SigningKey;
use rand_core::CryptoRngCore;

use crate::apdu::{Command, Response, StatusWord};
use crate::cache::Bounded;
use crate::codec::Codec;
use crate::compact::{self, WireForm};
use crate::crypto::{self, Direction, EphemeralKey, SessionKeys, WalletCryptogramKey};
use crate::messages::{
    self, cert_ref, AuthorizeRequest, CertOnAir, Cvm, Fci, WalletBody, WalletResponse, AID,
    CERT_REF_LEN, CLA_ISO, CLA_PROPRIETARY, FLAG_EXTENDED_LENGTH, INS_AUTHORIZE, INS_CONFIRM,
    INS_GET_CERTIFICATE, INS_RELAY, INS_SELECT, RELAY_NONCE_LEN, VERSION_2,
};
use crate::pki::{Certificate, Role, TrustStore};
use crate::revocation::RevocationList;
use crate::scenario::{PickupCredential, Receipt, Scenario, CAP_ORDER, CAP_PAY, CAP_PICKUP};
use crate::verify::verify_endorsement;

/// How long a confirmation made on the phone stays valid for the second tap.
pub const CONFIRM_WINDOW_SECS: u64 = 120;
/// How long an unconfirmed prompt stays on screen (and blocks other
/// prompts) unless the user dismisses it.
pub const PROMPT_WINDOW_SECS: u64 = 120;

/// A scenario waiting for the user's confirmation on the phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingConfirmation {
    pub terminal: [u8; 32],
    pub merchant: String,
    pub scenario: Scenario,
    /// [`messages::prompt_hash`] of what the screen shows.
    pub prompt: [u8; 32],
    /// The prompt stays on screen until then unless confirmed.
    pub shown_until: u64,
    /// Set when the user confirmed; the second tap must come before it.
    pub confirmed_until: Option<u64>,
}

impl PendingConfirmation {
    /// Whether the prompt still holds the screen (shown, or confirmed and
    /// waiting for the second tap).
    pub fn on_screen(&self, now: u64) -> bool {
        match self.confirmed_until {
            Some(t) => now <= t,
            None => now <= self.shown_until,
        }
    }
}

/// Long-lived wallet state: identity, policy, caches, counter.
#[derive(Debug)]
pub struct WalletContext {
    pub certificate: Certificate,
    key: SigningKey,
    cryptogram_key: WalletCryptogramKey,
    /// Root plus the acquirer CAs this wallet accepts terminals from.
    pub trust: TrustStore,
    pub revocations: Option<RevocationList>,
    /// How long past its `next_update` the list in `revocations` is still
    /// relied on; beyond, the wallet refuses every terminal
    /// ([`RevocationList::check_fresh`]). Default 72 h.
    pub revocation_grace: u64,
    /// Application transaction counter: last value used.
    pub atc: u32,
    /// Amounts at or below this (minor units) need no verification.
    pub cvm_limit: u64,
    /// The user (or policy) declines everything.
    pub decline_all: bool,
    /// Biometric unlock valid until this time (Unix seconds), for one tap.
    pub armed_until: Option<u64>,
    pub pending: Option<PendingConfirmation>,
    pub credentials: Vec<PickupCredential>,
    /// Largest tolerated |terminal time − phone time|, seconds.
    pub max_skew: u64,
    /// Scenario capability bits offered in the FCI.
    pub scenarios: u8,
    /// Whether extended-length APDUs are offered.
    pub extended: bool,
    terminal_certs: Bounded<[u8; CERT_REF_LEN], Certificate>,
    /// (terminal certificate hash, our certificate hash) pairs: which
    /// terminals hold which of our certificates (a renewed certificate is
    /// sent again).
    given_to: Bounded<([u8; 32], [u8; 32]), ()>,
    own_wire: WireForm,
}

impl WalletContext {
    pub fn new(
        certificate: Certificate,
        key: SigningKey,
        cryptogram_key: WalletCryptogramKey,
        trust: TrustStore,
    ) -> Self {
        WalletContext {
            certificate,
            key,
            cryptogram_key,
            trust,
            revocations: None,
            revocation_grace: crate::revocation::DEFAULT_GRACE_SECS,
            atc: 0,
            cvm_limit: 0,
            decline_all: false,
            armed_until: None,
            pending: None,
            credentials: Vec::new(),
            max_skew: 900,
            scenarios: CAP_PAY | CAP_ORDER | CAP_PICKUP,
            extended: true,
            terminal_certs: Bounded::new(256),
            given_to: Bounded::new(256),
            own_wire: WireForm::default(),
        }
    }

    /// The user confirmed the prompt whose hash is `prompt` (the one the UI
    /// displayed, from [`WalletEvent::ConfirmationRequested`]). Nothing
    /// happens, and `false` is returned, unless that very prompt is pending
    /// and still on screen.
    pub fn confirm_pending(&mut self, prompt: &[u8; 32], now: u64) -> bool {
        match self.pending.as_mut() {
            Some(p) if p.prompt == *prompt && p.on_screen(now) => {
                p.confirmed_until = Some(now.saturating_add(CONFIRM_WINDOW_SECS));
                true
            }
            _ => false,
        }
    }

    /// The hash of the prompt waiting for the user, if any (what a UI shows
    /// and passes back to [`WalletContext::confirm_pending`]).
    pub fn pending_prompt(&self) -> Option<[u8; 32]> {
        self.pending.as_ref().map(|p| p.prompt)
    }

    /// The user dismissed the prompt on screen: another may take its place.
    pub fn dismiss_pending(&mut self) {
        self.pending = None;
    }

    /// Simulated biometric unlock: the next tap within `secs` needs no second tap.
    pub fn arm(&mut self, now: u64, secs: u64) {
        self.armed_until = Some(now.saturating_add(secs));
    }

    /// Forget which terminals hold our certificate and which we trust by hash.
    pub fn forget_terminals(&mut self) {
        self.terminal_certs.clear();
        self.given_to.clear();
    }

    /// Decide the CVM of a tap that needs `presence` (or not). `Err(9101)`
    /// with `Ok(true)` in `shown` when this tap's prompt is the one on
    /// screen, `false` when another prompt holds the screen.
    fn decide_cvm(
        &mut self,
        scenario: &Scenario,
        presence: bool,
        terminal: &Certificate,
        now: u64,
        shown: &mut bool,
    ) -> Result<Cvm, StatusWord> {
        if self.decline_all {
            return Err(StatusWord::Declined);
        }
        if !presence {
            return Ok(Cvm::None);
        }
        if self.armed_until.is_some_and(|t| now <= t) {
            self.armed_until = None;
            return Ok(Cvm::Armed);
        }
        let prompt = messages::prompt_hash(terminal.hash(), terminal.common_name(), scenario);
        match &self.pending {
            Some(p) if p.prompt == prompt && p.confirmed_until.is_some_and(|t| now <= t) => {
                self.pending = None;
                return Ok(Cvm::ConfirmedOnDevice);
            }
            Some(p) if p.prompt == prompt && p.on_screen(now) => {
                // Still waiting for the user: show it again, change nothing.
                *shown = true;
                return Err(StatusWord::ConfirmOnPhone);
            }
            // Another prompt holds the screen: never replace it.
            Some(p) if p.on_screen(now) => return Err(StatusWord::ConfirmOnPhone),
            _ => {}
        }
        self.pending = Some(PendingConfirmation {
            terminal: *terminal.hash(),
            merchant: terminal.common_name().to_owned(),
            scenario: scenario.clone(),
            prompt,
            shown_until: now.saturating_add(PROMPT_WINDOW_SECS),
            confirmed_until: None,
        });
        *shown = true;
        Err(StatusWord::ConfirmOnPhone)
    }
}

/// What the phone's UI learns from the session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalletEvent {
    Selected,
    /// Show "confirm <scenario> at <merchant>?"; when the user confirms,
    /// call [`WalletContext::confirm_pending`] with `prompt` (the hash of
    /// exactly this screen) and ask for a second tap.
    ConfirmationRequested {
        merchant: String,
        scenario: Scenario,
        prompt: [u8; 32],
    },
    /// Authorized; `atc` is the value to persist before answering.
    Authorized {
        merchant: String,
        scenario: Scenario,
        atc: u32,
        cvm: Cvm,
    },
    /// The terminal's receipt: show "paid, order A17".
    Receipt {
        merchant: String,
        receipt: Receipt,
    },
    /// A command was refused with this status word.
    Refused {
        sw: StatusWord,
    },
}

/// Timed exchanges a wallet answers per SELECT (the terminal retries a
/// slow one; more is a terminal probing, or a relay).
pub const RELAY_ANSWERS: usize = 4;

struct Selected {
    eph: EphemeralKey,
    fci: Vec<u8>,
    /// Drawn at SELECT so the timed answer costs no computation.
    relay_nonces: [[u8; RELAY_NONCE_LEN]; RELAY_ANSWERS],
    relays: usize,
    /// The last timed exchange: (terminal nonce, wallet nonce).
    relay: Option<([u8; RELAY_NONCE_LEN], [u8; RELAY_NONCE_LEN])>,
}

struct Authorized {
    keys: SessionKeys,
    merchant: String,
    scenario: Scenario,
}

enum State {
    Idle,
    Selected(Box<Selected>),
    Authorized(Box<Authorized>),
    Done,
}

/// The commands this application understands.
enum WalletCommand<'a> {
    Select(&'a [u8]),
    Relay([u8; RELAY_NONCE_LEN]),
    Authorize(&'a [u8]),
    GetCertificate,
    Confirm(&'a [u8]),
}

fn parse_command(cmd: &Command) -> Result<WalletCommand<'_>, StatusWord> {
    match (cmd.cla, cmd.ins) {
        (CLA_ISO, INS_SELECT) if cmd.p1 == 0x04 && cmd.p2 == 0x00 => {
            Ok(WalletCommand::Select(&cmd.data))
        }
        (CLA_ISO, INS_SELECT) => Err(StatusWord::WrongP1P2),
        // AUTHORIZE names the protocol version in P1.
        (CLA_PROPRIETARY, INS_AUTHORIZE) if (cmd.p1, cmd.p2) == (VERSION_2, 0) => {
            Ok(WalletCommand::Authorize(&cmd.data))
        }
        (CLA_PROPRIETARY, INS_AUTHORIZE | INS_CONFIRM | INS_GET_CERTIFICATE | INS_RELAY)
            if (cmd.p1, cmd.p2) != (0, 0) =>
        {
            Err(StatusWord::WrongP1P2)
        }
        (CLA_PROPRIETARY, INS_RELAY) => cmd
            .data
            .as_slice()
            .try_into()
            .map(WalletCommand::Relay)
            .map_err(|_| StatusWord::WrongLength),
        (CLA_PROPRIETARY, INS_CONFIRM) => Ok(WalletCommand::Confirm(&cmd.data)),
        (CLA_PROPRIETARY, INS_GET_CERTIFICATE) if cmd.data.is_empty() => {
            Ok(WalletCommand::GetCertificate)
        }
        (CLA_PROPRIETARY, INS_GET_CERTIFICATE) => Err(StatusWord::WrongLength),
        (CLA_ISO | CLA_PROPRIETARY, _) => Err(StatusWord::InsNotSupported),
        _ => Err(StatusWord::ClaNotSupported),
    }
}

/// One tap, wallet side.
pub struct WalletSession {
    state: State,
    events: VecDeque<WalletEvent>,
}

impl core::fmt::Debug for WalletSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self.state {
            State::Idle => "idle",
            State::Selected(_) => "selected",
            State::Authorized(_) => "authorized",
            State::Done => "done",
        };
        f.debug_struct("WalletSession")
            .field("state", &s)
            .finish_non_exhaustive()
    }
}

impl Default for WalletSession {
    fn default() -> Self {
        Self::new()
    }
}

impl WalletSession {
    pub fn new() -> Self {
        WalletSession {
            state: State::Idle,
            events: VecDeque::new(),
        }
    }

    pub fn poll_event(&mut self) -> Option<WalletEvent> {
        self.events.pop_front()
    }

    /// The phone left the field or another application was selected: wipe
    /// the session secrets.
    pub fn deselect(&mut self) {
        self.state = State::Idle;
    }

    /// Answer one logical command. `now` is the phone's Unix time.
    pub fn handle_command(
        &mut self,
        ctx: &mut WalletContext,
        cmd: &Command,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Response {
        let result = match parse_command(cmd) {
            Err(sw) => Err(sw),
            Ok(WalletCommand::Select(aid)) => self.select(ctx, aid, rng),
            Ok(WalletCommand::Relay(nonce)) => self.relay(nonce),
            Ok(WalletCommand::Authorize(data)) => self.authorize(ctx, data, now),
            Ok(WalletCommand::GetCertificate) => self.get_certificate(ctx),
            Ok(WalletCommand::Confirm(data)) => self.confirm(data),
        };
        match result {
            Ok(resp) => resp,
            Err(sw) => {
                self.events.push_back(WalletEvent::Refused { sw });
                Response::status(sw)
            }
        }
    }

    fn select(
        &mut self,
        ctx: &WalletContext,
        aid: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Response, StatusWord> {
        if aid != AID {
            self.state = State::Idle;
            return Err(StatusWord::FileNotFound);
        }
        let eph = EphemeralKey::generate(rng);
        let fci = Fci {
            versions: vec![VERSION_2],
            scenarios: ctx.scenarios,
            max_command: if ctx.extended { 4096 } else { 255 },
            flags: if ctx.extended {
                FLAG_EXTENDED_LENGTH
            } else {
                0
            },
            key_share: *eph.public(),
        }
        .to_bytes();
        let mut relay_nonces = [[0u8; RELAY_NONCE_LEN]; RELAY_ANSWERS];
        for n in &mut relay_nonces {
            rng.fill_bytes(n);
        }
        self.state = State::Selected(Box::new(Selected {
            eph,
            fci: fci.clone(),
            relay_nonces,
            relays: 0,
            relay: None,
        }));
        self.events.push_back(WalletEvent::Selected);
        Ok(Response::ok(fci))
    }

    /// The timed exchange: answer at once with a nonce drawn at SELECT.
    fn relay(&mut self, terminal_nonce: [u8; RELAY_NONCE_LEN]) -> Result<Response, StatusWord> {
        let State::Selected(sel) = &mut self.state else {
            return Err(StatusWord::ConditionsNotSatisfied);
        };
        let wallet_nonce = *sel
            .relay_nonces
            .get(sel.relays)
            .ok_or(StatusWord::ConditionsNotSatisfied)?;
        sel.relays += 1;
        sel.relay = Some((terminal_nonce, wallet_nonce));
        Ok(Response::ok(wallet_nonce.to_vec()))
    }

    fn authorize(
        &mut self,
        ctx: &mut WalletContext,
        data: &[u8],
        now: u64,
    ) -> Result<Response, StatusWord> {
        // Out of order: refuse without disturbing the session.
        if !matches!(self.state, State::Selected(_)) {
            return Err(StatusWord::ConditionsNotSatisfied);
        }
        let State::Selected(sel) = core::mem::replace(&mut self.state, State::Idle) else {
            return Err(StatusWord::ConditionsNotSatisfied);
        };
        // Until we authorize, a retry (e.g. with the certificate) is allowed.
        let mut shown = false;
        let result = authorize_selected(ctx, &sel, data, now, &mut shown);
        match result {
            Ok((resp, authorized, cvm)) => {
                self.events.push_back(WalletEvent::Authorized {
                    merchant: authorized.merchant.clone(),
                    scenario: authorized.scenario.clone(),
                    atc: ctx.atc,
                    cvm,
                });
                self.state = State::Authorized(Box::new(authorized));
                Ok(resp)
            }
            Err(sw) => {
                if sw == StatusWord::ConfirmOnPhone && shown {
                    if let Some(p) = &ctx.pending {
                        self.events.push_back(WalletEvent::ConfirmationRequested {
                            merchant: p.merchant.clone(),
                            scenario: p.scenario.clone(),
                            prompt: p.prompt,
                        });
                    }
                }
                self.state = State::Selected(sel);
                Err(sw)
            }
        }
    }

    fn get_certificate(&mut self, ctx: &mut WalletContext) -> Result<Response, StatusWord> {
        let State::Authorized(a) = &self.state else {
            return Err(StatusWord::ConditionsNotSatisfied);
        };
        let sealed = a.keys.seal(
            Direction::WalletToTerminal,
            1,
            &[INS_GET_CERTIFICATE],
            &messages::pad(ctx.own_wire.get(&ctx.certificate), 0),
        );
        Ok(Response::ok(sealed))
    }

    fn confirm(&mut self, data: &[u8]) -> Result<Response, StatusWord> {
        if !matches!(self.state, State::Authorized(_)) {
            return Err(StatusWord::ConditionsNotSatisfied);
        }
        // One attempt: whatever happens, the session is done afterwards.
        let State::Authorized(a) = core::mem::replace(&mut self.state, State::Done) else {
            return Err(StatusWord::ConditionsNotSatisfied);
        };
        let plain = a
            .keys
            .open(Direction::TerminalToWallet, 0, &[INS_CONFIRM], data)
            .map_err(|_| StatusWord::SecurityNotSatisfied)?;
        let receipt = messages::unpad(&plain)
            .and_then(Receipt::decode)
            .map_err(|_| StatusWord::WrongData)?;
        if !a.scenario.matches_cart(receipt.cart.as_ref()) {
            return Err(StatusWord::WrongData);
        }
        self.events.push_back(WalletEvent::Receipt {
            merchant: a.merchant.clone(),
            receipt,
        });
        Ok(Response::ok(Vec::new()))
    }
}

fn authorize_selected(
    ctx: &mut WalletContext,
    sel: &Selected,
    data: &[u8],
    now: u64,
    shown: &mut bool,
) -> Result<(Response, Authorized, Cvm), StatusWord> {
    let req = AuthorizeRequest::decode(data).map_err(|_| StatusWord::WrongData)?;
    // Only after this session's timed exchange, and bound to it.
    let relay = &req.body.relay;
    if sel.relay != Some((relay.terminal_nonce, relay.wallet_nonce)) {
        return Err(StatusWord::ConditionsNotSatisfied);
    }
    if ctx.scenarios & req.body.scenario.capability() == 0 {
        return Err(StatusWord::ScenarioUnsupported);
    }
    let terminal = match &req.terminal {
        CertOnAir::Wire(w) => {
            compact::from_wire(w, ctx.trust.cas()).map_err(|_| StatusWord::TerminalNotTrusted)?
        }
        CertOnAir::Ref(r) => ctx
            .terminal_certs
            .get(r)
            .cloned()
            .ok_or(StatusWord::CertificateNeeded)?,
    };
    let endorsement = match &req.endorsement {
        Some(w) => Some(
            compact::from_wire(w, ctx.trust.cas())
                .map_err(|_| StatusWord::TerminalNotTrusted)?
                .der()
                .to_vec(),
        ),
        None => None,
    };
    let body = &req.resolved_body(*terminal.hash(), endorsement);
    // A list past next_update + grace no longer says which terminals are
    // revoked: fail closed (no list at all is the holder's choice).
    if ctx
        .revocations
        .as_ref()
        .is_some_and(|r| r.check_fresh(now, ctx.revocation_grace).is_err())
    {
        return Err(StatusWord::TerminalNotTrusted);
    }
    ctx.trust
        .verify(&terminal, Role::Terminal, now, ctx.revocations.as_ref())
        .map_err(|_| StatusWord::TerminalNotTrusted)?;
    if u64::from(body.time).abs_diff(now) > ctx.max_skew {
        return Err(StatusWord::TimeSkew);
    }
    let body_bytes = body.to_bytes();
    let th1 = messages::th1(&sel.fci, &body_bytes);
    crypto::verify(terminal.public_key(), &th1, &req.signature)
        .map_err(|_| StatusWord::TerminalNotTrusted)?;
    ctx.terminal_certs
        .insert(cert_ref(terminal.hash()), terminal.clone());

    // A pickup: only at a kiosk endorsed for the site (checked before the
    // wallet says whether it holds a credential there), and only a
    // credential of the operator that endorsed it.
    let credential = match &body.scenario {
        Scenario::Pickup { site } => {
            let endorsed = |operator: &[u8; 32]| {
                verify_endorsement(
                    body.endorsement.as_deref(),
                    &terminal,
                    site,
                    operator,
                    &ctx.trust,
                    ctx.revocations.as_ref(),
                    now,
                )
                .is_ok()
            };
            let for_site: Vec<&PickupCredential> = ctx
                .credentials
                .iter()
                .filter(|c| &c.site == site && c.not_after >= now)
                .collect();
            match for_site.iter().find(|c| endorsed(&c.operator)) {
                Some(c) => Some((*c).clone()),
                None if for_site.is_empty() && endorsed_any(ctx, body, &terminal, site, now) => {
                    return Err(StatusWord::NoCredential)
                }
                None => return Err(StatusWord::TerminalNotTrusted),
            }
        }
        _ => None,
    };
    let presence = body.cvm_required
        || body
            .scenario
            .amount()
            .is_some_and(|a| a.minor > ctx.cvm_limit)
        || credential
            .as_ref()
            .is_some_and(PickupCredential::requires_presence);
    let cvm = ctx.decide_cvm(&body.scenario, presence, &terminal, now, shown)?;
    let prompt = (cvm == Cvm::ConfirmedOnDevice)
        .then(|| messages::prompt_hash(terminal.hash(), terminal.common_name(), &body.scenario));
    let atc = ctx
        .atc
        .checked_add(1)
        .ok_or(StatusWord::ConditionsNotSatisfied)?;
    let shared = sel
        .eph
        .agree(&body.key_share)
        .map_err(|_| StatusWord::WrongData)?;
    let keys = SessionKeys::derive(&shared, &th1);
    let cryptogram = credential
        .is_none()
        .then(|| ctx.cryptogram_key.cryptogram(atc, &th1, cvm as u8));
    let wallet_body = WalletBody {
        wallet_cert_hash: *ctx.certificate.hash(),
        atc,
        cvm,
        prompt,
        cryptogram,
        credential,
    };
    let wallet_body_bytes = wallet_body.to_bytes();
    let th2 = messages::th2(&th1, &req.signature, &wallet_body_bytes);
    let signature = crypto::sign(&ctx.key, &th2);
    let given = (*terminal.hash(), *ctx.certificate.hash());
    let send_cert = !ctx.given_to.contains(&given);
    let mut resp = WalletResponse {
        body: wallet_body,
        wallet: CertOnAir::Wire(ctx.own_wire.get(&ctx.certificate).to_vec()),
        signature,
    };
    // When the terminal sent its certificate, the answer is padded to the
    // class of the one with ours whether or not it carries it: a listener
    // cannot tell whether this phone was here before. When it sent only a
    // reference, the phone's answer (9102 or not) already told a listener
    // that, and the answer is padded to its own class.
    let floor = match req.terminal {
        CertOnAir::Wire(_) => resp.to_bytes().len(),
        CertOnAir::Ref(_) => 0,
    };
    if !send_cert {
        resp.wallet = CertOnAir::Ref(cert_ref(ctx.certificate.hash()));
    }
    let sealed = keys.seal(
        Direction::WalletToTerminal,
        0,
        &[INS_AUTHORIZE],
        &messages::pad(&resp.to_bytes(), floor),
    );

    ctx.atc = atc;
    ctx.given_to.insert(given, ());
    let merchant = terminal.common_name().to_owned();
    Ok((
        Response::ok(sealed),
        Authorized {
            keys,
            merchant,
            scenario: body.scenario.clone(),
        },
        cvm,
    ))
}

/// Whether any operator the wallet knows endorsed this terminal for `site`
/// (so telling it "no credential here" says nothing to a stranger).
fn endorsed_any(
    ctx: &WalletContext,
    body: &messages::AuthBody,
    terminal: &Certificate,
    site: &str,
    now: u64,
) -> bool {
    ctx.trust
        .intermediates()
        .iter()
        .filter(|c| c.role() == Role::Operator)
        .any(|op| {
            verify_endorsement(
                body.endorsement.as_deref(),
                terminal,
                site,
                op.hash(),
                &ctx.trust,
                ctx.revocations.as_ref(),
                now,
            )
            .is_ok()
        })
}
