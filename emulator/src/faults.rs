//! Scripted faults: what real phones do to terminals.
//!
//! A rule is `ACTION@N[:ARG][/TAP]`: at the `N`th command APDU of a tap
//! (1-based, counted while the phone stays in the field), on tap number
//! `TAP` only (1-based over the emulator's run) or on every tap:
//!
//! | rule            | the phone …                                           |
//! |-----------------|-------------------------------------------------------|
//! | `remove@N`      | leaves the field instead of answering command N       |
//! | `delay@N:MS`    | answers command N after MS milliseconds               |
//! | `relay@N:MS`    | is behind a relay: command N and every later one take |
//! |                 | MS milliseconds longer (the terminal's timed exchange |
//! |                 | sees it and declines the tap)                         |
//! | `corrupt@N`     | flips a bit in the data of its answer to command N    |
//! | `sw@N:6F00`     | answers command N with only that status word          |
//! | `garbage@N`     | answers command N with random bytes                   |
//!
//! `present=MS` (or `--present-ms`) makes the phone leave the field MS
//! milliseconds after it entered, whatever it is doing.

use std::time::Duration;

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    Remove,
    Delay(Duration),
    /// Every command from N on is delayed (a relay between reader and phone).
    Relay(Duration),
    Corrupt,
    StatusWord(u16),
    Garbage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub action: FaultAction,
    /// 1-based command index within a tap.
    pub command: usize,
    /// 1-based tap number, or every tap.
    pub tap: Option<usize>,
}

impl Fault {
    pub fn parse(rule: &str) -> Result<Self, Error> {
        let bad = || Error::Fault {
            rule: rule.to_owned(),
        };
        let (body, tap) = match rule.split_once('/') {
            Some((b, t)) => (b, Some(t.parse::<usize>().map_err(|_| bad())?)),
            None => (rule, None),
        };
        let (action, rest) = body.split_once('@').ok_or_else(bad)?;
        let (n, arg) = match rest.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (rest, None),
        };
        let command: usize = n.parse().map_err(|_| bad())?;
        if command == 0 || tap == Some(0) {
            return Err(bad());
        }
        let action = match (action, arg) {
            ("remove", None) => FaultAction::Remove,
            ("corrupt", None) => FaultAction::Corrupt,
            ("garbage", None) => FaultAction::Garbage,
            ("delay" | "relay", Some(ms)) => {
                let ms: u64 = ms.parse().map_err(|_| bad())?;
                if ms > 600_000 {
                    return Err(bad());
                }
                let d = Duration::from_millis(ms);
                if action == "relay" {
                    FaultAction::Relay(d)
                } else {
                    FaultAction::Delay(d)
                }
            }
            ("sw", Some(sw)) if sw.len() == 4 => {
                FaultAction::StatusWord(u16::from_str_radix(sw, 16).map_err(|_| bad())?)
            }
            _ => return Err(bad()),
        };
        Ok(Fault {
            action,
            command,
            tap,
        })
    }
}

/// The faults of one emulator run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultScript {
    pub faults: Vec<Fault>,
    /// The phone leaves the field this long after entering it.
    pub present: Option<Duration>,
}

impl FaultScript {
    /// The faults that apply to command `command` of tap `tap` (a relay
    /// applies from its command on).
    pub fn at(&self, tap: usize, command: usize) -> impl Iterator<Item = FaultAction> + '_ {
        self.faults
            .iter()
            .filter(move |f| {
                let here = match f.action {
                    FaultAction::Relay(_) => command >= f.command,
                    _ => f.command == command,
                };
                here && f.tap.is_none_or(|t| t == tap)
            })
            .map(|f| f.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules_and_refuses_nonsense() {
        assert_eq!(
            Fault::parse("remove@2").unwrap(),
            Fault {
                action: FaultAction::Remove,
                command: 2,
                tap: None
            }
        );
        assert_eq!(
            Fault::parse("delay@1:600/3").unwrap(),
            Fault {
                action: FaultAction::Delay(Duration::from_millis(600)),
                command: 1,
                tap: Some(3)
            }
        );
        assert_eq!(
            Fault::parse("sw@2:6f00").unwrap().action,
            FaultAction::StatusWord(0x6F00)
        );
        for bad in [
            "",
            "remove",
            "remove@0",
            "remove@x",
            "delay@1",
            "delay@1:abc",
            "sw@1:123",
            "explode@1",
            "remove@1/0",
            "corrupt@1:5",
        ] {
            assert!(Fault::parse(bad).is_err(), "{bad}");
        }
        let script = FaultScript {
            faults: vec![
                Fault::parse("corrupt@2/1").unwrap(),
                Fault::parse("garbage@2").unwrap(),
            ],
            present: None,
        };
        assert_eq!(script.at(1, 2).count(), 2);
        assert_eq!(
            script.at(2, 2).collect::<Vec<_>>(),
            vec![FaultAction::Garbage]
        );
        assert_eq!(script.at(1, 1).count(), 0);
        // A relay delays its command and every later one.
        let relay = FaultScript {
            faults: vec![Fault::parse("relay@2:20").unwrap()],
            present: None,
        };
        assert_eq!(relay.at(1, 1).count(), 0);
        for n in [2, 3, 9] {
            assert_eq!(
                relay.at(1, n).collect::<Vec<_>>(),
                vec![FaultAction::Relay(Duration::from_millis(20))]
            );
        }
        assert!(Fault::parse("relay@1").is_err());
    }
}
