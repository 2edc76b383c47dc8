//! `tap-host ledger`: what the host holds per terminal, scenario and day.
//!
//! Three kinds of stored record, never mixed:
//!
//! * **settled** — accepted and not flagged: the only records in the
//!   `count`/`amount_minor` columns and in `totals`;
//! * **held** — accepted but flagged for review (`credential_reused`,
//!   `future_time`): reported apart (`held`, `held_totals`), not in totals;
//! * **declined** — kept as evidence (a duplicate tap, a cloned wallet, an
//!   ATC out of window, a bad cryptogram…): reported apart (`declined`,
//!   `declined_totals`, `declined_reasons`), never in totals.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use tapstack_protocol::scenario::{Amount, Currency};

use crate::store::{Disposition, StoredRecord};

/// One line: a terminal, a scenario, a UTC day and a currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    /// SHA-256 of the terminal certificate, hex.
    pub terminal: String,
    pub terminal_name: String,
    /// `pay`, `order`, `pickup` (`unknown` for a declined record whose
    /// transcript did not decode).
    pub scenario: String,
    /// UTC day of the tap (terminal time), `YYYY-MM-DD`.
    pub day: String,
    /// ISO 4217 code (absent for pickups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    /// Settled records.
    pub count: u64,
    /// Sum of settled amounts, minor units.
    pub amount_minor: u64,
    /// Held records (accepted, flagged for review; not in `count`).
    pub held: u64,
    pub held_amount_minor: u64,
    /// Declined records (stored as evidence; not in `count`).
    pub declined: u64,
    pub declined_amount_minor: u64,
}

/// Count and amount per currency (pickups under `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerTotal {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    pub count: u64,
    pub amount_minor: u64,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub rows: Vec<LedgerRow>,
    /// Settled records only.
    pub totals: Vec<LedgerTotal>,
    /// Held records (not in `totals`).
    pub held_totals: Vec<LedgerTotal>,
    /// Declined records (not in `totals`).
    pub declined_totals: Vec<LedgerTotal>,
    /// Declined records per reason (`duplicate_tap`, `cloned_wallet`, …).
    pub declined_reasons: BTreeMap<String, u64>,
    pub settled: u64,
    pub held: u64,
    pub declined: u64,
    pub terminals: u64,
}

/// `YYYY-MM-DD` of a Unix time (UTC, proleptic Gregorian).
pub fn utc_day(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

type Key = (String, String, String, Option<Currency>);

fn add_to(
    totals: &mut BTreeMap<Option<Currency>, LedgerTotal>,
    cur: Option<Currency>,
    amount: u64,
) {
    let t = totals.entry(cur).or_insert_with(|| LedgerTotal {
        currency: cur,
        count: 0,
        amount_minor: 0,
    });
    t.count += 1;
    t.amount_minor = t.amount_minor.saturating_add(amount);
}

impl Ledger {
    /// Aggregate stored records.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a StoredRecord>) -> Ledger {
        let mut rows: BTreeMap<Key, LedgerRow> = BTreeMap::new();
        let mut totals = BTreeMap::new();
        let mut held_totals = BTreeMap::new();
        let mut declined_totals = BTreeMap::new();
        let mut ledger = Ledger::default();
        let mut terminals = std::collections::BTreeSet::new();
        for r in records {
            terminals.insert(r.terminal);
            let s = &r.summary;
            let scenario = s.scenario.map_or("unknown", |k| k.as_str()).to_owned();
            let day = s.tap_time.map_or_else(|| "unknown".to_owned(), utc_day);
            let key = (
                hex::encode(r.terminal),
                scenario.clone(),
                day.clone(),
                s.currency,
            );
            let row = rows.entry(key).or_insert_with(|| LedgerRow {
                terminal: hex::encode(r.terminal),
                terminal_name: s.terminal_name.clone(),
                scenario,
                day,
                currency: s.currency,
                count: 0,
                amount_minor: 0,
                held: 0,
                held_amount_minor: 0,
                declined: 0,
                declined_amount_minor: 0,
            });
            let amount = s.amount().map_or(0, |a| a.minor);
            match r.disposition {
                Disposition::Accepted if r.is_settled() => {
                    row.count += 1;
                    row.amount_minor = row.amount_minor.saturating_add(amount);
                    ledger.settled += 1;
                    add_to(&mut totals, s.currency, amount);
                }
                Disposition::Accepted => {
                    row.held += 1;
                    row.held_amount_minor = row.held_amount_minor.saturating_add(amount);
                    ledger.held += 1;
                    add_to(&mut held_totals, s.currency, amount);
                }
                Disposition::Declined(reason) => {
                    row.declined += 1;
                    row.declined_amount_minor = row.declined_amount_minor.saturating_add(amount);
                    ledger.declined += 1;
                    add_to(&mut declined_totals, s.currency, amount);
                    *ledger
                        .declined_reasons
                        .entry(reason.as_str().to_owned())
                        .or_default() += 1;
                }
            }
        }
        ledger.rows = rows.into_values().collect();
        ledger.totals = totals.into_values().collect();
        ledger.held_totals = held_totals.into_values().collect();
        ledger.declined_totals = declined_totals.into_values().collect();
        ledger.terminals = terminals.len() as u64;
        ledger
    }

    /// A table for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let money = |minor: u64, cur: &Option<Currency>| match *cur {
            Some(currency) => Amount { minor, currency }.to_string(),
            None => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:<10} {:>7} {:>18} {:>5} {:>8}",
            "terminal", "scenario", "day", "settled", "amount", "held", "declined"
        );
        for r in &self.rows {
            let name: String = if r.terminal_name.is_empty() {
                r.terminal.chars().take(16).collect()
            } else {
                r.terminal_name.chars().take(24).collect()
            };
            let _ = writeln!(
                out,
                "{:<24} {:<8} {:<10} {:>7} {:>18} {:>5} {:>8}",
                name,
                r.scenario,
                r.day,
                r.count,
                money(r.amount_minor, &r.currency),
                r.held,
                r.declined
            );
        }
        let section = |out: &mut String, title: &str, totals: &[LedgerTotal]| {
            let _ = writeln!(out, "{title}");
            if totals.is_empty() {
                let _ = writeln!(out, "  none");
            }
            for t in totals {
                let what = t.currency.as_ref().map_or("pickups", Currency::as_str);
                let _ = writeln!(
                    out,
                    "  {what:<8} {:>7} records {:>18}",
                    t.count,
                    money(t.amount_minor, &t.currency)
                );
            }
        };
        section(&mut out, "totals (settled only):", &self.totals);
        section(
            &mut out,
            "held for review (not in totals):",
            &self.held_totals,
        );
        section(&mut out, "declined (not in totals):", &self.declined_totals);
        for (reason, n) in &self.declined_reasons {
            let _ = writeln!(out, "  {reason:<22} {n:>7}");
        }
        let _ = writeln!(
            out,
            "{} settled, {} held, {} declined, {} terminals",
            self.settled, self.held, self.declined, self.terminals
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RecordSummary, ScenarioKind};
    use crate::wire::{Flag, Reason};

    fn rec(seq: u64, minor: u64, disposition: Disposition, flags: Vec<Flag>) -> StoredRecord {
        StoredRecord {
            terminal: [7; 32],
            seq,
            hash: [seq as u8; 32],
            received_at: 0,
            disposition,
            flags,
            detail: None,
            summary: RecordSummary {
                terminal_name: "Tea House".into(),
                scenario: Some(ScenarioKind::Pay),
                amount_minor: Some(minor),
                currency: Currency::new("CNY"),
                tap_time: Some(1_780_000_000),
                ..Default::default()
            },
            bytes: vec![],
        }
    }

    #[test]
    fn totals_hold_only_settled_records() {
        let records = [
            rec(1, 5000, Disposition::Accepted, vec![]),
            rec(2, 5000, Disposition::Declined(Reason::DuplicateTap), vec![]),
            rec(3, 700, Disposition::Declined(Reason::ClonedWallet), vec![]),
            rec(4, 300, Disposition::Accepted, vec![Flag::FutureTime]),
            rec(5, 1200, Disposition::Accepted, vec![]),
        ];
        let l = Ledger::from_records(&records);
        assert_eq!((l.settled, l.held, l.declined, l.terminals), (2, 1, 2, 1));
        let total = |t: &[LedgerTotal]| (t[0].count, t[0].amount_minor);
        assert_eq!(total(&l.totals), (2, 6200));
        assert_eq!(total(&l.held_totals), (1, 300));
        assert_eq!(total(&l.declined_totals), (2, 5700));
        assert_eq!(l.declined_reasons.get("duplicate_tap"), Some(&1));
        assert_eq!(l.declined_reasons.get("cloned_wallet"), Some(&1));
        let row = &l.rows[0];
        assert_eq!(
            (row.count, row.amount_minor, row.held, row.held_amount_minor),
            (2, 6200, 1, 300)
        );
        assert_eq!((row.declined, row.declined_amount_minor), (2, 5700));
        let text = l.to_text();
        assert!(
            text.contains("totals (settled only):\n  CNY            2 records          62.00 CNY"),
            "{text}"
        );
        assert!(
            text.contains("2 settled, 1 held, 2 declined, 1 terminals"),
            "{text}"
        );
        // JSON round trip (what `tap-host ledger --json` prints).
        let back: Ledger = serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(1_780_000_000), "2026-05-28");
        assert_eq!(utc_day(951_782_400), "2000-02-29");
        assert_eq!(utc_day(4_107_542_400), "2100-03-01");
    }
}
