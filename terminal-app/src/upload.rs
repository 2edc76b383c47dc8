//! Upload to `tap-host`: batches over HTTPS with mutual TLS (the terminal's
//! TLS client certificate, `[host] tls_certificate`; the records name the
//! transcript-signing certificate, sent with each batch), at least once — the host de-duplicates on (terminal, seq)
//! — and records pruned only once acknowledged. Every sync also fetches the
//! host's revocation list.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand_core::RngCore;
use serde::Serialize;
use tapstack_protocol::codec::Codec;
use tapstack_protocol::pki::Role;
use tapstack_protocol::revocation::RevocationList;
use tapstack_protocol::terminal::TerminalContext;
use tapstack_upload::client::{Endpoint, HostClient};
use tapstack_upload::tls::{client_config, TlsIdentity};
use tapstack_upload::wire::RecordStatus;

use crate::config::Config;
use crate::queue::QueueStore;
use crate::Error;

fn upload_err(detail: impl ToString) -> Error {
    Error::Upload {
        detail: detail.to_string(),
    }
}

/// A client for the host the configuration names.
pub fn client(config: &Config, ctx: &TerminalContext) -> Result<HostClient, Error> {
    let host = config
        .host
        .as_ref()
        .ok_or_else(|| upload_err("no [host] in the configuration"))?;
    let endpoint = Endpoint::parse_url(&host.url)
        .map_err(|e| upload_err(format!("host.url {:?}: {e}", host.url)))?;
    let failover = host
        .failover
        .iter()
        .map(|u| {
            Endpoint::parse_url(u).map_err(|e| upload_err(format!("host.failover {u:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The TLS CA (`tap-certs tls-ca`): a plain X.509 certificate, not one of
    // the payment PKI's.
    let ca = tapstack_certs::read_pem_certificate(&config.path(&host.ca))?;
    // The TLS client identity is the terminal's TLS certificate and key,
    // not the transcript-signing ones (which the host refuses for TLS).
    let (cert_path, key_path) = host.tls_identity(&config.terminal);
    let (cert_path, key_path) = (config.path(&cert_path), config.path(&key_path));
    let tls_cert = tapstack_certs::read_certificate(&cert_path)?;
    if tls_cert.role() != Role::TerminalTls
        || tls_cert.terminal_id().is_none()
        || tls_cert.terminal_id() != ctx.certificate.terminal_id()
        || tls_cert.issuer_name() != ctx.certificate.issuer_name()
    {
        return Err(upload_err(format!(
            "{} is not this terminal's TLS certificate (role terminal-tls, same terminal ID and acquirer; `tap-certs terminal-tls`)",
            cert_path.display()
        )));
    }
    let tls_key = tapstack_certs::read_private_key(&key_path)?;
    if tls_key.verifying_key() != tls_cert.public_key() {
        return Err(upload_err(format!(
            "{} does not match {}",
            key_path.display(),
            cert_path.display()
        )));
    }
    let identity = TlsIdentity::from_protocol(&tls_cert, &tls_key, &[]).map_err(upload_err)?;
    let tls = client_config(&ca, Some(identity)).map_err(upload_err)?;
    let name =
        rustls::pki_types::ServerName::try_from(host.server_name.clone()).map_err(upload_err)?;
    // Earlier certificates of this terminal (before a renewal): queued
    // records signed under them still upload into the same chain.
    let earlier = config
        .terminal
        .previous_certificates
        .iter()
        .map(|p| tapstack_certs::read_certificate(&config.path(p)).map(|c| c.der().to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HostClient::new(endpoint, name, tls)
        .with_failover(failover)
        .with_timeout(Duration::from_secs(30))
        .with_terminal_certificate(ctx.certificate.der().to_vec())
        .with_earlier_certificates(earlier))
}

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub uploaded: usize,
    pub accepted: usize,
    pub duplicates: usize,
    pub declined: usize,
    pub rejected: usize,
    pub pruned: usize,
    pub acked_seq: u64,
    pub revocation_list: Option<u64>,
    /// Records the host stored but will not settle (a repeated tap, a cloned
    /// wallet, a counter out of its window …): approved here, not paid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_settled: Vec<NotSettled>,
}

/// A record the host declined to settle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotSettled {
    pub seq: Option<u64>,
    pub reason: String,
    pub message: Option<String>,
}

/// Upload everything pending, prune what the host acknowledged, refresh the
/// revocation list (saved to `revocations_path` when newer).
pub async fn sync(
    queue: &Arc<dyn QueueStore>,
    client: &HostClient,
    batch: usize,
    ctx: &mut TerminalContext,
    revocations_path: Option<PathBuf>,
) -> Result<SyncReport, Error> {
    let mut report = SyncReport::default();
    loop {
        let pending = queue.pending(batch)?;
        // Nothing to send, but the host's head is still unknown to this
        // queue: an empty batch asks for it.
        if pending.is_empty() && queue.integrity().host_checked {
            break;
        }
        let bytes: Vec<Vec<u8>> = pending.iter().map(|s| s.bytes.clone()).collect();
        let resp = client.upload(&bytes).await.map_err(upload_err)?;
        report.uploaded += bytes.len();
        report.accepted += resp.accepted;
        report.duplicates += resp.duplicates;
        report.declined += resp.declined;
        report.rejected += resp.rejected;
        let before = queue.acked()?;
        let hash: Option<[u8; 32]> = match resp.head_hash.as_deref() {
            None => None,
            Some(h) => Some(
                hex::decode(h)
                    .ok()
                    .and_then(|v| v.try_into().ok())
                    .ok_or_else(|| upload_err("host sent a malformed head hash"))?,
            ),
        };
        if resp.acked_seq > 0 && hash.is_none() {
            return Err(upload_err("host acknowledged without a head hash"));
        }
        for r in &resp.results {
            // A decline, or a duplicate of a record declined before.
            let declined = r.status == RecordStatus::Declined
                || (r.status == RecordStatus::Duplicate && r.reason.is_some());
            if declined {
                let reason = r.reason.map_or("declined", |x| x.as_str()).to_string();
                tracing::warn!(seq = ?r.seq, reason = %reason, message = ?r.message, "the host will not settle this record");
                report.not_settled.push(NotSettled {
                    seq: r.seq,
                    reason,
                    message: r.message.clone(),
                });
            }
        }
        report.pruned += queue.host_head(resp.acked_seq, hash)?;
        report.acked_seq = resp.acked_seq;
        if let Some(r) = resp
            .results
            .iter()
            .find(|r| r.status == RecordStatus::Rejected)
        {
            return Err(upload_err(format!(
                "host rejected record {:?}: {} ({})",
                r.seq,
                r.message.clone().unwrap_or_default(),
                r.reason.map(|x| x.as_str()).unwrap_or("?")
            )));
        }
        if pending.is_empty() || resp.acked_seq <= before {
            break;
        }
    }
    let refresh = |detail: String| Error::RevocationRefresh { detail };
    let list: RevocationList = client
        .revocations()
        .await
        .map_err(|e| refresh(e.to_string()))?;
    list.verify(&ctx.trust)
        .map_err(|e| refresh(format!("the host's list does not verify: {e}")))?;
    if ctx
        .revocations
        .as_ref()
        .is_none_or(|cur| list.number > cur.number)
    {
        if let Some(path) = revocations_path {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, list.to_bytes())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| Error::File {
                    path,
                    reason: e.to_string(),
                })?;
        }
        report.revocation_list = Some(list.number);
        ctx.revocations = Some(list);
    }
    // What could be uploaded was; records past damage cannot be.
    let integrity = queue.integrity();
    if !integrity.damaged.is_empty() {
        return Err(Error::Damaged {
            detail: integrity.summary(),
            path: integrity.path.into(),
        });
    }
    Ok(report)
}

/// One sync now, on a runtime of its own (`tap-terminal upload`, and the
/// CLI before the first tap of a new queue): [`sync`] with the
/// configuration's batch size and revocation-list path.
pub fn sync_blocking(
    config: &Config,
    engine: &mut crate::tap::Engine,
) -> Result<SyncReport, Error> {
    let client = client(config, &engine.ctx)?;
    let batch = config.host.as_ref().map_or(200, |h| h.batch_size);
    let revocations = config.trust.revocations.as_ref().map(|p| config.path(p));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(upload_err)?;
    rt.block_on(sync(
        &engine.queue,
        &client,
        batch,
        &mut engine.ctx,
        revocations,
    ))
}

/// Before the first tap of a queue under a configured host: learn the
/// host's head (one sync) so the queue continues the host's chain. Does
/// nothing when the queue already knows it or no host is configured.
pub fn ensure_host_checked(config: &Config, engine: &mut crate::tap::Engine) -> Result<(), Error> {
    if !engine.require_host_check || engine.queue.integrity().host_checked {
        return Ok(());
    }
    sync_blocking(config, engine).map_err(|e| {
        upload_err(format!(
            "this queue has never synced with the host and must before its first tap: {e}"
        ))
    })?;
    Ok(())
}

/// What `tap-terminal queue repair` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// Nothing to repair (the queue's path).
    Intact { path: String },
    /// Rebuilt from what the host holds (up to `host_seq`).
    Repaired { host_seq: u64, summary: String },
}

/// `queue repair`: ask the host for its head, rebuild a damaged queue from
/// it ([`crate::queue::Queue::repair`], which refuses to lose approvals).
pub fn repair(config: &Config) -> Result<Repair, Error> {
    let path = config.path(&config.queue.path);
    let (host_seq, hash) = {
        let engine = crate::app::engine(config)?;
        let integrity = engine.queue.integrity();
        if integrity.is_ok() {
            return Ok(Repair::Intact {
                path: integrity.path,
            });
        }
        let client = client(config, &engine.ctx)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(upload_err)?;
        let resp = rt
            .block_on(client.upload(&[]))
            .map_err(|e| upload_err(format!("asking the host for its head: {e}")))?;
        let hash: Option<[u8; 32]> = resp
            .head_hash
            .as_deref()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|v| v.try_into().ok());
        (resp.acked_seq, hash)
    };
    let summary = crate::queue::Queue::repair(&path, host_seq, hash)?;
    Ok(Repair::Repaired { host_seq, summary })
}

/// Exponential backoff with full jitter: attempt 0 → up to 1 s, doubling to
/// at most `max`.
pub fn backoff(attempt: u32, max: Duration, rng: &mut impl RngCore) -> Duration {
    let cap = Duration::from_secs(1)
        .saturating_mul(1u32 << attempt.min(16))
        .min(max);
    let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rng.next_u64() % millis + 1)
}
