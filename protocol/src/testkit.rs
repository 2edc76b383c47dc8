//! An in-memory PKI and loopback tap driver, for tests, benchmarks, fuzzing,
//! docs and the emulator's self-tests. Pure: no IO, time and randomness are
//! passed in.
//!
//! Building certificates from the fixed, valid specifications here cannot
//! fail; if it does, the kit itself is broken, so it panics.
#![allow(clippy::panic)]

use std::time::{Duration, Instant};

use p256::ecdsa::SigningKey;
use rand_core::CryptoRngCore;

use crate::apdu::{CardInput, CardLink, ExchangeError, LinkLimits, Response, TerminalLink};
use crate::crypto::{compress, IssuerMasterKey};
use crate::error::Error;
use crate::pki::{self, CertSpec, Certificate, Role, TrustStore};
use crate::scenario::{PickupCredential, Receipt};
use crate::terminal::{TapOutcome, TapParams, TerminalContext, TerminalEvent, TerminalSession};
use crate::wallet::{WalletContext, WalletEvent, WalletSession};

/// The fixed "now" of in-memory tests: 2026-05-28T20:26:40Z.
pub const NOW: u64 = 1_780_000_000;
const DAY: u64 = 86_400;

/// A certificate and its private key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: Certificate,
    pub key: SigningKey,
}

/// A complete development PKI held in memory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub root: Identity,
    pub issuer: Identity,
    pub acquirer: Identity,
    pub operator: Identity,
    pub terminal: Identity,
    /// The operator's kiosk certificate endorsing `terminal`'s key for
    /// [`KIOSK_SITES`]; [`Pki::terminal_context`] sends it in pickups.
    pub kiosk: Certificate,
    pub wallet: Identity,
    pub issuer_master_key: IssuerMasterKey,
    pub now: u64,
}

fn spec(role: Role, cn: &str, now: u64) -> CertSpec<'_> {
    CertSpec {
        role,
        common_name: cn,
        not_before: now - DAY,
        not_after: now + 5 * 365 * DAY,
        terminal_id: None,
        endorsed_sites: &[],
    }
}

/// The sites the kit's default terminal is endorsed for as a locker kiosk.
pub const KIOSK_SITES: [&str; 2] = ["LOCKER-7", "LOCKER-8"];

impl Pki {
    /// The body a wallet of this PKI resolves from `req`: the terminal
    /// certificate's hash and the endorsement's DER filled in.
    pub fn resolved_body(
        &self,
        req: &crate::messages::AuthorizeRequest,
        terminal: &Certificate,
    ) -> crate::messages::AuthBody {
        let cas = [
            &self.root.cert,
            &self.issuer.cert,
            &self.acquirer.cert,
            &self.operator.cert,
        ];
        let endorsement = req.endorsement.as_ref().map(|w| {
            crate::compact::from_wire(w, cas)
                .map(|c| c.der().to_vec())
                .unwrap_or_default()
        });
        req.resolved_body(*terminal.hash(), endorsement)
    }

    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let now = NOW;
        let root_key = SigningKey::random(rng);
        let root_cert =
            pki::issue_root(&spec(Role::Root, "tapstack dev root", now), &root_key, rng)
                .unwrap_or_else(|e| panic!("{e}"));
        let root = Identity {
            cert: root_cert,
            key: root_key,
        };
        let child = |role, cn: &str, parent: &Identity, rng: &mut dyn rand_core::CryptoRngCore| {
            let mut rng = RngRef(rng);
            let key = SigningKey::random(&mut rng);
            let cert = pki::issue(
                &spec(role, cn, now),
                key.verifying_key(),
                (&parent.cert, &parent.key),
                &mut rng,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            Identity { cert, key }
        };
        let issuer = child(Role::Issuer, "tapstack dev issuer", &root, rng);
        let acquirer = child(Role::Acquirer, "tapstack dev acquirer", &root, rng);
        let operator = child(Role::Operator, "tapstack dev lockers", &root, rng);
        let terminal = child(Role::Terminal, "Tea House #12", &acquirer, rng);
        let wallet = child(Role::Wallet, "wallet", &issuer, rng);
        let kiosk = endorse_with(&operator, &terminal.cert, &KIOSK_SITES, now, rng);
        let mut imk = [0u8; 16];
        rng.fill_bytes(&mut imk);
        Pki {
            kiosk,
            root,
            issuer,
            acquirer,
            operator,
            terminal,
            wallet,
            issuer_master_key: IssuerMasterKey(imk),
            now,
        }
    }

    /// Another terminal certificate under the same acquirer.
    pub fn new_terminal(&self, cn: &str, rng: &mut impl CryptoRngCore) -> Identity {
        let key = SigningKey::random(rng);
        let cert = pki::issue(
            &spec(Role::Terminal, cn, self.now),
            key.verifying_key(),
            (&self.acquirer.cert, &self.acquirer.key),
            rng,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Identity { cert, key }
    }

    /// A kiosk certificate of the operator endorsing `terminal`'s key for `sites`.
    pub fn endorse(
        &self,
        terminal: &Certificate,
        sites: &[&str],
        rng: &mut impl CryptoRngCore,
    ) -> Certificate {
        endorse_with(&self.operator, terminal, sites, self.now, rng)
    }

    /// Another wallet certificate under the same issuer.
    pub fn new_wallet(&self, rng: &mut impl CryptoRngCore) -> Identity {
        let key = SigningKey::random(rng);
        let cert = pki::issue(
            &spec(Role::Wallet, "wallet", self.now),
            key.verifying_key(),
            (&self.issuer.cert, &self.issuer.key),
            rng,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Identity { cert, key }
    }

    /// What a terminal trusts: root, issuer (wallets), operator (credentials).
    pub fn terminal_trust(&self) -> TrustStore {
        let mut t = TrustStore::new();
        t.add_root(self.root.cert.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        t.add_intermediate(self.issuer.cert.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        t.add_intermediate(self.operator.cert.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        t
    }

    /// What a wallet trusts: root, acquirer (terminals) and the operator of
    /// its pickup credentials (kiosk endorsements).
    pub fn wallet_trust(&self) -> TrustStore {
        let mut t = TrustStore::new();
        t.add_root(self.root.cert.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        t.add_intermediate(self.acquirer.cert.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        t.add_intermediate(self.operator.cert.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        t
    }

    /// What the host trusts: root and every intermediate.
    pub fn host_trust(&self) -> TrustStore {
        let mut t = self.terminal_trust();
        t.add_intermediate(self.acquirer.cert.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        t
    }

    /// The default terminal, with its kiosk endorsement.
    pub fn terminal_context(&self) -> TerminalContext {
        let mut t = self.terminal_context_for(&self.terminal);
        t.endorsement = Some(self.kiosk.clone());
        t
    }

    pub fn terminal_context_for(&self, id: &Identity) -> TerminalContext {
        TerminalContext::new(id.cert.clone(), id.key.clone(), self.terminal_trust())
    }

    pub fn wallet_context(&self) -> WalletContext {
        self.wallet_context_for(&self.wallet)
    }

    pub fn wallet_context_for(&self, id: &Identity) -> WalletContext {
        let ck = self.issuer_master_key.diversify(id.cert.serial());
        let mut w = WalletContext::new(id.cert.clone(), id.key.clone(), ck, self.wallet_trust());
        w.cvm_limit = 10_000;
        w
    }

    /// A pickup credential for `wallet` at `site`, signed by the operator.
    pub fn credential(
        &self,
        wallet: &Certificate,
        site: &str,
        slot: u16,
        parcel: &str,
        rng: &mut impl CryptoRngCore,
    ) -> PickupCredential {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let mut c = PickupCredential {
            id,
            parcel: parcel.to_owned(),
            site: site.to_owned(),
            slot,
            recipient: compress(&p256::PublicKey::from(wallet.public_key())),
            not_after: self.now + 7 * DAY,
            operator: [0; 32],
            low_value_class: None,
            signature: [0; 64],
        };
        c.sign(&self.operator.cert, &self.operator.key);
        c
    }

    /// Run one tap between the two contexts over an in-memory link.
    pub fn run_tap(
        &self,
        terminal: &mut TerminalContext,
        wallet: &mut WalletContext,
        params: TapParams,
        rng: &mut impl CryptoRngCore,
    ) -> TapRun {
        let mut link = Loopback::new(LinkLimits::EXTENDED, wallet.extended);
        link.run(terminal, wallet, params, self.now, rng)
    }
}

/// A kiosk certificate of `operator` endorsing `terminal`'s key for `sites`.
pub fn endorse_with(
    operator: &Identity,
    terminal: &Certificate,
    sites: &[&str],
    now: u64,
    rng: &mut dyn rand_core::CryptoRngCore,
) -> Certificate {
    let mut rng = RngRef(rng);
    let sites: Vec<String> = sites.iter().map(|s| (*s).to_owned()).collect();
    let spec = CertSpec {
        endorsed_sites: &sites,
        ..spec(Role::Kiosk, terminal.common_name(), now)
    };
    pki::issue(
        &spec,
        terminal.public_key(),
        (&operator.cert, &operator.key),
        &mut rng,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

struct RngRef<'a>(&'a mut dyn rand_core::CryptoRngCore);
impl rand_core::RngCore for RngRef<'_> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(dest)
    }
}
impl rand_core::CryptoRng for RngRef<'_> {}

/// One wire exchange: command APDU bytes and response APDU bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireExchange {
    pub command: Vec<u8>,
    pub response: Vec<u8>,
}

/// What happened in a loopback tap.
#[derive(Debug)]
pub struct TapRun {
    pub outcome: Option<TapOutcome>,
    pub error: Option<Error>,
    pub terminal_events: Vec<TerminalEvent>,
    pub wallet_events: Vec<WalletEvent>,
    pub wire: Vec<WireExchange>,
    pub session: TerminalSession,
}

impl TapRun {
    /// Logical round trips (command/response pairs on the wire).
    pub fn round_trips(&self) -> usize {
        self.wire.len()
    }

    /// APDU bytes in both directions.
    pub fn apdu_bytes(&self) -> usize {
        self.wire
            .iter()
            .map(|w| w.command.len() + w.response.len())
            .sum()
    }
}

/// A hook that may alter the bytes of exchange number `usize` in flight.
pub type Tamper = Box<dyn FnMut(usize, &mut Vec<u8>)>;

/// An in-memory reader with a phone in its field: terminal link, card link,
/// wallet session; records every wire exchange.
pub struct Loopback {
    pub terminal_link: TerminalLink,
    pub card_link: CardLink,
    pub wallet: WalletSession,
    pub wire: Vec<WireExchange>,
    /// Hook to tamper with command bytes in flight.
    pub tamper_command: Option<Tamper>,
    /// Hook to tamper with response bytes in flight.
    pub tamper_response: Option<Tamper>,
    /// A relay between reader and phone: every wire exchange takes this
    /// much longer (really: the exchange sleeps).
    pub relay: Duration,
}

impl core::fmt::Debug for Loopback {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Loopback")
            .field("wallet", &self.wallet)
            .field("exchanges", &self.wire.len())
            .finish_non_exhaustive()
    }
}

impl Loopback {
    pub fn new(reader: LinkLimits, card_extended: bool) -> Self {
        let limits = if card_extended {
            reader
        } else {
            LinkLimits::SHORT
        };
        Loopback {
            terminal_link: TerminalLink::new(limits),
            card_link: CardLink::new(card_extended),
            wallet: WalletSession::new(),
            wire: Vec::new(),
            tamper_command: None,
            tamper_response: None,
            relay: Duration::ZERO,
        }
    }

    /// Carry one logical command through both links.
    pub fn exchange(
        &mut self,
        wallet: &mut WalletContext,
        cmd: crate::apdu::Command,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Response, Error> {
        let (card_link, session, wire) = (&mut self.card_link, &mut self.wallet, &mut self.wire);
        let (tamper_command, tamper_response) =
            (&mut self.tamper_command, &mut self.tamper_response);
        let relay = self.relay;
        let result = self.terminal_link.exchange(cmd, |bytes| {
            if !relay.is_zero() {
                std::thread::sleep(relay);
            }
            let mut bytes = bytes.to_vec();
            if let Some(f) = tamper_command.as_mut() {
                f(wire.len(), &mut bytes);
            }
            let mut reply = match card_link.handle_command(&bytes) {
                CardInput::Reply(r) => r,
                CardInput::Command(c) => {
                    let resp = session.handle_command(wallet, &c, now, rng);
                    card_link.respond(resp, c.le)
                }
            };
            if let Some(f) = tamper_response.as_mut() {
                f(wire.len(), &mut reply);
            }
            wire.push(WireExchange {
                command: bytes,
                response: reply.clone(),
            });
            Ok::<_, core::convert::Infallible>(reply)
        });
        match result {
            Ok(r) => Ok(r),
            Err(ExchangeError::Link(e)) => Err(e.into()),
            Err(ExchangeError::Transport(never)) => match never {},
        }
    }

    /// Run a whole tap: SELECT, AUTHORIZE (and what follows) until the
    /// terminal session has nothing more to send.
    pub fn run(
        &mut self,
        terminal: &mut TerminalContext,
        wallet: &mut WalletContext,
        params: TapParams,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> TapRun {
        let mut session = TerminalSession::new(params);
        let mut outcome = None;
        let mut error = None;
        let mut terminal_events = Vec::new();
        while let Some(cmd) = session.poll_command() {
            let started = Instant::now();
            let resp = match self.exchange(wallet, cmd, now, rng) {
                Ok(r) => r,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            };
            let elapsed = started.elapsed();
            if let Err(e) = session.handle_response(terminal, resp, elapsed, now, rng) {
                error = Some(e);
                break;
            }
            while let Some(ev) = session.poll_event() {
                if let TerminalEvent::Selected {
                    extended,
                    max_command,
                } = &ev
                {
                    if !extended {
                        self.terminal_link.set_limits(LinkLimits::SHORT);
                    } else {
                        self.terminal_link.set_limits(LinkLimits {
                            extended: true,
                            max_command_data: usize::from(*max_command),
                        });
                    }
                }
                if let TerminalEvent::Approved(o) = &ev {
                    outcome = Some((**o).clone());
                }
                terminal_events.push(ev);
            }
        }
        let mut wallet_events = Vec::new();
        while let Some(ev) = self.wallet.poll_event() {
            wallet_events.push(ev);
        }
        TapRun {
            outcome,
            error,
            terminal_events,
            wallet_events,
            wire: core::mem::take(&mut self.wire),
            session,
        }
    }

    /// Deliver a receipt after an approved tap; returns whether the wallet
    /// acknowledged it.
    pub fn deliver_receipt(
        &mut self,
        run: &mut TapRun,
        terminal: &mut TerminalContext,
        wallet: &mut WalletContext,
        receipt: &Receipt,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<bool, Error> {
        run.session.send_receipt(receipt)?;
        let mut delivered = false;
        while let Some(cmd) = run.session.poll_command() {
            let started = Instant::now();
            let resp = self.exchange(wallet, cmd, now, rng)?;
            run.session
                .handle_response(terminal, resp, started.elapsed(), now, rng)?;
            while let Some(ev) = run.session.poll_event() {
                delivered |= ev == TerminalEvent::ReceiptDelivered;
                run.terminal_events.push(ev);
            }
        }
        while let Some(ev) = self.wallet.poll_event() {
            run.wallet_events.push(ev);
        }
        run.wire.append(&mut self.wire);
        Ok(delivered)
    }
}

/// Drive a terminal session as a forging wallet would: answer its SELECT
/// with `fci` and its timed exchange at once (wallet nonce `77 77 77 77`);
/// returns the AUTHORIZE it sends next.
pub fn answer_fci_and_relay(
    session: &mut TerminalSession,
    t: &mut TerminalContext,
    fci: &[u8],
    now: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<crate::apdu::Command, Error> {
    session.handle_response(t, Response::ok(fci.to_vec()), Duration::ZERO, now, rng)?;
    let relay = session.poll_command().ok_or(Error::UnexpectedMessage {
        state: "after FCI",
        got: "no timed exchange",
    })?;
    debug_assert_eq!(relay.ins, crate::messages::INS_RELAY);
    session.handle_response(t, Response::ok(vec![0x77; 4]), Duration::ZERO, now, rng)?;
    session.poll_command().ok_or(Error::UnexpectedMessage {
        state: "after the timed exchange",
        got: "no AUTHORIZE",
    })
}

/// Encode helper for docs: hex with spaces every byte.
pub fn hex_spaced(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// The twin `(r, n − s)` of a raw `r ‖ s` signature: equally valid ECDSA,
/// opposite S form (what an attacker makes to change a signed object's
/// bytes without a key). `None` if `sig` is not a signature encoding.
pub fn s_twin(sig: &[u8]) -> Option<[u8; crate::crypto::SIG_LEN]> {
    let sig = p256::ecdsa::Signature::from_slice(sig).ok()?;
    let (r, s) = sig.split_scalars();
    let twin =
        p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s.as_ref()).to_bytes()).ok()?;
    Some(twin.to_bytes().into())
}
