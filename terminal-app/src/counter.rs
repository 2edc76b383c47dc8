//! Taps at the counter without the daemon: one intent (`tap-terminal pay`,
//! `order`) and the locker kiosk's loop (`tap-terminal kiosk`). The daemon
//! runs intents its own way (`daemon/reader.rs`: many intents, an API);
//! both tap through [`Field`] and [`Engine::tap`].

use std::time::{Duration, Instant};

use rand_core::OsRng;
use tapstack_reader::Cancel;

use crate::field::Field;
use crate::report::Outcome;
use crate::request::{IntentRequest, Refusal};
use crate::tap::{Engine, Intent};
use crate::{unix_now, Error};

/// Where one intent is, for the person at the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Checks passed: "tap your phone".
    WaitingForPhone,
    /// A phone is in the field.
    Reading,
    /// The phone asked its user to confirm: "confirm on your phone, then
    /// tap again".
    ConfirmOnPhone,
}

/// `request` as an intent this terminal takes now (the request's own
/// checks, then the certificate and the queue's caps), or why not: no
/// phone is asked for.
pub fn intent(
    engine: &Engine,
    request: &IntentRequest,
    kiosk_site: Option<&str>,
) -> Result<Intent, Refusal> {
    let terms = engine.terms();
    let intent = request.to_intent(&terms, kiosk_site)?;
    engine
        .check_intent(&intent, unix_now())
        .map_err(|d| Refusal::decline(&terms, &d))?;
    Ok(intent)
}

/// Take one intent: wait for phones (a second tap after "confirm on your
/// phone") until approved, declined, `timeout` or `cancel`. A cancel while
/// a phone is being read does not stop the tap: its outcome is reported.
pub fn take(
    engine: &mut Engine,
    field: &mut Field,
    intent: &Intent,
    timeout: Duration,
    cancel: &Cancel,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome, Error> {
    let deadline = Instant::now() + timeout;
    progress(Progress::WaitingForPhone);
    loop {
        if cancel.is_cancelled() {
            return Ok(Outcome::Cancelled {
                message: "cancelled: no tap was taken".into(),
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Outcome::TimedOut {
                message: "timed out: no phone".into(),
            });
        }
        let result = field.with_phone(left, cancel, cancel, &mut |link| {
            progress(Progress::Reading);
            engine.tap(intent, link, unix_now(), &mut OsRng)
        })?;
        match result.as_ref().and_then(Outcome::from_tap) {
            Some(o) => return Ok(o),
            None if result.is_some() => progress(Progress::ConfirmOnPhone),
            None => {}
        }
    }
}

/// The kiosk: pickups at `site`, `taps` of them (or until `cancel`),
/// each outcome to `each` as it comes, then, for an approved pickup,
/// `open(slot, seq)` (the slot-open hook; the pickup is recorded whatever
/// it does). Returns the last outcome's exit status
/// ([`crate::report::exit::TIMED_OUT`] when no tap came); a cancel ends
/// with a `cancelled` outcome and its status, as `pay` does.
#[allow(clippy::too_many_arguments)]
pub fn kiosk(
    engine: &mut Engine,
    field: &mut Field,
    site: &str,
    taps: Option<usize>,
    timeout: Duration,
    cancel: &Cancel,
    each: &mut dyn FnMut(&Outcome),
    open: &mut dyn FnMut(u16, u64),
) -> Result<u8, Error> {
    let intent = Intent::Pickup {
        site: site.to_owned(),
    };
    let mut done = 0;
    let mut last = crate::report::exit::TIMED_OUT;
    while taps.is_none_or(|n| done < n) && !cancel.is_cancelled() {
        let result = field.with_phone(timeout, cancel, cancel, &mut |link| {
            engine.tap(&intent, link, unix_now(), &mut OsRng)
        })?;
        let Some(outcome) = result.as_ref().and_then(Outcome::from_tap) else {
            continue;
        };
        done += 1;
        last = outcome.exit_code();
        each(&outcome);
        if let Outcome::Approved(a) = &outcome {
            if let Some(slot) = a.slot {
                open(slot, a.seq);
            }
        }
    }
    if cancel.is_cancelled() {
        // Ctrl-C or SIGTERM while waiting for the next phone.
        let cancelled = Outcome::Cancelled {
            message: "cancelled: no tap was taken".into(),
        };
        each(&cancelled);
        return Ok(cancelled.exit_code());
    }
    Ok(last)
}
