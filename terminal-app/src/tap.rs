//! One tap, end to end: risk checks, the protocol handshake over a reader
//! link, the durable queue, the receipt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::CryptoRngCore;
use serde::Serialize;
use tapstack_protocol::airtime;
use tapstack_protocol::apdu::{Command, ExchangeError, LinkLimits, Response, TerminalLink};
use tapstack_protocol::codec::Codec;
use tapstack_protocol::error::Error as ProtocolError;
use tapstack_protocol::messages::Cvm;
use tapstack_protocol::record::TransactionRecord;
use tapstack_protocol::scenario::{
    amount_fields, record_check, Amount, Cart, Currency, Receipt, Scenario, ScenarioKind,
};
use tapstack_protocol::terminal::{
    RelayPolicy, TapOutcome, TapParams, TerminalContext, TerminalEvent, TerminalSession,
};
use tapstack_reader::{ReaderError, Session};

use crate::queue::{IntentKey, QueueStore, RecordFacts};
use crate::risk::{self, RiskDecline, RiskLimits, RiskState};
use crate::Error;

/// What a person or a point-of-sale asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    Pay { amount: Amount },
    Order { cart: Cart },
    Pickup { site: String },
}

impl Intent {
    pub fn scenario(&self) -> Result<Scenario, Decline> {
        match self {
            Intent::Pay { amount } => Ok(Scenario::Pay { amount: *amount }),
            Intent::Order { cart } => Scenario::order(cart).map_err(|e| Decline::BadIntent {
                detail: e.to_string(),
            }),
            Intent::Pickup { site } => Ok(Scenario::Pickup { site: site.clone() }),
        }
    }
}

impl From<ProtocolError> for Decline {
    /// The one place a protocol failure becomes a decline with a stable code.
    fn from(e: ProtocolError) -> Decline {
        match e {
            ProtocolError::Relayed { micros, bound } => Decline::Relayed {
                micros,
                bound_micros: bound,
            },
            ProtocolError::WalletRefused { sw } => Decline::PhoneRefused {
                sw: sw.to_string(),
                meaning: sw.meaning().to_owned(),
            },
            ProtocolError::NotAWallet { sw } => Decline::NotAWallet { sw: sw.to_string() },
            ProtocolError::Certificate { party, source } => Decline::CertificateRejected {
                party: party.to_string(),
                reason: source.to_string(),
            },
            ProtocolError::BadSignature { party } | ProtocolError::HighSSignature { party } => {
                Decline::BadSignature {
                    party: party.to_string(),
                }
            }
            e @ (ProtocolError::CvmRequired | ProtocolError::PromptMismatch) => {
                Decline::PresenceMissing {
                    detail: e.to_string(),
                }
            }
            ProtocolError::Credential(problem) => Decline::CredentialRejected {
                problem: problem.to_string(),
            },
            ProtocolError::AtcRegression { last, got } => Decline::AtcReplay { last, got },
            e => Decline::Protocol {
                detail: e.to_string(),
            },
        }
    }
}

/// Why a tap did not go through. `code()` is stable (API, logs, docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Decline {
    Risk {
        rule: RiskDecline,
    },
    WrongCurrency {
        expected: String,
        got: String,
    },
    /// A payment of nothing (`pay 0`, a cart whose total is zero).
    ZeroAmount,
    /// The terminal's own certificate has expired: it cannot sign records
    /// the host will accept.
    TerminalCertificateExpired {
        not_after: u64,
    },
    /// The terminal's own certificate is not valid yet (a clock behind, or
    /// a certificate issued for later).
    TerminalCertificateNotYetValid {
        not_before: u64,
    },
    BadIntent {
        detail: String,
    },
    /// The phone answered with a status word instead: `sw` in hex and what
    /// it means in plain words (`9104`: "this phone does not trust this
    /// terminal", `9103`: "declined on the phone", …).
    PhoneRefused {
        sw: String,
        meaning: String,
    },
    /// The phone holds no tapstack wallet (SELECT answered `sw`).
    NotAWallet {
        sw: String,
    },
    /// A certificate of `party` (wallet, terminal, operator, kiosk) was
    /// refused: expired, not yet valid, revoked, of an unknown issuer …
    CertificateRejected {
        party: String,
        reason: String,
    },
    /// A signature of `party` did not verify: a forged or damaged message.
    BadSignature {
        party: String,
    },
    /// The tap needed the user's presence on the phone and the phone
    /// verified no one, or confirmed another prompt than this tap's.
    PresenceMissing {
        detail: String,
    },
    /// The pickup credential the phone released does not hold here.
    CredentialRejected {
        problem: String,
    },
    /// Any other protocol failure (a malformed or unauthenticated message,
    /// a step out of order); `detail` says which.
    Protocol {
        detail: String,
    },
    /// The phone answered the timed exchange too slowly, on every try: a
    /// relay between this reader and a phone elsewhere, or a phone too
    /// slow for `[relay]`'s allowance.
    Relayed {
        micros: u32,
        bound_micros: u32,
    },
    /// The reader lost the phone or it answered late or garbage.
    Transport {
        detail: String,
    },
    AtcReplay {
        last: u32,
        got: u32,
    },
    CredentialUsed,
    /// The queue could not store the record: nothing was approved.
    Storage {
        detail: String,
    },
    /// The queue found a record missing or damaged: no approvals until it
    /// is repaired (`tap-terminal queue verify`).
    QueueDamaged {
        detail: String,
    },
    /// A queue that has never synced must learn the host's head first.
    SyncRequired,
    /// The revocation list is past `next_update + grace`: it no longer
    /// says which phones are revoked, so nothing is approved.
    RevocationsStale {
        number: u64,
        next_update: u64,
        grace: u64,
    },
}

impl Decline {
    pub fn code(&self) -> &'static str {
        match self {
            Decline::Risk { rule } => match rule {
                RiskDecline::FloorLimit => "floor_limit",
                RiskDecline::WalletAmountLimit => "wallet_amount_limit",
                RiskDecline::WalletCountLimit => "wallet_count_limit",
                RiskDecline::QueueAmountCap => "queue_amount_cap",
                RiskDecline::QueueCountCap => "queue_count_cap",
                RiskDecline::QueueAgeCap => "queue_age_cap",
            },
            Decline::WrongCurrency { .. } => "wrong_currency",
            Decline::ZeroAmount => "bad_amount",
            Decline::TerminalCertificateExpired { .. } => "terminal_certificate_expired",
            Decline::TerminalCertificateNotYetValid { .. } => "terminal_certificate_not_yet_valid",
            Decline::BadIntent { .. } => "bad_intent",
            Decline::PhoneRefused { .. } => "phone_refused",
            Decline::NotAWallet { .. } => "not_a_wallet",
            Decline::CertificateRejected { .. } => "certificate_rejected",
            Decline::BadSignature { .. } => "bad_signature",
            Decline::PresenceMissing { .. } => "presence_missing",
            Decline::CredentialRejected { .. } => "credential_rejected",
            Decline::Protocol { .. } => "protocol",
            Decline::Relayed { .. } => "relayed",
            Decline::Transport { .. } => "transport",
            Decline::AtcReplay { .. } => "atc_replay",
            Decline::CredentialUsed => "credential_used",
            Decline::Storage { .. } => "storage",
            Decline::QueueDamaged { .. } => "queue_damaged",
            Decline::SyncRequired => "sync_required",
            Decline::RevocationsStale { .. } => "revocations_stale",
        }
    }
}

impl core::fmt::Display for Decline {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Decline::Risk { rule } => f.write_str(rule.message()),
            Decline::WrongCurrency { expected, got } => {
                write!(f, "this terminal takes {expected} only, not {got}")
            }
            Decline::ZeroAmount => f.write_str("the amount must be above zero"),
            Decline::TerminalCertificateExpired { not_after } => write!(
                f,
                "terminal certificate expired at {}, renew it with `tap-certs terminal` \
                 and point terminal.certificate and terminal.key at the new files",
                crate::utc(*not_after)
            ),
            Decline::TerminalCertificateNotYetValid { not_before } => write!(
                f,
                "terminal certificate not valid before {}: check this machine's clock \
                 (now {})",
                crate::utc(*not_before),
                crate::utc(crate::unix_now())
            ),
            Decline::BadIntent { detail } => write!(f, "invalid request: {detail}"),
            Decline::PhoneRefused { sw, meaning } => {
                write!(f, "the phone refused: {meaning} ({sw})")
            }
            Decline::NotAWallet { sw } => {
                write!(f, "no tapstack wallet on this phone (SELECT answered {sw})")
            }
            Decline::CertificateRejected { party, reason } => {
                write!(f, "{party} certificate rejected: {reason}")
            }
            Decline::BadSignature { party } => write!(
                f,
                "the {party}'s signature does not verify (a forged or damaged message)"
            ),
            Decline::PresenceMissing { detail } => f.write_str(detail),
            Decline::CredentialRejected { problem } => {
                write!(f, "the pickup credential is {problem}")
            }
            Decline::Protocol { detail } => f.write_str(detail),
            Decline::Relayed {
                micros,
                bound_micros,
            } => write!(
                f,
                "the phone answered the timed exchange in {:.1} ms, above the {:.1} ms \
                 allowed here: a relayed tap, or a phone slower than [relay] allows",
                f64::from(*micros) / 1000.0,
                f64::from(*bound_micros) / 1000.0
            ),
            Decline::Transport { detail } => f.write_str(detail),
            Decline::AtcReplay { last, got } => write!(
                f,
                "replayed or cloned phone (counter {got}, last seen {last})"
            ),
            Decline::CredentialUsed => f.write_str("this parcel was already collected here"),
            Decline::Storage { detail } => write!(f, "could not store the transaction: {detail}"),
            Decline::QueueDamaged { detail } => write!(f, "the transaction queue is damaged: {detail}"),
            Decline::SyncRequired => f.write_str(
                "this queue has never synced with the host: connect and run `tap-terminal upload` (or let `serve` sync) first",
            ),
            Decline::RevocationsStale {
                number,
                next_update,
                grace,
            } => write!(
                f,
                "revocation list {number} is out of date (next update was due {}, grace {} h): \
                 sync with the host (`tap-terminal upload`) or install a current list",
                crate::utc(*next_update),
                grace / 3600
            ),
        }
    }
}

/// What this terminal takes: the checks every intent passes before a phone
/// is asked for. The CLI (`pay`, `order`, `kiosk`), the local API (when an
/// intent is created) and [`Engine::tap`] (before the handshake) all run
/// [`Terms::check`], so they refuse the same intents with the same codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub currency: Currency,
    /// Largest amount of one offline tap (minor units).
    pub floor_limit: u64,
    /// Validity of the terminal's own certificate (Unix seconds, inclusive).
    pub not_before: u64,
    pub not_after: u64,
}

impl Terms {
    /// The terminal's own certificate at `now`.
    pub fn check_certificate(&self, now: u64) -> Result<(), Decline> {
        if now < self.not_before {
            return Err(Decline::TerminalCertificateNotYetValid {
                not_before: self.not_before,
            });
        }
        if now > self.not_after {
            return Err(Decline::TerminalCertificateExpired {
                not_after: self.not_after,
            });
        }
        Ok(())
    }

    pub fn check_currency(&self, currency: Currency) -> Result<(), Decline> {
        if currency == self.currency {
            Ok(())
        } else {
            Err(Decline::WrongCurrency {
                expected: self.currency.to_string(),
                got: currency.to_string(),
            })
        }
    }

    /// `d`'s message, with the limit for `floor_limit`.
    pub fn explain(&self, d: &Decline) -> String {
        match d {
            Decline::Risk {
                rule: RiskDecline::FloorLimit,
            } => {
                let limit = Amount {
                    minor: self.floor_limit,
                    currency: self.currency,
                };
                format!("{d} (largest offline tap: {limit})")
            }
            _ => d.to_string(),
        }
    }

    /// Everything about `intent` that needs no phone and no queue: the
    /// certificate, a well-formed cart, the currency, an amount above zero
    /// and within the floor limit. Returns the intent's scenario.
    pub fn check(&self, intent: &Intent, now: u64) -> Result<Scenario, Decline> {
        self.check_certificate(now)?;
        self.check_request(intent)
    }

    /// [`Terms::check`] without the certificate: what depends on the
    /// request alone (the same answer whenever it is asked).
    pub fn check_request(&self, intent: &Intent) -> Result<Scenario, Decline> {
        let scenario = intent.scenario()?;
        if let Some(a) = scenario.amount() {
            self.check_currency(a.currency)?;
            if a.minor == 0 {
                return Err(Decline::ZeroAmount);
            }
            if a.minor > self.floor_limit {
                return Err(Decline::Risk {
                    rule: RiskDecline::FloorLimit,
                });
            }
        }
        Ok(scenario)
    }
}

/// The checks before a phone is asked for, given what the queue holds:
/// [`Terms::check`], then the queue's caps ([`risk::before_tap`]). The CLI
/// (through [`Engine::check_intent`]) and the API (for a new intent) run this.
pub fn check_intent(
    terms: &Terms,
    limits: &RiskLimits,
    queued: &RiskState,
    intent: &Intent,
    now: u64,
) -> Result<Scenario, Decline> {
    let scenario = terms.check(intent, now)?;
    risk::before_tap(limits, queued, &scenario, now).map_err(|rule| Decline::Risk { rule })?;
    Ok(scenario)
}

/// An approved, durably queued tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Approved {
    pub seq: u64,
    #[serde(with = "hex_bytes")]
    pub record_id: [u8; 32],
    pub kind: ScenarioKind,
    /// `amount` (minor units) and `currency`; `null` for pickups.
    #[serde(flatten, with = "amount_fields")]
    pub amount: Option<Amount>,
    pub atc: u32,
    pub cvm: &'static str,
    #[serde(with = "hex_bytes")]
    pub wallet: [u8; 32],
    pub order_number: Option<String>,
    pub slot: Option<u16>,
    pub parcel: Option<String>,
    pub receipt_delivered: bool,
}

impl Approved {
    #[allow(clippy::too_many_arguments)]
    fn new(
        scenario: &Scenario,
        seq: u64,
        record_id: [u8; 32],
        atc: u32,
        cvm: Cvm,
        wallet: [u8; 32],
        order_number: Option<String>,
        credential: Option<&tapstack_protocol::scenario::PickupCredential>,
    ) -> Approved {
        Approved {
            seq,
            record_id,
            kind: scenario.kind(),
            amount: scenario.amount(),
            atc,
            cvm: cvm_name(cvm),
            wallet,
            order_number,
            slot: credential.map(|c| c.slot),
            parcel: credential.map(|c| c.parcel.clone()),
            receipt_delivered: false,
        }
    }

    /// The approval a stored record stands for (the receipt's delivery is
    /// not recorded: `receipt_delivered` is false).
    pub fn from_record(bytes: &[u8]) -> Result<Approved, Error> {
        let corrupt = |e: tapstack_protocol::codec::DecodeError| Error::Corrupt {
            what: "record",
            detail: e.to_string(),
        };
        let r = TransactionRecord::decode(bytes).map_err(corrupt)?;
        let auth = r.auth_body().map_err(corrupt)?;
        let body = r.wallet_body().map_err(corrupt)?;
        Ok(Approved::new(
            &auth.scenario,
            r.seq,
            tapstack_protocol::crypto::sha256(&[bytes]),
            body.atc,
            body.cvm,
            body.wallet_cert_hash,
            r.order_number,
            body.credential.as_ref(),
        ))
    }
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
}

/// The result of one tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TapResult {
    Approved(Approved),
    /// The phone wants its user to confirm; keep the intent and tap again.
    ConfirmOnPhone,
    Declined(Decline),
}

fn cvm_name(c: Cvm) -> &'static str {
    match c {
        Cvm::None => "none",
        Cvm::Armed => "biometric",
        Cvm::ConfirmedOnDevice => "confirmed_on_phone",
    }
}

/// The terminal's tap engine: protocol context, queue, risk state.
pub struct Engine {
    pub ctx: TerminalContext,
    pub queue: Arc<dyn QueueStore>,
    pub risk: RiskState,
    pub limits: RiskLimits,
    pub currency: tapstack_protocol::scenario::Currency,
    pub order_prefix: String,
    pub send_certificate: bool,
    /// A host is configured: a queue must have learnt the host's head
    /// before it approves (a fresh queue under a known certificate would
    /// reuse the host's sequence numbers).
    pub require_host_check: bool,
    /// `[trust] revocation_grace_secs`.
    pub revocation_grace: u64,
    /// `[relay]`: the timed exchange's allowance per scenario.
    pub relay: crate::config::RelaySection,
}

/// The revocation list as `tap-terminal queue` and `/v1/health` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevocationState {
    pub number: u64,
    pub next_update: u64,
    pub grace_secs: u64,
    /// `current`; `overdue` (past next_update: refreshes are failing, taps
    /// are still approved until next_update + grace); `expired` (past
    /// next_update + grace: nothing is approved).
    pub status: &'static str,
    /// The last refresh from the host failed with this (daemon only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_error: Option<String>,
}

impl RevocationState {
    /// The state of `list` at `now`.
    pub fn of(list: &tapstack_protocol::revocation::RevocationList, grace: u64, now: u64) -> Self {
        let status = if list.check_fresh(now, grace).is_err() {
            "expired"
        } else if now > list.next_update {
            "overdue"
        } else {
            "current"
        };
        RevocationState {
            number: list.number,
            next_update: list.next_update,
            grace_secs: grace,
            status,
            refresh_error: None,
        }
    }

    /// Whether it is a problem for `/v1/health`.
    pub fn is_problem(&self) -> bool {
        self.status != "current" || self.refresh_error.is_some()
    }
}

impl core::fmt::Debug for Engine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Engine")
            .field("risk", &self.risk)
            .finish_non_exhaustive()
    }
}

/// Rebuild the risk state from the records waiting for upload.
pub fn risk_state(queue: &dyn QueueStore) -> Result<RiskState, Error> {
    let mut state = RiskState::default();
    for s in queue.pending(usize::MAX)? {
        let r = s.record()?;
        let corrupt = |e: tapstack_protocol::codec::DecodeError| Error::Corrupt {
            what: "record",
            detail: e.to_string(),
        };
        let auth = r.auth_body().map_err(corrupt)?;
        let body = r.wallet_body().map_err(corrupt)?;
        let amount = auth.scenario.amount().map(|a| a.minor);
        state.add(
            amount.map(|_| body.wallet_cert_hash),
            amount.unwrap_or(0),
            r.recorded_at,
        );
    }
    Ok(state)
}

enum Step {
    Done(Box<(TapOutcome, TerminalSession, TerminalLink)>),
    Confirm,
    Failed(Decline),
}

/// One logical command over the reader session, and the time its wire
/// APDUs took in the driver (the timed exchange is one wire APDU: this is its
/// round trip at the reader). The one place a reader failure becomes a
/// decline.
fn exchange(
    tl: &mut TerminalLink,
    session: &mut dyn Session,
    cmd: Command,
) -> Result<(Response, Duration), Decline> {
    let mut spent = Duration::ZERO;
    tl.exchange(cmd, |wire| {
        let sent = Instant::now();
        let r = session.transmit(wire);
        spent += sent.elapsed();
        r
    })
    .map(|r| (r, spent))
    .map_err(|e| Decline::Transport {
        detail: match e {
            ExchangeError::Transport(ReaderError::Removed) => "the phone left the field".into(),
            ExchangeError::Transport(ReaderError::Timeout) => {
                "the phone did not answer in time".into()
            }
            ExchangeError::Transport(e) => format!("reader: {e}"),
            ExchangeError::Link(e) => format!("bad response from the phone: {e}"),
        },
    })
}

impl Engine {
    fn handshake(
        &mut self,
        params: TapParams,
        session: &mut dyn Session,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Step {
        let reader_limits = session.link_limits();
        // The relay bound: this reader's own round trip plus the scenario's
        // allowance.
        self.ctx.relay = RelayPolicy {
            allowance: self.relay.allowance(params.scenario.kind()),
            attempts: self.relay.attempts,
            ..RelayPolicy::for_link(&airtime::Link::pn532(), session.transport())
        };
        let mut tl = TerminalLink::new(if reader_limits.extended {
            reader_limits
        } else {
            LinkLimits::SHORT
        });
        let mut tap = TerminalSession::new(params);
        let mut approved = None;
        while let Some(cmd) = tap.poll_command() {
            let (resp, spent) = match exchange(&mut tl, session, cmd) {
                Ok(r) => r,
                Err(d) => return Step::Failed(d),
            };
            if let Err(e) = tap.handle_response(&mut self.ctx, resp, spent, now, rng) {
                return Step::Failed(Decline::from(e));
            }
            while let Some(ev) = tap.poll_event() {
                match ev {
                    TerminalEvent::Selected {
                        extended,
                        max_command,
                    } => {
                        let limits = if extended && reader_limits.extended {
                            LinkLimits {
                                extended: true,
                                max_command_data: usize::from(max_command)
                                    .min(reader_limits.max_command_data),
                            }
                        } else {
                            LinkLimits::SHORT
                        };
                        tl.set_limits(limits);
                    }
                    TerminalEvent::ConfirmOnPhone => return Step::Confirm,
                    TerminalEvent::Approved(o) => approved = Some(*o),
                    _ => {}
                }
            }
            if let Some(o) = approved.take() {
                return Step::Done(Box::new((o, tap, tl)));
            }
        }
        Step::Failed(Decline::Protocol {
            detail: "the phone ended the exchange".into(),
        })
    }

    /// Can this terminal approve a tap now? Checked before a phone is asked
    /// for, and again inside every tap.
    pub fn ready(&self) -> Result<(), Decline> {
        match self.queue.ready() {
            Ok(()) => {}
            Err(Error::Damaged { detail, .. }) => return Err(Decline::QueueDamaged { detail }),
            Err(e) => {
                return Err(Decline::Storage {
                    detail: e.to_string(),
                })
            }
        }
        if self.require_host_check && !self.queue.integrity().host_checked {
            return Err(Decline::SyncRequired);
        }
        Ok(())
    }

    /// The revocation list in force may still be relied on at `now`
    /// (`next_update + revocation_grace`); no list configured passes.
    pub fn check_revocations(&self, now: u64) -> Result<(), Decline> {
        match &self.ctx.revocations {
            Some(list) if list.check_fresh(now, self.revocation_grace).is_err() => {
                Err(Decline::RevocationsStale {
                    number: list.number,
                    next_update: list.next_update,
                    grace: self.revocation_grace,
                })
            }
            _ => Ok(()),
        }
    }

    /// The revocation list's state at `now`, if one is configured.
    pub fn revocation_state(&self, now: u64) -> Option<RevocationState> {
        self.ctx
            .revocations
            .as_ref()
            .map(|l| RevocationState::of(l, self.revocation_grace, now))
    }

    /// What this terminal takes (currency, floor limit, its certificate's
    /// validity).
    pub fn terms(&self) -> Terms {
        Terms {
            currency: self.currency,
            floor_limit: self.limits.floor_limit,
            not_before: self.ctx.certificate.not_before(),
            not_after: self.ctx.certificate.not_after(),
        }
    }

    /// The checks before a phone is asked for: [`Terms::check`], then the
    /// queue's caps ([`risk::before_tap`]). The CLI runs this before it
    /// opens the reader; [`Engine::tap`] runs it again before the handshake.
    pub fn check_intent(&self, intent: &Intent, now: u64) -> Result<Scenario, Decline> {
        self.ready()?;
        let scenario = check_intent(&self.terms(), &self.limits, &self.risk, intent, now)?;
        self.check_revocations(now)?;
        Ok(scenario)
    }

    /// Run one tap of `intent` with the phone in `session` (a reader's).
    pub fn tap(
        &mut self,
        intent: &Intent,
        session: &mut dyn Session,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> TapResult {
        self.tap_keyed(intent, None, session, now, rng)
    }

    /// [`Engine::tap`] for an intent with an idempotency key: the key and
    /// its outcome are stored with the record.
    pub fn tap_keyed(
        &mut self,
        intent: &Intent,
        key: Option<IntentKey>,
        session: &mut dyn Session,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> TapResult {
        match self.tap_inner(intent, key, session, now, rng) {
            Ok(r) => r,
            Err(d) => TapResult::Declined(d),
        }
    }

    fn tap_inner(
        &mut self,
        intent: &Intent,
        key: Option<IntentKey>,
        session: &mut dyn Session,
        now: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<TapResult, Decline> {
        let scenario = self.check_intent(intent, now)?;
        let params = TapParams {
            scenario: scenario.clone(),
            cvm_limit: self.limits.cvm_limit,
            send_certificate: self.send_certificate,
        };
        let (outcome, mut tap, mut tl) = match self.handshake(params, session, now, rng) {
            Step::Done(done) => *done,
            Step::Confirm => return Ok(TapResult::ConfirmOnPhone),
            Step::Failed(d) => return Err(d),
        };
        let wallet = *outcome.wallet.hash();
        let amount = scenario.amount().map_or(0, |a| a.minor);
        let payment = scenario.amount().is_some();
        if payment {
            risk::after_tap(&self.limits, &self.risk, &wallet, amount)
                .map_err(|rule| Decline::Risk { rule })?;
        }
        let storage = |e: Error| Decline::Storage {
            detail: e.to_string(),
        };
        if let Some(last) = self.queue.last_atc(&wallet).map_err(storage)? {
            if outcome.atc <= last {
                return Err(Decline::AtcReplay {
                    last,
                    got: outcome.atc,
                });
            }
        }
        if let Some(c) = &outcome.credential {
            if self.queue.credential_used(&c.id).map_err(storage)? {
                return Err(Decline::CredentialUsed);
            }
        }
        let cart = match intent {
            Intent::Order { cart } => Some(cart.clone()),
            _ => None,
        };
        let facts = RecordFacts {
            wallet,
            atc: outcome.atc,
            credential: outcome.credential.as_ref().map(|c| c.id),
            intent: key,
        };
        let prefix = self.order_prefix.clone();
        let is_order = cart.is_some();
        let (cert, key) = (self.ctx.certificate.clone(), self.ctx.signing_key());
        let stored = self
            .queue
            .append(facts, &mut |seq, prev| {
                let number = is_order.then(|| format!("{prefix}{seq}"));
                TransactionRecord::new(&outcome, &cert, &key, seq, prev, now, cart.clone(), number)
            })
            .map_err(storage)?;
        // Durable: from here on the tap is approved, whatever happens next.
        self.risk.add(payment.then_some(wallet), amount, now);
        let order_number = is_order.then(|| format!("{}{}", self.order_prefix, stored.seq));
        let slot = outcome.credential.as_ref().map(|c| c.slot);
        let receipt = Receipt {
            record_check: record_check(&stored.hash),
            seq: stored.seq,
            order_number: order_number.clone(),
            cart,
            slot,
        };
        let mut receipt_delivered = false;
        if tap.send_receipt(&receipt).is_ok() {
            while let Some(cmd) = tap.poll_command() {
                let Ok((resp, spent)) = exchange(&mut tl, session, cmd) else {
                    break;
                };
                if tap
                    .handle_response(&mut self.ctx, resp, spent, now, rng)
                    .is_err()
                {
                    break;
                }
                while let Some(ev) = tap.poll_event() {
                    receipt_delivered |= ev == TerminalEvent::ReceiptDelivered;
                }
            }
        }
        let mut approved = Approved::new(
            &scenario,
            stored.seq,
            stored.hash,
            outcome.atc,
            outcome.cvm,
            wallet,
            order_number,
            outcome.credential.as_ref(),
        );
        approved.receipt_delivered = receipt_delivered;
        Ok(TapResult::Approved(approved))
    }
}
