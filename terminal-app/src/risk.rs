//! Offline risk rules.
//!
//! Before a tap (the wallet is not known yet): the floor limit per
//! transaction and the terminal's caps on what is queued (amount, count,
//! age of the oldest record) — past any of them the terminal refuses offline
//! approval until it has synced. After the wallet answered: its cumulative
//! offline amount and count since the last sync. Certificate validity, the
//! revocation list, ATC replay/regression and CVM are checked by the
//! protocol state machine itself.
//!
//! Every limit is inclusive: a tap that lands exactly on a limit passes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tapstack_protocol::scenario::Scenario;

/// The configurable limits (amounts in minor units of the terminal's
/// currency). A `[risk]` section may set only some: the rest keep their
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskLimits {
    /// Largest amount of one offline tap.
    pub floor_limit: u64,
    /// Amounts above this need a cardholder verification on the phone.
    pub cvm_limit: u64,
    /// Per wallet, since the last sync: total amount and number of taps.
    pub wallet_max_amount: u64,
    pub wallet_max_count: u32,
    /// The whole queue: total amount, number of records, age of the oldest.
    pub queue_max_amount: u64,
    pub queue_max_count: u32,
    pub queue_max_age_secs: u64,
}

impl Default for RiskLimits {
    fn default() -> Self {
        RiskLimits {
            floor_limit: 100_000,
            cvm_limit: 30_000,
            wallet_max_amount: 200_000,
            wallet_max_count: 10,
            queue_max_amount: 10_000_000,
            queue_max_count: 5_000,
            queue_max_age_secs: 3 * 86_400,
        }
    }
}

/// Why a tap was refused by a risk rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskDecline {
    FloorLimit,
    WalletAmountLimit,
    WalletCountLimit,
    QueueAmountCap,
    QueueCountCap,
    QueueAgeCap,
}

impl RiskDecline {
    pub fn message(self) -> &'static str {
        match self {
            RiskDecline::FloorLimit => "amount above the offline floor limit",
            RiskDecline::WalletAmountLimit => {
                "this phone's offline spending since the last sync would pass its limit"
            }
            RiskDecline::WalletCountLimit => {
                "this phone has made too many offline payments since the last sync"
            }
            RiskDecline::QueueAmountCap => "too much money waiting for upload: sync first",
            RiskDecline::QueueCountCap => "too many transactions waiting for upload: sync first",
            RiskDecline::QueueAgeCap => "the oldest queued transaction is too old: sync first",
        }
    }
}

/// What the queue currently holds, for the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RiskState {
    pub queued_amount: u64,
    pub queued_count: u32,
    pub oldest: Option<u64>,
    wallets: HashMap<[u8; 32], (u64, u32)>,
}

impl RiskState {
    /// Account a queued tap; `wallet` for payments (pickups count towards
    /// the queue's caps, not towards a wallet's spending).
    pub fn add(&mut self, wallet: Option<[u8; 32]>, amount: u64, time: u64) {
        self.queued_amount = self.queued_amount.saturating_add(amount);
        self.queued_count = self.queued_count.saturating_add(1);
        self.oldest = Some(self.oldest.map_or(time, |o| o.min(time)));
        let Some(wallet) = wallet else { return };
        let w = self.wallets.entry(wallet).or_default();
        w.0 = w.0.saturating_add(amount);
        w.1 = w.1.saturating_add(1);
    }

    /// Offline amount and count of one wallet since the last sync.
    pub fn wallet(&self, wallet: &[u8; 32]) -> (u64, u32) {
        self.wallets.get(wallet).copied().unwrap_or_default()
    }
}

/// Checks that need no wallet: run before the tap.
pub fn before_tap(
    limits: &RiskLimits,
    state: &RiskState,
    scenario: &Scenario,
    now: u64,
) -> Result<(), RiskDecline> {
    let amount = scenario.amount().map_or(0, |a| a.minor);
    if amount > limits.floor_limit {
        return Err(RiskDecline::FloorLimit);
    }
    if state.queued_count >= limits.queue_max_count {
        return Err(RiskDecline::QueueCountCap);
    }
    if state.queued_amount.saturating_add(amount) > limits.queue_max_amount {
        return Err(RiskDecline::QueueAmountCap);
    }
    if state
        .oldest
        .is_some_and(|o| now.saturating_sub(o) > limits.queue_max_age_secs)
    {
        return Err(RiskDecline::QueueAgeCap);
    }
    Ok(())
}

/// Checks on the wallet that answered: run before queuing the record.
pub fn after_tap(
    limits: &RiskLimits,
    state: &RiskState,
    wallet: &[u8; 32],
    amount: u64,
) -> Result<(), RiskDecline> {
    let (spent, count) = state.wallet(wallet);
    if count >= limits.wallet_max_count {
        return Err(RiskDecline::WalletCountLimit);
    }
    if spent.saturating_add(amount) > limits.wallet_max_amount {
        return Err(RiskDecline::WalletAmountLimit);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapstack_protocol::scenario::{Amount, Currency};

    fn pay(minor: u64) -> Scenario {
        Scenario::Pay {
            amount: Amount {
                minor,
                currency: Currency::new("CNY").unwrap(),
            },
        }
    }

    fn limits() -> RiskLimits {
        RiskLimits {
            floor_limit: 1000,
            cvm_limit: 500,
            wallet_max_amount: 3000,
            wallet_max_count: 3,
            queue_max_amount: 5000,
            queue_max_count: 5,
            queue_max_age_secs: 100,
        }
    }

    #[test]
    fn floor_limit_below_at_above() {
        let s = RiskState::default();
        assert_eq!(before_tap(&limits(), &s, &pay(999), 0), Ok(()));
        assert_eq!(before_tap(&limits(), &s, &pay(1000), 0), Ok(()));
        assert_eq!(
            before_tap(&limits(), &s, &pay(1001), 0),
            Err(RiskDecline::FloorLimit)
        );
        assert_eq!(
            before_tap(&limits(), &s, &Scenario::Pickup { site: "L".into() }, 0),
            Ok(())
        );
    }

    #[test]
    fn queue_caps_below_at_above() {
        let mut s = RiskState::default();
        for i in 0..4 {
            s.add(Some([i; 32]), 1000, 50);
        }
        // count: 4 queued, cap 5 → one more allowed
        assert_eq!(
            before_tap(&limits(), &s, &pay(1000), 100),
            Ok(()),
            "amount lands exactly on the cap"
        );
        assert_eq!(
            before_tap(&limits(), &s, &pay(1001), 100),
            Err(RiskDecline::FloorLimit)
        );
        let mut amount = s.clone();
        amount.queued_amount = 4001;
        assert_eq!(
            before_tap(&limits(), &amount, &pay(1000), 100),
            Err(RiskDecline::QueueAmountCap)
        );
        s.add(Some([9; 32]), 1, 50);
        assert_eq!(
            before_tap(&limits(), &s, &pay(1), 100),
            Err(RiskDecline::QueueCountCap)
        );
        // age: oldest at 50, cap 100 s
        let mut young = RiskState::default();
        young.add(Some([1; 32]), 1, 50);
        assert_eq!(before_tap(&limits(), &young, &pay(1), 149), Ok(()));
        assert_eq!(
            before_tap(&limits(), &young, &pay(1), 150),
            Ok(()),
            "exactly at the age cap"
        );
        assert_eq!(
            before_tap(&limits(), &young, &pay(1), 151),
            Err(RiskDecline::QueueAgeCap)
        );
    }

    #[test]
    fn wallet_limits_below_at_above() {
        let w = [7; 32];
        let mut s = RiskState::default();
        s.add(Some(w), 1000, 0);
        s.add(Some(w), 1000, 0);
        assert_eq!(after_tap(&limits(), &s, &w, 999), Ok(()));
        assert_eq!(
            after_tap(&limits(), &s, &w, 1000),
            Ok(()),
            "exactly at the amount limit"
        );
        assert_eq!(
            after_tap(&limits(), &s, &w, 1001),
            Err(RiskDecline::WalletAmountLimit)
        );
        assert_eq!(
            after_tap(&limits(), &s, &[8; 32], 1001),
            Ok(()),
            "other wallets unaffected"
        );
        s.add(Some(w), 1, 0);
        assert_eq!(
            after_tap(&limits(), &s, &w, 0),
            Err(RiskDecline::WalletCountLimit),
            "3 taps is the count limit"
        );
    }
}
