//! The intents: what a POS asked for, where each one is, its events, and
//! the registry of intents and idempotency keys the API and the reader
//! share.

use super::*;

/// Why an intent was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CancelReason {
    Request,
    Shutdown,
}

/// Where an intent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// Behind another intent.
    Queued,
    WaitingForPhone,
    /// A phone is in the field and the tap runs: not cancellable.
    Reading,
    ConfirmOnPhone,
    Approved(Box<Approved>),
    Declined {
        code: String,
        message: String,
    },
    Cancelled(CancelReason),
    Expired,
}

impl State {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::WaitingForPhone => "waiting_for_phone",
            State::Reading => "reading",
            State::ConfirmOnPhone => "confirm_on_phone",
            State::Approved(_) => "approved",
            State::Declined { .. } => "declined",
            State::Cancelled(_) => "cancelled",
            State::Expired => "expired",
        }
    }

    pub(crate) fn is_final(&self) -> bool {
        matches!(
            self,
            State::Approved(_) | State::Declined { .. } | State::Cancelled(_) | State::Expired
        )
    }

    /// What a person at the counter reads.
    pub(crate) fn message(&self) -> String {
        match self {
            State::Queued => "waiting for the reader".into(),
            State::WaitingForPhone => "tap your phone".into(),
            State::Reading => "reading".into(),
            State::ConfirmOnPhone => "confirm on your phone, then tap again".into(),
            State::Approved(a) => {
                let mut line = format!("approved — queued #{}", a.seq);
                if let Some(n) = &a.order_number {
                    line.push_str(&format!(", order {n}"));
                }
                if let (Some(s), Some(p)) = (a.slot, &a.parcel) {
                    line.push_str(&format!(", slot {s} for parcel {p}"));
                }
                line
            }
            State::Declined { message, .. } => format!("declined: {message}"),
            State::Cancelled(CancelReason::Request) => "cancelled".into(),
            State::Cancelled(CancelReason::Shutdown) => {
                "cancelled: the terminal is shutting down".into()
            }
            State::Expired => "no phone in time".into(),
        }
    }
}

/// One state change, as the event stream delivers it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    /// 1, 2, … within the intent (the SSE `id`).
    pub seq: usize,
    pub state: &'static str,
    pub message: String,
    pub at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved: Option<Box<Approved>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declined: Option<DeclineView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct DeclineView {
    pub code: String,
    pub message: String,
}

/// Events kept per intent; past it only the final one is still recorded.
const MAX_EVENTS: usize = 64;

#[derive(Debug)]
struct CellInner {
    state: State,
    events: Vec<Event>,
    taps: u32,
    finished: Option<Instant>,
}

/// Why `DELETE` did not cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelRefused {
    TapInProgress,
    AlreadyFinal(&'static str),
}

/// One tap intent, shared by the API and the reader.
#[derive(Debug)]
pub(crate) struct IntentCell {
    pub id: String,
    pub intent: Intent,
    /// The request as received (echoed back; compared for idempotency).
    pub request: serde_json::Value,
    pub key: Option<String>,
    pub created_at: u64,
    pub expires_at: u64,
    pub(super) deadline: Instant,
    inner: Mutex<CellInner>,
    version: watch::Sender<usize>,
}

/// A snapshot of an intent for the API.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IntentView {
    pub id: String,
    pub kind: ScenarioKind,
    pub state: &'static str,
    pub message: String,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub created_at: u64,
    pub expires_at: u64,
    pub taps: u32,
    pub request: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved: Option<Box<Approved>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declined: Option<DeclineView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<CancelReason>,
}

pub(super) fn kind(intent: &Intent) -> ScenarioKind {
    match intent {
        Intent::Pay { .. } => ScenarioKind::Pay,
        Intent::Order { .. } => ScenarioKind::Order,
        Intent::Pickup { .. } => ScenarioKind::Pickup,
    }
}

impl IntentCell {
    pub(crate) fn new(
        intent: Intent,
        request: serde_json::Value,
        key: Option<String>,
        timeout: Duration,
    ) -> Self {
        let mut id = [0u8; 12];
        OsRng.fill_bytes(&mut id);
        let created_at = unix_now();
        let first = Event {
            seq: 1,
            state: "queued",
            message: State::Queued.message(),
            at: created_at,
            approved: None,
            declined: None,
        };
        IntentCell {
            id: format!("in_{}", hex::encode(id)),
            intent,
            request,
            key,
            created_at,
            expires_at: created_at.saturating_add(timeout.as_secs()),
            deadline: Instant::now() + timeout,
            inner: Mutex::new(CellInner {
                state: State::Queued,
                events: vec![first],
                taps: 0,
                finished: None,
            }),
            version: watch::channel(1).0,
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<usize> {
        self.version.subscribe()
    }

    pub(crate) fn view(&self) -> IntentView {
        let g = lock(&self.inner);
        IntentView {
            id: self.id.clone(),
            kind: kind(&self.intent),
            state: g.state.name(),
            message: g.state.message(),
            is_final: g.state.is_final(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            taps: g.taps,
            request: self.request.clone(),
            idempotency_key: self.key.clone(),
            approved: match &g.state {
                State::Approved(a) => Some(a.clone()),
                _ => None,
            },
            declined: match &g.state {
                State::Declined { code, message } => Some(DeclineView {
                    code: code.clone(),
                    message: message.clone(),
                }),
                _ => None,
            },
            cancel_reason: match &g.state {
                State::Cancelled(r) => Some(*r),
                _ => None,
            },
        }
    }

    pub(crate) fn is_final(&self) -> bool {
        lock(&self.inner).state.is_final()
    }

    pub(super) fn state(&self) -> State {
        lock(&self.inner).state.clone()
    }

    /// Events from number `from` (1-based) on, and whether the intent is over
    /// (then the list ends with its final event).
    pub(crate) fn events_from(&self, from: usize) -> (Vec<Event>, bool) {
        let g = lock(&self.inner);
        let list = g.events.iter().filter(|e| e.seq >= from).cloned().collect();
        (list, g.state.is_final())
    }

    /// Move to `to` if `allowed(current)`; record the event; wake watchers.
    fn transition(&self, to: State, allowed: impl FnOnce(&State) -> bool) -> bool {
        let mut g = lock(&self.inner);
        if g.state.is_final() || !allowed(&g.state) {
            return false;
        }
        if to == State::Reading {
            g.taps = g.taps.saturating_add(1);
        }
        let final_now = to.is_final();
        if final_now {
            g.finished = Some(Instant::now());
        }
        if g.events.len() < MAX_EVENTS || final_now {
            let event = Event {
                seq: g.events.last().map_or(1, |e| e.seq + 1),
                state: to.name(),
                message: to.message(),
                at: unix_now(),
                approved: match &to {
                    State::Approved(a) => Some(a.clone()),
                    _ => None,
                },
                declined: match &to {
                    State::Declined { code, message } => Some(DeclineView {
                        code: code.clone(),
                        message: message.clone(),
                    }),
                    _ => None,
                },
            };
            g.events.push(event);
        }
        g.state = to;
        let n = g.events.len();
        drop(g);
        self.version.send_replace(n);
        true
    }

    /// The reader takes it up: queued → waiting for a phone.
    pub(super) fn activate(&self) -> bool {
        self.transition(State::WaitingForPhone, |s| *s == State::Queued)
    }

    /// A phone entered the field for this intent.
    pub(super) fn begin_reading(&self) -> bool {
        self.transition(State::Reading, |s| {
            matches!(s, State::WaitingForPhone | State::ConfirmOnPhone)
        })
    }

    /// The end of a tap, from the reader.
    pub(super) fn settle(&self, to: State) -> bool {
        self.transition(to, |_| true)
    }

    pub(crate) fn cancel(&self) -> Result<(), CancelRefused> {
        if self.transition(State::Cancelled(CancelReason::Request), |s| {
            matches!(
                s,
                State::Queued | State::WaitingForPhone | State::ConfirmOnPhone
            )
        }) {
            return Ok(());
        }
        match self.state() {
            State::Reading => Err(CancelRefused::TapInProgress),
            State::Cancelled(_) => Ok(()),
            s => Err(CancelRefused::AlreadyFinal(s.name())),
        }
    }

    /// Past its deadline and not being read: expired.
    pub(super) fn expire_if_due(&self, now: Instant) -> bool {
        now >= self.deadline && self.transition(State::Expired, |s| *s != State::Reading)
    }

    pub(super) fn finished_at(&self) -> Option<Instant> {
        lock(&self.inner).finished
    }
}

/// Why an intent could not be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CreateRefused {
    /// Same idempotency key, another request.
    KeyConflict(String),
    TooMany(usize),
    ShuttingDown,
}

/// Every intent the daemon remembers, and the idempotency keys.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(super) intents: HashMap<String, Arc<IntentCell>>,
    pub(super) keys: HashMap<String, String>,
}
