//! `tap-host ledger`: accepted records per terminal, scenario and day, with
//! totals. Declined records are counted apart and never in amounts.

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
    pub currency: Option<String>,
    /// Accepted records.
    pub count: u64,
    /// Sum of accepted amounts, minor units.
    pub amount_minor: u64,
    /// Accepted records carrying a flag (clone suspected, credential reused…).
    pub flagged: u64,
    /// Declined records (stored as evidence, not counted).
    pub declined: u64,
}

/// Totals over all rows, per currency (pickups under `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerTotal {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    pub count: u64,
    pub amount_minor: u64,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub rows: Vec<LedgerRow>,
    pub totals: Vec<LedgerTotal>,
    pub accepted: u64,
    pub declined: u64,
    pub flagged: u64,
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

type Key = (String, String, String, Option<String>);

impl Ledger {
    /// Aggregate stored records.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a StoredRecord>) -> Ledger {
        let mut rows: BTreeMap<Key, LedgerRow> = BTreeMap::new();
        let mut totals: BTreeMap<Option<String>, LedgerTotal> = BTreeMap::new();
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
                s.currency.clone(),
            );
            let row = rows.entry(key).or_insert_with(|| LedgerRow {
                terminal: hex::encode(r.terminal),
                terminal_name: s.terminal_name.clone(),
                scenario,
                day,
                currency: s.currency.clone(),
                count: 0,
                amount_minor: 0,
                flagged: 0,
                declined: 0,
            });
            match r.disposition {
                Disposition::Accepted => {
                    let amount = s.amount_minor.unwrap_or(0);
                    row.count += 1;
                    row.amount_minor = row.amount_minor.saturating_add(amount);
                    ledger.accepted += 1;
                    if !r.flags.is_empty() {
                        row.flagged += 1;
                        ledger.flagged += 1;
                    }
                    let t = totals
                        .entry(s.currency.clone())
                        .or_insert_with(|| LedgerTotal {
                            currency: s.currency.clone(),
                            count: 0,
                            amount_minor: 0,
                        });
                    t.count += 1;
                    t.amount_minor = t.amount_minor.saturating_add(amount);
                }
                Disposition::Declined(_) => {
                    row.declined += 1;
                    ledger.declined += 1;
                }
            }
        }
        ledger.rows = rows.into_values().collect();
        ledger.totals = totals.into_values().collect();
        ledger.terminals = terminals.len() as u64;
        ledger
    }

    /// A table for people.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let money = |minor: u64, cur: &Option<String>| match cur.as_deref().and_then(Currency::new)
        {
            Some(currency) => Amount { minor, currency }.to_string(),
            None => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:<10} {:>7} {:>18} {:>7} {:>8}",
            "terminal", "scenario", "day", "count", "amount", "flagged", "declined"
        );
        for r in &self.rows {
            let name: String = if r.terminal_name.is_empty() {
                r.terminal[..16].to_owned()
            } else {
                r.terminal_name.chars().take(24).collect()
            };
            let _ = writeln!(
                out,
                "{:<24} {:<8} {:<10} {:>7} {:>18} {:>7} {:>8}",
                name,
                r.scenario,
                r.day,
                r.count,
                money(r.amount_minor, &r.currency),
                r.flagged,
                r.declined
            );
        }
        let _ = writeln!(out, "totals:");
        for t in &self.totals {
            let what = t.currency.as_deref().unwrap_or("pickups");
            let _ = writeln!(
                out,
                "  {what:<8} {:>7} records {:>18}",
                t.count,
                money(t.amount_minor, &t.currency)
            );
        }
        let _ = writeln!(
            out,
            "{} accepted ({} flagged), {} declined, {} terminals",
            self.accepted, self.flagged, self.declined, self.terminals
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::utc_day;

    #[test]
    fn days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(1_780_000_000), "2026-05-28");
        assert_eq!(utc_day(951_782_400), "2000-02-29");
        assert_eq!(utc_day(4_107_542_400), "2100-03-01");
    }
}
