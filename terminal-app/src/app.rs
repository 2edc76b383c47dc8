//! Assembling a terminal from its configuration: the engine, and the
//! phone field (reader) the configuration names.

use std::path::Path;
use std::sync::Arc;

use tapstack_certs::{read_certificate, read_private_key};
use tapstack_protocol::codec::Codec;
use tapstack_protocol::pki::{Role, TrustStore};
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::terminal::TerminalContext;

use crate::config::Config;
pub use crate::field::Field;
use crate::queue::{Queue, QueueStore};
use crate::tap::Engine;
use crate::Error;

fn file_err(path: &Path, reason: impl ToString) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Load the trust store and the revocation list the configuration names.
pub fn trust(config: &Config) -> Result<(TrustStore, Option<RevocationList>), Error> {
    let mut trust = TrustStore::new();
    let root_path = config.path(&config.trust.root);
    trust
        .add_root(read_certificate(&root_path)?)
        .map_err(|e| file_err(&root_path, e))?;
    for p in config.trust.issuers.iter().chain(&config.trust.operators) {
        let p = config.path(p);
        trust
            .add_intermediate(read_certificate(&p)?)
            .map_err(|e| file_err(&p, e))?;
    }
    let revocations = match &config.trust.revocations {
        Some(p) => {
            let p = config.path(p);
            // Configured means required: a terminal without its list would
            // approve revoked phones (fail closed).
            let bytes = std::fs::read(&p).map_err(|e| Error::Revocations {
                path: p.clone(),
                detail: if e.kind() == std::io::ErrorKind::NotFound {
                    "missing".to_owned()
                } else {
                    e.to_string()
                },
            })?;
            let list = RevocationList::decode(&bytes).map_err(|e| Error::Revocations {
                path: p.clone(),
                detail: format!("not a revocation list: {e}"),
            })?;
            list.verify(&trust).map_err(|e| Error::Revocations {
                path: p.clone(),
                detail: format!("signature rejected: {e}"),
            })?;
            Some(list)
        }
        None => None,
    };
    Ok((trust, revocations))
}

/// Open the terminal: identity, trust, queue, risk state.
pub fn engine(config: &Config) -> Result<Engine, Error> {
    let cert_path = config.path(&config.terminal.certificate);
    let cert = read_certificate(&cert_path)?;
    if cert.role() != Role::Terminal {
        return Err(file_err(
            &cert_path,
            format!("certificate role is {}, not terminal", cert.role()),
        ));
    }
    let key_path = config.path(&config.terminal.key);
    let key = read_private_key(&key_path)?;
    if key.verifying_key() != cert.public_key() {
        return Err(file_err(
            &key_path,
            "key does not match the terminal certificate",
        ));
    }
    let endorsement = match config.kiosk.as_ref().and_then(|k| k.endorsement.as_ref()) {
        Some(p) => {
            let p = config.path(p);
            let e = read_certificate(&p)?;
            let site = config
                .kiosk
                .as_ref()
                .map(|k| k.site.as_str())
                .unwrap_or_default();
            if e.role() != Role::Kiosk {
                return Err(file_err(
                    &p,
                    format!(
                        "certificate role is {}, not kiosk (tap-certs kiosk)",
                        e.role()
                    ),
                ));
            }
            if e.public_key() != cert.public_key() {
                return Err(file_err(
                    &p,
                    "the kiosk certificate endorses another key than the terminal certificate's",
                ));
            }
            if !e.endorses_site(site) {
                return Err(file_err(
                    &p,
                    format!(
                        "the kiosk certificate names {}, not kiosk.site {site}",
                        e.endorsed_sites().join(", ")
                    ),
                ));
            }
            Some(e)
        }
        None => None,
    };
    let (trust, revocations) = trust(config)?;
    // The terminal signs, verifies and agrees keys through ring.
    let mut ctx =
        TerminalContext::with_backend(cert, &key, trust, tapstack_protocol::crypto::fast_backend())
            .map_err(|e| file_err(&key_path, format!("key refused by the crypto backend: {e}")))?;
    ctx.revocations = revocations;
    ctx.endorsement = endorsement;
    ctx.require_presence = config.terminal.require_presence;
    let queue: Arc<dyn QueueStore> = Arc::new(Queue::open(&config.path(&config.queue.path))?);
    queue.bind_currency(&config.currency().to_string())?;
    let risk = crate::tap::risk_state(queue.as_ref())?;
    let _ = queue.head()?;
    Ok(Engine {
        ctx,
        queue,
        risk,
        limits: config.risk.clone(),
        currency: config.currency(),
        order_prefix: config.terminal.order_prefix.clone(),
        send_certificate: config.terminal.send_certificate,
        require_host_check: config.host.is_some(),
        revocation_grace: config.trust.revocation_grace_secs,
        relay: config.relay.clone(),
    })
}

/// Open the reader the configuration names.
pub fn field(config: &Config) -> Result<Field, Error> {
    Field::open(&config.reader.connection, &config.base)
}
