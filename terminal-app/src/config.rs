//! The terminal's configuration: one TOML file, with environment overrides
//! `TAPSTACK_<SECTION>_<KEY>` (for example `TAPSTACK_READER_CONNECTION`,
//! `TAPSTACK_HOST_URL`, `TAPSTACK_RISK_FLOOR_LIMIT`). Relative paths are
//! relative to the file's directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tapstack_protocol::scenario::{Currency, ScenarioKind};

use crate::risk::RiskLimits;
use crate::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalSection {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// ISO 4217 code of every amount this terminal takes.
    pub currency: String,
    /// Prefix of order numbers shown to customers ("A" → A17).
    #[serde(default = "default_prefix")]
    pub order_prefix: String,
    /// Send the terminal certificate in every AUTHORIZE (false: only its
    /// hash, for a clientele of repeat customers; a phone that lacks it asks).
    #[serde(default = "yes")]
    pub send_certificate: bool,
    /// How long one tap intent waits for a phone.
    #[serde(default = "default_timeout")]
    pub tap_timeout_secs: u64,
    /// Ask for the user's presence on the phone (`D3`) on every tap, amount
    /// 0 and pickups of relaxed credentials included.
    #[serde(default)]
    pub require_presence: bool,
    /// This terminal's earlier certificates (before `tap-certs terminal
    /// --renew`), sent with every upload so the host accepts the queued
    /// records signed under them. Same terminal ID and acquirer only.
    #[serde(default)]
    pub previous_certificates: Vec<PathBuf>,
}

fn default_prefix() -> String {
    "A".into()
}
fn yes() -> bool {
    true
}
fn default_timeout() -> u64 {
    60
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderSection {
    /// `pcsc:<reader name>`, `libnfc:<connstring>`, `pn532:<path>[?baud=N]`, or `emu:<wallet profile>[,<profile>…]`.
    pub connection: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSection {
    pub root: PathBuf,
    #[serde(default)]
    pub issuers: Vec<PathBuf>,
    #[serde(default)]
    pub operators: Vec<PathBuf>,
    /// The signed revocation list. When configured it must exist and verify
    /// (the terminal does not start otherwise), and it is refreshed from the
    /// host at every sync.
    #[serde(default)]
    pub revocations: Option<PathBuf>,
    /// How long past the list's `next_update` the terminal still approves
    /// on it (a host it cannot reach). Beyond, it approves nothing
    /// (`revocations_stale`) until a fresh list arrives. Default 72 h.
    #[serde(default = "default_revocation_grace")]
    pub revocation_grace_secs: u64,
}

fn default_revocation_grace() -> u64 {
    tapstack_protocol::revocation::DEFAULT_GRACE_SECS
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSection {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// `https://HOST:PORT`, HOST a DNS name or an IP address.
    pub url: String,
    /// More instances of the same host (`https://HOST:PORT` each, the same
    /// TLS server name), tried in turn when the one in use cannot be
    /// reached. A balancer's address in `url` needs none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<String>,
    /// The TLS CA certificate (`tap-certs tls-ca`, PEM or DER) the host's
    /// TLS server certificate is issued by: not the payment root, which
    /// signs no TLS certificate.
    pub ca: PathBuf,
    /// Name in the host's certificate.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// The terminal's TLS client certificate (`tap-certs terminal-tls`:
    /// role terminal-tls, same terminal ID, clientAuth). The terminal
    /// certificate signs transcripts and records only; the host refuses it
    /// as a TLS client certificate. Default: the terminal certificate's
    /// path with `-tls` before the extension (`terminal.pem` →
    /// `terminal-tls.pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificate: Option<PathBuf>,
    /// The TLS client key (PKCS#8 PEM, mode 0600). Default: the terminal
    /// key's path with `-tls` before the extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// `tap-terminal serve`: sync this often (seconds), and at start-up.
    #[serde(default = "default_sync_interval")]
    pub sync_interval_secs: u64,
    /// `tap-terminal serve`: also sync after this many approved taps (0: never).
    #[serde(default = "default_sync_after_taps")]
    pub sync_after_taps: u32,
}

/// `dir/terminal.pem` → `dir/terminal-tls.pem`.
fn tls_sibling(p: &Path) -> PathBuf {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match p.extension() {
        Some(ext) => format!("{stem}-tls.{}", ext.to_string_lossy()),
        None => format!("{stem}-tls"),
    };
    p.with_file_name(name)
}

impl HostSection {
    /// The TLS client certificate and key (as configured, or next to the
    /// terminal's certificate and key), relative to the config file.
    pub fn tls_identity(&self, terminal: &TerminalSection) -> (PathBuf, PathBuf) {
        (
            self.tls_certificate
                .clone()
                .unwrap_or_else(|| tls_sibling(&terminal.certificate)),
            self.tls_key
                .clone()
                .unwrap_or_else(|| tls_sibling(&terminal.key)),
        )
    }
}

fn default_server_name() -> String {
    "localhost".into()
}
fn default_batch() -> usize {
    200
}
fn default_sync_interval() -> u64 {
    60
}
fn default_sync_after_taps() -> u32 {
    20
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KioskSection {
    /// The site id pickup credentials must name.
    pub site: String,
    /// Command run to open a slot; the slot number is appended as the last
    /// argument. Empty: only log it.
    #[serde(default)]
    pub open_command: Vec<String>,
    /// The operator's endorsement of this terminal as a kiosk for `site`
    /// (`tap-certs kiosk`), sent in every pickup. Without it phones refuse
    /// pickups here (`9104`).
    #[serde(default)]
    pub endorsement: Option<PathBuf>,
}

/// The command that opens `slot`: `open_command` with the slot number
/// appended, or `None` when no command is configured (then only log it).
/// One definition for the CLI's kiosk loop and the daemon.
pub fn open_slot_command(open_command: &[String], slot: u16) -> Option<std::process::Command> {
    let (prog, args) = open_command.split_first()?;
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args).arg(slot.to_string());
    Some(cmd)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    #[serde(default = "default_listen")]
    pub listen: String,
}

fn default_listen() -> String {
    "127.0.0.1:7300".into()
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: default_listen(),
        }
    }
}

/// Relay resistance: how much longer than the reader's own round trip a
/// phone may take to answer the timed exchange, per scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    #[serde(default = "default_relay_ms")]
    pub allowance_ms: u64,
    #[serde(default)]
    pub pay_ms: Option<u64>,
    #[serde(default)]
    pub order_ms: Option<u64>,
    #[serde(default)]
    pub pickup_ms: Option<u64>,
    #[serde(default = "default_relay_attempts")]
    pub attempts: u8,
}

fn default_relay_ms() -> u64 {
    tapstack_protocol::terminal::DEFAULT_RELAY_ALLOWANCE.as_millis() as u64
}

fn default_relay_attempts() -> u8 {
    tapstack_protocol::terminal::DEFAULT_RELAY_ATTEMPTS
}

impl Default for RelaySection {
    fn default() -> Self {
        RelaySection {
            allowance_ms: default_relay_ms(),
            pay_ms: None,
            order_ms: None,
            pickup_ms: None,
            attempts: default_relay_attempts(),
        }
    }
}

impl RelaySection {
    /// The allowance for a scenario.
    pub fn allowance(&self, kind: ScenarioKind) -> std::time::Duration {
        let ms = match kind {
            ScenarioKind::Pay => self.pay_ms,
            ScenarioKind::Order => self.order_ms,
            ScenarioKind::Pickup => self.pickup_ms,
        };
        std::time::Duration::from_millis(ms.unwrap_or(self.allowance_ms))
    }
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub terminal: TerminalSection,
    pub reader: ReaderSection,
    pub trust: TrustSection,
    pub queue: QueueSection,
    #[serde(default)]
    pub host: Option<HostSection>,
    #[serde(default)]
    pub risk: RiskLimits,
    #[serde(default)]
    pub kiosk: Option<KioskSection>,
    #[serde(default)]
    pub api: ApiSection,
    #[serde(default)]
    pub relay: RelaySection,
    /// Directory relative paths resolve against.
    #[serde(skip)]
    pub base: PathBuf,
}

const MAX_CONFIG: u64 = 256 * 1024;

impl Config {
    /// Read, apply `env` overrides (`(name, value)` pairs), validate.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let bad = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.len() > MAX_CONFIG {
            return Err(bad(format!("larger than {MAX_CONFIG} bytes")));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let mut value: toml::Table = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        // Errors in the file itself, with line and key.
        toml::from_str::<Config>(&text).map_err(|e| bad(e.to_string()))?;
        let mut overridden = Vec::new();
        for (k, v) in env {
            let Some(rest) = k.strip_prefix("TAPSTACK_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = rest.split_once('_') else {
                continue;
            };
            let parsed = typed_override(section, key, &v).map_err(|e| bad(format!("{k}: {e}")))?;
            let table = value
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| bad(format!("{k}: [{section}] is not a table")))?;
            table.insert(key.to_owned(), parsed);
            overridden.push(k);
        }
        let mut cfg: Config =
            toml::Value::Table(value)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    bad(format!(
                        "{} (after the environment overrides {})",
                        e.message(),
                        overridden.join(", ")
                    ))
                })?;
        cfg.base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        cfg.validate().map_err(bad)?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if let Err(e) = Currency::parse(&self.terminal.currency) {
            return Err(format!("terminal.currency: {e}"));
        }
        if self.terminal.order_prefix.len() > 4
            || self
                .terminal
                .order_prefix
                .chars()
                .any(|c| !c.is_ascii_alphanumeric())
        {
            return Err("terminal.order_prefix must be at most 4 letters or digits".into());
        }
        if self.terminal.tap_timeout_secs == 0 || self.terminal.tap_timeout_secs > 3600 {
            return Err("terminal.tap_timeout_secs must be 1 to 3600".into());
        }
        let c = &self.reader.connection;
        if !["pcsc:", "libnfc:", "pn532:", "emu:"]
            .iter()
            .any(|p| c.starts_with(p))
        {
            return Err(format!(
                "reader.connection {c:?} must start with pcsc:, libnfc:, pn532: or emu:"
            ));
        }
        if let Some(h) = &self.host {
            if let Err(e) = tapstack_upload::client::Endpoint::parse_url(&h.url) {
                return Err(format!(
                    "host.url {:?}: {e} (https://HOST:PORT, HOST a name or an address)",
                    h.url
                ));
            }
            for u in &h.failover {
                if let Err(e) = tapstack_upload::client::Endpoint::parse_url(u) {
                    return Err(format!("host.failover {u:?}: {e} (https://HOST:PORT each)"));
                }
            }
            if h.batch_size == 0 || h.batch_size > 1000 {
                return Err("host.batch_size must be 1 to 1000".into());
            }
            if h.sync_interval_secs == 0 || h.sync_interval_secs > 86_400 {
                return Err("host.sync_interval_secs must be 1 to 86400".into());
            }
        }
        let r = &self.risk;
        if r.cvm_limit > r.floor_limit {
            return Err(
                "risk.cvm_limit above risk.floor_limit: every tap it affects is refused anyway"
                    .into(),
            );
        }
        if r.wallet_max_amount > r.queue_max_amount {
            return Err("risk.wallet_max_amount above risk.queue_max_amount".into());
        }
        let rl = &self.relay;
        for (name, ms) in [
            ("allowance_ms", Some(rl.allowance_ms)),
            ("pay_ms", rl.pay_ms),
            ("order_ms", rl.order_ms),
            ("pickup_ms", rl.pickup_ms),
        ] {
            if ms.is_some_and(|ms| ms == 0 || ms > 1000) {
                return Err(format!("relay.{name} must be 1 to 1000 (milliseconds)"));
            }
        }
        // A wallet answers at most RELAY_ANSWERS timed exchanges per SELECT.
        let max = tapstack_protocol::wallet::RELAY_ANSWERS;
        if rl.attempts == 0 || usize::from(rl.attempts) > max {
            return Err(format!(
                "relay.attempts must be 1 to {max} (a phone answers {max} timed exchanges per tap)"
            ));
        }
        if let Some(k) = &self.kiosk {
            if k.site.is_empty() || k.site.len() > 32 {
                return Err("kiosk.site must be 1 to 32 bytes".into());
            }
        }
        Ok(())
    }

    pub fn currency(&self) -> Currency {
        Currency::new(&self.terminal.currency).unwrap_or_else(|| unreachable!("validated"))
    }

    /// A path from the file, resolved against its directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

/// An environment override typed by the field it sets, as the example
/// configuration types it: `TAPSTACK_KIOSK_SITE=00042` is the text
/// "00042", `TAPSTACK_RISK_FLOOR_LIMIT=lots` is refused as not a number,
/// a list takes a TOML array (`["a.pem", "b.pem"]`) or comma-separated
/// items. A key the example does not know is passed on as text and refused
/// by name when the configuration is read.
fn typed_override(section: &str, key: &str, v: &str) -> Result<toml::Value, String> {
    static SCHEMA: std::sync::OnceLock<toml::Table> = std::sync::OnceLock::new();
    let schema = SCHEMA.get_or_init(|| {
        // The example with its commented-out [kiosk] section switched on.
        let text = EXAMPLE
            .replace("# [kiosk]", "[kiosk]")
            .replace("# site =", "site =")
            .replace("# open_command =", "open_command =")
            .replace("# previous_certificates =", "previous_certificates =");
        toml::from_str(&text).unwrap_or_default()
    });
    let field = schema
        .get(section)
        .and_then(toml::Value::as_table)
        .and_then(|t| t.get(key));
    Ok(match field {
        None | Some(toml::Value::String(_)) => toml::Value::String(v.to_owned()),
        Some(toml::Value::Integer(_)) => v
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{v:?} is not a whole number"))?,
        Some(toml::Value::Boolean(_)) => v
            .trim()
            .parse::<bool>()
            .map(toml::Value::Boolean)
            .map_err(|_| format!("{v:?} is not true or false"))?,
        Some(toml::Value::Array(_)) => {
            if v.trim_start().starts_with('[') {
                toml::from_str::<toml::Table>(&format!("v = {v}"))
                    .ok()
                    .and_then(|mut t| t.remove("v"))
                    .ok_or_else(|| format!("{v:?} is not a TOML array"))?
            } else {
                toml::Value::Array(
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_owned()))
                        .collect(),
                )
            }
        }
        Some(other) => {
            return Err(format!(
                "cannot set a {} from the environment",
                other.type_str()
            ))
        }
    })
}

/// The commented example `tap-terminal init` writes.
pub const EXAMPLE: &str = r#"# tap-terminal configuration. Paths are relative to this file.
# Every value can be overridden from the environment as
# TAPSTACK_<SECTION>_<KEY>, e.g. TAPSTACK_READER_CONNECTION=pcsc:"ACS ACR122U 00 00".

[terminal]
certificate = "terminal.pem"     # from `tap-certs terminal`
key = "terminal.key"
currency = "CNY"                 # every amount is in this currency
order_prefix = "A"               # order numbers look like A17
send_certificate = true          # false: send only its hash (repeat customers)
tap_timeout_secs = 60            # how long a tap intent waits for a phone
require_presence = false         # true: the phone asks its user on every tap (D3), amount 0 included
# previous_certificates = ["terminal-2025.pem"]   # after a renewal: records queued under these still upload

[reader]
# pcsc:<reader name> | libnfc:<connstring> | pn532:/dev/ttyUSB0?baud=115200
# | emu:<wallet profile>[,<profile>...] (in-process emulated phones)
connection = "pcsc:ACS ACR122U 00 00"

[trust]
root = "pki/root.pem"
issuers = ["pki/issuer.pem"]       # wallets are issued by these
operators = ["pki/operator.pem"]   # pickup credentials are signed by these
revocations = "pki/revocations.tlv"   # must exist: the terminal does not start without it
revocation_grace_secs = 259200   # 72 h past next_update, then no approvals until refreshed

[queue]
path = "queue"                   # sled directory; back it up, never edit it

[host]
url = "https://127.0.0.1:8443"
# failover = ["https://10.0.0.11:8443"]   # more instances, tried in turn when url cannot be reached
ca = "tls/tls-ca.pem"             # the TLS CA (`tap-certs tls-ca`), not the payment root
server_name = "localhost"
tls_certificate = "terminal-tls.pem"   # `tap-certs terminal-tls`: the mTLS client certificate
tls_key = "terminal-tls.key"           # (the terminal key signs taps and records only)
batch_size = 200
sync_interval_secs = 60          # `serve` uploads this often (and at start-up)
sync_after_taps = 20             # ... and after this many approved taps (0: off)

[risk]                           # minor units of terminal.currency
floor_limit = 100000             # largest offline tap (1000.00)
cvm_limit = 30000                # above this the phone must verify the user
wallet_max_amount = 200000       # per phone since the last sync
wallet_max_count = 10
queue_max_amount = 10000000      # past these the terminal refuses offline taps
queue_max_count = 5000
queue_max_age_secs = 259200      # 3 days

# [kiosk]
# site = "LOCKER-7"
# endorsement = "terminal-kiosk.pem"   # `tap-certs kiosk`: the operator endorses this terminal for the site
# open_command = ["/usr/local/bin/open-slot"]   # the slot number is appended

[api]
listen = "127.0.0.1:7300"        # local HTTP+JSON API of `tap-terminal serve`

[relay]                          # relay resistance: the timed exchange after SELECT
allowance_ms = 10                # a phone may answer this much slower than the reader's own round trip
pay_ms = 10                      # ... per scenario (a relay over any network adds more)
order_ms = 10
pickup_ms = 10
attempts = 3                     # timed exchanges tried before the tap is declined as relayed
"#;
