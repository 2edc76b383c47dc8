//! Connection strings: `pcsc:<reader>`, `libnfc:<connstring>`,
//! `pn532:<path>[?baud=N]`, `emu:`.

use std::fmt;
use std::path::PathBuf;

use crate::ReaderError;

/// The serial speed the native PN532 driver runs at after initialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaudChoice {
    /// The fastest rate both the PN532 and the host port accept (default).
    Max,
    /// Exactly this rate (115,200: stay at the power-on rate).
    Fixed(u32),
}

/// A parsed connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// A PC/SC reader by name; `None`: the first reader.
    Pcsc { reader: Option<String> },
    /// A libnfc device; `None`: the first one libnfc finds.
    Libnfc { connstring: Option<String> },
    /// A PN532 on a serial port, driven natively.
    Pn532 { path: PathBuf, baud: BaudChoice },
    /// The in-process emulator (a loopback reader).
    Emu,
}

/// Serial speeds of the PN532's SetSerialBaudRate a host can use: all but
/// BR 8's 1 288 000 baud, which termios has no speed for.
pub const PN532_BAUD_RATES: &[u32] = tapstack_pn532::BAUD_RATES.split_at(8).0;

impl Connection {
    pub fn parse(s: &str) -> Result<Self, ReaderError> {
        let bad = |reason| ReaderError::BadConnectionString {
            connection: s.to_owned(),
            reason,
        };
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| bad("expected pcsc:, libnfc:, pn532: or emu:"))?;
        let rest = rest.trim();
        let opt = |v: &str| (!v.is_empty()).then(|| v.to_owned());
        match scheme {
            "pcsc" => {
                let name = rest
                    .strip_prefix('"')
                    .and_then(|r| r.strip_suffix('"'))
                    .unwrap_or(rest);
                Ok(Connection::Pcsc { reader: opt(name) })
            }
            "libnfc" => Ok(Connection::Libnfc {
                connstring: opt(rest),
            }),
            "pn532" => {
                let (path, query) = match rest.split_once('?') {
                    Some((p, q)) => (p, Some(q)),
                    None => (rest, None),
                };
                if path.is_empty() {
                    return Err(bad("pn532: needs a serial port path"));
                }
                let mut baud = BaudChoice::Max;
                for kv in query.into_iter().flat_map(|q| q.split('&')) {
                    match kv.split_once('=') {
                        Some(("baud", "max")) => baud = BaudChoice::Max,
                        Some(("baud", v)) => {
                            let n: u32 = v.parse().map_err(|_| bad("baud is not a number"))?;
                            if !PN532_BAUD_RATES.contains(&n) {
                                return Err(bad("baud is not a PN532 rate (9600 … 921600)"));
                            }
                            baud = BaudChoice::Fixed(n);
                        }
                        _ => return Err(bad("unknown pn532 option (only baud=N|max)")),
                    }
                }
                Ok(Connection::Pn532 {
                    path: PathBuf::from(path),
                    baud,
                })
            }
            "emu" => Ok(Connection::Emu),
            _ => Err(bad(
                "unknown scheme: expected pcsc:, libnfc:, pn532: or emu:",
            )),
        }
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Connection::Pcsc { reader } => write!(f, "pcsc:{}", reader.as_deref().unwrap_or("")),
            Connection::Libnfc { connstring } => {
                write!(f, "libnfc:{}", connstring.as_deref().unwrap_or(""))
            }
            Connection::Pn532 { path, baud } => {
                write!(f, "pn532:{}", path.display())?;
                match baud {
                    BaudChoice::Max => Ok(()),
                    BaudChoice::Fixed(n) => write!(f, "?baud={n}"),
                }
            }
            Connection::Emu => f.write_str("emu:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            Connection::parse("pcsc:\"ACS ACR122U 00 00\"").unwrap(),
            Connection::Pcsc {
                reader: Some("ACS ACR122U 00 00".into())
            }
        );
        assert_eq!(
            Connection::parse("pcsc:Virtual PCD 00 00")
                .unwrap()
                .to_string(),
            "pcsc:Virtual PCD 00 00"
        );
        assert_eq!(
            Connection::parse("pcsc:").unwrap(),
            Connection::Pcsc { reader: None }
        );
        assert_eq!(
            Connection::parse("libnfc:pn532_uart:/dev/ttyUSB0").unwrap(),
            Connection::Libnfc {
                connstring: Some("pn532_uart:/dev/ttyUSB0".into())
            }
        );
        assert_eq!(
            Connection::parse("pn532:/dev/ttyUSB0?baud=115200").unwrap(),
            Connection::Pn532 {
                path: "/dev/ttyUSB0".into(),
                baud: BaudChoice::Fixed(115_200)
            }
        );
        assert_eq!(
            Connection::parse("pn532:/dev/ttyUSB0").unwrap().to_string(),
            "pn532:/dev/ttyUSB0"
        );
        assert_eq!(Connection::parse("emu:").unwrap(), Connection::Emu);
        for bad in [
            "",
            "usb:1",
            "pn532:",
            "pn532:/dev/x?baud=7",
            "pn532:/dev/x?speed=1",
            "nothing",
        ] {
            assert!(Connection::parse(bad).is_err(), "{bad}");
        }
    }
}
