//! The terminal side of the tap handshake, sans-IO.
//!
//! ```text
//!  new() ──SELECT──▶ AwaitFci ──RELAY──▶ AwaitRelay ──AUTHORIZE──▶ AwaitAuthorize ──┬──▶ Approved ──CONFIRM──▶ AwaitReceiptAck ──▶ Finished
//!                                  ▲ too slow: again │          ▲ 9102: resend with cert │   (GET CERTIFICATE if the wallet sent only
//!                                  └─(up to attempts)┘          └────────────────────────┘    its certificate's reference and we lost it)
//!                                                                 9101 ──▶ Finished (ConfirmOnPhone: tap again)
//! ```
//!
//! Drive it like this: send what [`TerminalSession::poll_command`] returns,
//! feed the answer and the time the exchange took at the reader to
//! [`TerminalSession::handle_response`], drain
//! [`TerminalSession::poll_event`]; repeat until `poll_command` is `None`.
//!
//! **Relay resistance:** right after SELECT the terminal times one exchange
//! that carries a fresh nonce each way and needs no computation on the
//! phone. A round trip above [`RelayPolicy::bound`] (the link's own time
//! plus what a phone may add) is tried again up to
//! [`RelayPolicy::attempts`] times, then declined ([`Error::Relayed`]). The
//! nonces and the time measured are signed in AUTHORIZE (`D4`), and the
//! wallet refuses an AUTHORIZE whose nonces are not its session's.
//! After [`TerminalEvent::Approved`], durably queue the record, then call
//! [`TerminalSession::send_receipt`] (optional).

use std::collections::VecDeque;
use std::time::Duration;

use p256::ecdsa::SigningKey;
use rand_core::CryptoRngCore;

use crate::airtime;
use crate::apdu::{Command, Response, StatusWord};
use crate::cache::Bounded;
use crate::codec::Codec;
use crate::compact::{self, WireForm};
use crate::crypto::{self, Backend, CryptoError, Direction, EphemeralKey, KeyPair, SessionKeys};
use crate::error::{Error, Party};
use crate::messages::{
    self, cert_ref, AuthBody, AuthorizeRequest, CertOnAir, Cvm, Fci, RelayCheck, WalletBody,
    WalletResponse, AID, CERT_REF_LEN, CLA_ISO, CLA_PROPRIETARY, FLAG_EXTENDED_LENGTH,
    INS_AUTHORIZE, INS_CONFIRM, INS_GET_CERTIFICATE, INS_RELAY, INS_SELECT, RELAY_NONCE_LEN,
    VERSION_2,
};
use crate::pki::{Certificate, TrustStore};
use crate::revocation::RevocationList;
use crate::scenario::{PickupCredential, Receipt, Scenario};
use crate::verify::{verify_wallet_half_with, WalletHalf};

/// Bytes of the timed exchange's command (`80 56 00 00 04 nonce[4] 00`)
/// and response (`nonce[4] 90 00`).
pub const RELAY_EXCHANGE: (usize, usize) = (10, 6);

/// How the terminal judges the timed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayPolicy {
    /// The timed exchange's round trip on this reader with nothing but the
    /// radio in between: its air time at the link's rate plus the driver's
    /// own transport (set from the reader, [`RelayPolicy::for_link`]).
    pub link: Duration,
    /// What a phone may add (its processing and scheduling); a relay adds
    /// more. Per scenario.
    pub allowance: Duration,
    /// Timed exchanges tried before the tap is declined; a wallet answers
    /// at most [`crate::wallet::RELAY_ANSWERS`] per SELECT.
    pub attempts: u8,
}

/// Default [`RelayPolicy::allowance`]: a phone answers a no-computation
/// APDU well within this; a relay over any network adds more.
pub const DEFAULT_RELAY_ALLOWANCE: Duration = Duration::from_millis(10);
/// Default [`RelayPolicy::attempts`] (EMV's relay resistance protocol
/// allows retries too).
pub const DEFAULT_RELAY_ATTEMPTS: u8 = 3;

impl RelayPolicy {
    /// The policy for a reader on `link` whose driver adds `transport` to
    /// every exchange (a serial line, a daemon hop), with the default
    /// allowance and attempts.
    pub fn for_link(link: &airtime::Link, transport: Duration) -> Self {
        let (c, r) = RELAY_EXCHANGE;
        let air = airtime::millis(link.exchanges(&[(c, r)]), 106);
        RelayPolicy {
            link: Duration::from_secs_f64(air / 1000.0) + transport,
            allowance: DEFAULT_RELAY_ALLOWANCE,
            attempts: DEFAULT_RELAY_ATTEMPTS,
        }
    }

    /// The longest round trip accepted.
    pub fn bound(&self) -> Duration {
        self.link.saturating_add(self.allowance)
    }
}

impl Default for RelayPolicy {
    /// A PN532-class link (the slowest the drivers use), no transport.
    fn default() -> Self {
        RelayPolicy::for_link(&airtime::Link::pn532(), Duration::ZERO)
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Long-lived terminal state the driver owns across taps.
#[derive(Debug)]
pub struct TerminalContext {
    pub certificate: Certificate,
    key: KeyPair,
    backend: &'static dyn Backend,
    pub trust: TrustStore,
    pub revocations: Option<RevocationList>,
    /// A locker kiosk's endorsement: the operator's kiosk certificate for
    /// this terminal's key and its sites, sent (`CA`) in every pickup
    /// AUTHORIZE. Without it wallets refuse pickups here (`9104`).
    pub endorsement: Option<Certificate>,
    /// Ask for user presence (`D3`) on every tap, whatever the amount.
    pub require_presence: bool,
    /// How the timed exchange is judged (the driver sets the link part,
    /// the application the allowance per scenario).
    pub relay: RelayPolicy,
    own_wire: WireForm,
    endorsement_wire: WireForm,
    wallet_certs: Bounded<[u8; CERT_REF_LEN], Certificate>,
    last_atc: Bounded<[u8; 32], u32>,
}

impl TerminalContext {
    /// A context on the portable reference backend ([`crypto::RustCrypto`]).
    pub fn new(certificate: Certificate, key: SigningKey, trust: TrustStore) -> Self {
        TerminalContext {
            certificate,
            key: KeyPair::from(key),
            backend: &crypto::RustCrypto,
            trust,
            revocations: None,
            endorsement: None,
            require_presence: false,
            relay: RelayPolicy::default(),
            own_wire: WireForm::default(),
            endorsement_wire: WireForm::default(),
            wallet_certs: Bounded::new(4096),
            last_atc: Bounded::new(65536),
        }
    }

    /// A context whose signatures, verifications and key agreements go
    /// through `backend` (a terminal runs on [`crypto::fast_backend`]).
    pub fn with_backend(
        certificate: Certificate,
        key: &SigningKey,
        trust: TrustStore,
        backend: &'static dyn Backend,
    ) -> Result<Self, CryptoError> {
        let mut ctx = TerminalContext::new(certificate, key.clone(), trust);
        ctx.key = backend.key_pair(key)?;
        ctx.backend = backend;
        Ok(ctx)
    }

    /// The transcript- and record-signing key, loaded into the backend.
    pub fn signing_key(&self) -> &KeyPair {
        &self.key
    }

    /// The backend this terminal signs, verifies and agrees keys with.
    pub fn backend(&self) -> &'static dyn Backend {
        self.backend
    }

    /// Forget cached wallet certificates (a terminal that "lost" them).
    pub fn forget_wallet_certificates(&mut self) {
        self.wallet_certs.clear();
    }

    /// The last ATC seen from the wallet with this certificate hash.
    pub fn last_atc(&self, wallet: &[u8; 32]) -> Option<u32> {
        self.last_atc.get(wallet).copied()
    }

    /// Seed the last ATC seen from a wallet (after a restart, from the queue).
    pub fn note_atc(&mut self, wallet: [u8; 32], atc: u32) {
        if self.last_atc(&wallet).is_none_or(|l| atc > l) {
            self.last_atc.insert(wallet, atc);
        }
    }
}

/// What this tap is for, and how strict to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapParams {
    pub scenario: Scenario,
    /// Amounts above this (minor units) need a cardholder verification.
    pub cvm_limit: u64,
    /// Send the terminal certificate in the first AUTHORIZE (default), or
    /// only its hash (for a repeat-heavy clientele).
    pub send_certificate: bool,
}

/// The signed transcript pieces a record keeps so the host can re-verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    pub fci: Vec<u8>,
    pub auth_body: Vec<u8>,
    pub terminal_sig: [u8; 64],
    pub wallet_body: Vec<u8>,
    pub wallet_sig: [u8; 64],
}

/// An approved tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapOutcome {
    pub scenario: Scenario,
    pub wallet: Certificate,
    pub atc: u32,
    pub cvm: Cvm,
    /// The prompt hash the user confirmed (with [`Cvm::ConfirmedOnDevice`]).
    pub prompt: Option<[u8; 32]>,
    pub cryptogram: Option<[u8; 8]>,
    pub credential: Option<PickupCredential>,
    /// Terminal time sent in AUTHORIZE.
    pub time: u32,
    pub transcript: Transcript,
}

/// What the driver learns from the session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TerminalEvent {
    /// SELECT succeeded; `extended` says the wallet takes extended APDUs.
    Selected { extended: bool, max_command: u16 },
    /// The wallet wants the user to confirm on the phone; tap again.
    ConfirmOnPhone,
    /// All checks passed: queue the record, then send the receipt.
    Approved(Box<TapOutcome>),
    /// The wallet acknowledged the receipt.
    ReceiptDelivered,
}

struct Relaying {
    fci_bytes: Vec<u8>,
    /// The wallet's key share, parsed (validated, decompressed) once.
    wallet_key_share: p256::PublicKey,
    nonce: [u8; RELAY_NONCE_LEN],
    attempt: u8,
}

struct Authorizing {
    eph: EphemeralKey,
    fci_bytes: Vec<u8>,
    wallet_key_share: p256::PublicKey,
    body: AuthBody,
    body_bytes: Vec<u8>,
    th1: [u8; 32],
    signature: [u8; 64],
    cert_sent: bool,
    /// This terminal's certificate and endorsement as they go on air.
    cert_wire: Vec<u8>,
    endorsement_wire: Option<Vec<u8>>,
}

struct AwaitingCert {
    auth: Authorizing,
    keys: SessionKeys,
    resp: WalletResponse,
    wallet_ref: [u8; CERT_REF_LEN],
}

enum State {
    AwaitFci,
    AwaitRelay(Box<Relaying>),
    AwaitAuthorize(Box<Authorizing>),
    AwaitCertificate(Box<AwaitingCert>),
    Approved(SessionKeys),
    AwaitReceiptAck,
    Finished,
    Failed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitFci => "awaiting FCI",
            State::AwaitRelay(_) => "awaiting the timed exchange",
            State::AwaitAuthorize(_) => "awaiting AUTHORIZE response",
            State::AwaitCertificate(_) => "awaiting wallet certificate",
            State::Approved(_) => "approved",
            State::AwaitReceiptAck => "awaiting receipt acknowledgement",
            State::Finished => "finished",
            State::Failed => "failed",
        }
    }
}

/// One tap, terminal side.
pub struct TerminalSession {
    params: TapParams,
    state: State,
    out: Option<Command>,
    events: VecDeque<TerminalEvent>,
}

impl core::fmt::Debug for TerminalSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TerminalSession")
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

/// Expected response length of the protocol's commands: as much as allowed.
const LE_MAX: usize = 65536;

impl TerminalSession {
    /// Start a tap; the first command is SELECT.
    pub fn new(params: TapParams) -> Self {
        let select = Command::new(CLA_ISO, INS_SELECT, 0x04, 0x00, AID.to_vec(), Some(256));
        TerminalSession {
            params,
            state: State::AwaitFci,
            out: Some(select),
            events: VecDeque::new(),
        }
    }

    pub fn params(&self) -> &TapParams {
        &self.params
    }

    /// The next command to transmit.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.out.take()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<TerminalEvent> {
        self.events.pop_front()
    }

    /// Whether the session has nothing more to do.
    pub fn is_done(&self) -> bool {
        matches!(
            self.state,
            State::Finished | State::Failed | State::Approved(_)
        ) && self.out.is_none()
    }

    /// Feed the logical response to the last command and how long the
    /// exchange took, measured by the driver as close to the reader as it
    /// can (it decides the timed exchange; other steps ignore it). `now`
    /// is Unix seconds.
    pub fn handle_response(
        &mut self,
        ctx: &mut TerminalContext,
        resp: Response,
        elapsed: Duration,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), Error> {
        let state = core::mem::replace(&mut self.state, State::Failed);
        match self.step(ctx, state, resp, elapsed, now, rng) {
            Ok(next) => {
                self.state = next;
                Ok(())
            }
            Err(e) => {
                self.out = None;
                Err(e)
            }
        }
    }

    /// Send the receipt once the record is durable.
    pub fn send_receipt(&mut self, receipt: &Receipt) -> Result<(), Error> {
        let State::Approved(keys) = core::mem::replace(&mut self.state, State::Failed) else {
            return Err(Error::UnexpectedMessage {
                state: "not approved",
                got: "send_receipt",
            });
        };
        let sealed = keys.seal(
            Direction::TerminalToWallet,
            0,
            &[INS_CONFIRM],
            &messages::pad(&receipt.to_bytes(), 0),
        );
        self.out = Some(Command::new(
            CLA_PROPRIETARY,
            INS_CONFIRM,
            0,
            0,
            sealed,
            None,
        ));
        self.state = State::AwaitReceiptAck;
        Ok(())
    }

    fn step(
        &mut self,
        ctx: &mut TerminalContext,
        state: State,
        resp: Response,
        elapsed: Duration,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<State, Error> {
        match state {
            State::AwaitFci => self.on_fci(resp, rng),
            State::AwaitRelay(r) => self.on_relay(ctx, *r, resp, elapsed, now, rng),
            State::AwaitAuthorize(auth) => self.on_authorize(ctx, *auth, resp, now),
            State::AwaitCertificate(pending) => self.on_certificate(ctx, *pending, resp, now),
            State::AwaitReceiptAck => {
                if resp.sw.is_ok() {
                    self.events.push_back(TerminalEvent::ReceiptDelivered);
                }
                // Losing the receipt loses nothing: the record is queued.
                Ok(State::Finished)
            }
            other => Err(Error::UnexpectedMessage {
                state: other.name(),
                got: "response",
            }),
        }
    }

    fn on_fci(&mut self, resp: Response, rng: &mut impl CryptoRngCore) -> Result<State, Error> {
        if !resp.sw.is_ok() {
            return Err(Error::NotAWallet { sw: resp.sw });
        }
        let fci = Fci::decode(&resp.data)?;
        let wallet_key_share =
            crypto::parse_public(&fci.key_share).map_err(|_| Error::BadKeyShare)?;
        if !fci.versions.contains(&VERSION_2) {
            return Err(Error::NoCommonVersion);
        }
        if fci.scenarios & self.params.scenario.capability() == 0 {
            return Err(Error::ScenarioUnsupported {
                scenario: self.params.scenario.kind().as_str(),
            });
        }
        self.events.push_back(TerminalEvent::Selected {
            extended: fci.flags & FLAG_EXTENDED_LENGTH != 0,
            max_command: fci.max_command,
        });
        let relaying = Relaying {
            fci_bytes: resp.data,
            wallet_key_share,
            nonce: [0; RELAY_NONCE_LEN],
            attempt: 0,
        };
        Ok(self.time_exchange(relaying, rng))
    }

    /// Send the timed exchange with a fresh nonce.
    fn time_exchange(&mut self, mut r: Relaying, rng: &mut impl CryptoRngCore) -> State {
        rng.fill_bytes(&mut r.nonce);
        r.attempt += 1;
        self.out = Some(Command::new(
            CLA_PROPRIETARY,
            INS_RELAY,
            0,
            0,
            r.nonce.to_vec(),
            Some(256),
        ));
        State::AwaitRelay(Box::new(r))
    }

    fn on_relay(
        &mut self,
        ctx: &mut TerminalContext,
        r: Relaying,
        resp: Response,
        elapsed: Duration,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<State, Error> {
        if !resp.sw.is_ok() {
            return Err(Error::WalletRefused { sw: resp.sw });
        }
        let wallet_nonce: [u8; RELAY_NONCE_LEN] =
            crate::codec::fixed("wallet relay nonce", &resp.data)?;
        let bound = ctx.relay.bound();
        if elapsed > bound {
            if r.attempt < ctx.relay.attempts {
                return Ok(self.time_exchange(r, rng));
            }
            return Err(Error::Relayed {
                micros: micros(elapsed),
                bound: micros(bound),
            });
        }
        let relay = RelayCheck {
            terminal_nonce: r.nonce,
            wallet_nonce,
            micros: u16::try_from(micros(elapsed)).unwrap_or(u16::MAX),
        };
        let eph: EphemeralKey = ctx.backend.ephemeral(rng).map_err(Error::Crypto)?;
        let kiosk = match (&self.params.scenario, &ctx.endorsement) {
            (Scenario::Pickup { .. }, Some(e)) => Some(e),
            _ => None,
        };
        let body = AuthBody {
            key_share: *eph.public(),
            terminal_cert_hash: *ctx.certificate.hash(),
            cvm_required: ctx.require_presence
                || self
                    .params
                    .scenario
                    .amount()
                    .is_some_and(|a| a.minor > self.params.cvm_limit),
            scenario: self.params.scenario.clone(),
            endorsement: kiosk.map(|e| e.der().to_vec()),
            relay,
            time: u32::try_from(now).unwrap_or(u32::MAX),
        };
        let body_bytes = body.to_bytes();
        let th1 = messages::th1(&r.fci_bytes, &body_bytes);
        let signature = crypto::sign(&ctx.key, &th1);
        let auth = Authorizing {
            eph,
            fci_bytes: r.fci_bytes,
            wallet_key_share: r.wallet_key_share,
            body,
            body_bytes,
            th1,
            signature,
            cert_sent: self.params.send_certificate,
            cert_wire: ctx.own_wire.get(&ctx.certificate).to_vec(),
            endorsement_wire: kiosk.map(|e| ctx.endorsement_wire.get(e).to_vec()),
        };
        self.out = Some(authorize_command(&auth));
        Ok(State::AwaitAuthorize(Box::new(auth)))
    }

    fn on_authorize(
        &mut self,
        ctx: &mut TerminalContext,
        auth: Authorizing,
        resp: Response,
        now: u64,
    ) -> Result<State, Error> {
        match resp.sw {
            StatusWord::Ok => {}
            StatusWord::CertificateNeeded if !auth.cert_sent => {
                let auth = Authorizing {
                    cert_sent: true,
                    ..auth
                };
                self.out = Some(authorize_command(&auth));
                return Ok(State::AwaitAuthorize(Box::new(auth)));
            }
            StatusWord::ConfirmOnPhone => {
                self.events.push_back(TerminalEvent::ConfirmOnPhone);
                return Ok(State::Finished);
            }
            sw => return Err(Error::WalletRefused { sw }),
        }
        let shared = auth
            .eph
            .agree_public(&auth.wallet_key_share)
            .map_err(|_| Error::BadKeyShare)?;
        let keys = SessionKeys::derive(&shared, &auth.th1);
        let plain = keys
            .open(Direction::WalletToTerminal, 0, &[INS_AUTHORIZE], &resp.data)
            .map_err(|_| Error::BadMac)?;
        let wallet_resp = WalletResponse::decode(messages::unpad(&plain)?)?;
        let wallet_ref = match &wallet_resp.wallet {
            CertOnAir::Wire(w) => {
                let cert =
                    compact::from_wire(w, ctx.trust.cas()).map_err(Error::cert(Party::Wallet))?;
                return self.finish(ctx, auth, keys, wallet_resp, cert, false, now);
            }
            CertOnAir::Ref(r) => *r,
        };
        match ctx.wallet_certs.get(&wallet_ref).cloned() {
            Some(cert) => self.finish(ctx, auth, keys, wallet_resp, cert, true, now),
            None => {
                self.out = Some(Command::new(
                    CLA_PROPRIETARY,
                    INS_GET_CERTIFICATE,
                    0,
                    0,
                    Vec::new(),
                    Some(LE_MAX),
                ));
                Ok(State::AwaitCertificate(Box::new(AwaitingCert {
                    auth,
                    keys,
                    resp: wallet_resp,
                    wallet_ref,
                })))
            }
        }
    }

    fn on_certificate(
        &mut self,
        ctx: &mut TerminalContext,
        p: AwaitingCert,
        resp: Response,
        now: u64,
    ) -> Result<State, Error> {
        if !resp.sw.is_ok() {
            return Err(Error::WalletRefused { sw: resp.sw });
        }
        let wire = p
            .keys
            .open(
                Direction::WalletToTerminal,
                1,
                &[INS_GET_CERTIFICATE],
                &resp.data,
            )
            .map_err(|_| Error::BadMac)?;
        let cert = compact::from_wire(messages::unpad(&wire)?, ctx.trust.cas())
            .map_err(Error::cert(Party::Wallet))?;
        if cert_ref(cert.hash()) != p.wallet_ref {
            return Err(Error::CertificateMismatch {
                party: Party::Wallet,
            });
        }
        self.finish(ctx, p.auth, p.keys, p.resp, cert, false, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        ctx: &mut TerminalContext,
        auth: Authorizing,
        keys: SessionKeys,
        mut resp: WalletResponse,
        wallet: Certificate,
        wallet_known: bool,
        now: u64,
    ) -> Result<State, Error> {
        resp.body.wallet_cert_hash = *wallet.hash();
        let body_bytes = resp.body.to_bytes();
        let body: &WalletBody = &resp.body;
        let half = WalletHalf {
            th1: &auth.th1,
            terminal_sig: &auth.signature,
            body,
            body_bytes: &body_bytes,
            wallet_sig: &resp.signature,
            prompt: messages::prompt_hash(
                ctx.certificate.hash(),
                ctx.certificate.common_name(),
                &self.params.scenario,
            ),
            cvm_required: auth.body.cvm_required,
        };
        verify_wallet_half_with(
            &half,
            &wallet,
            wallet_known,
            &self.params.scenario,
            &ctx.trust,
            ctx.revocations.as_ref(),
            now,
            ctx.backend.verifier(),
        )?;
        if let Some(last) = ctx.last_atc(wallet.hash()) {
            if body.atc <= last {
                return Err(Error::AtcRegression {
                    last,
                    got: body.atc,
                });
            }
        }
        ctx.note_atc(*wallet.hash(), body.atc);
        ctx.wallet_certs
            .insert(cert_ref(wallet.hash()), wallet.clone());
        let outcome = TapOutcome {
            scenario: self.params.scenario.clone(),
            atc: body.atc,
            cvm: body.cvm,
            prompt: body.prompt,
            cryptogram: body.cryptogram,
            credential: body.credential.clone(),
            time: auth.body.time,
            wallet,
            transcript: Transcript {
                fci: auth.fci_bytes,
                auth_body: auth.body_bytes,
                terminal_sig: auth.signature,
                wallet_body: body_bytes,
                wallet_sig: resp.signature,
            },
        };
        self.events
            .push_back(TerminalEvent::Approved(Box::new(outcome)));
        Ok(State::Approved(keys))
    }
}

fn authorize_command(auth: &Authorizing) -> Command {
    let req = AuthorizeRequest {
        body: auth.body.clone(),
        terminal: if auth.cert_sent {
            CertOnAir::Wire(auth.cert_wire.clone())
        } else {
            CertOnAir::Ref(cert_ref(&auth.body.terminal_cert_hash))
        },
        endorsement: auth.endorsement_wire.clone(),
        signature: auth.signature,
    };
    let data = req.to_bytes();
    // A short APDU when it fits: a payment's answer fits a short Le; a
    // pickup's (credential and certificate) may not.
    let le = if data.len() <= 255 && !matches!(auth.body.scenario, Scenario::Pickup { .. }) {
        256
    } else {
        LE_MAX
    };
    Command::new(CLA_PROPRIETARY, INS_AUTHORIZE, VERSION_2, 0, data, Some(le))
}
