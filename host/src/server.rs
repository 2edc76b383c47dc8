//! `tap-host serve`: HTTPS with mutual TLS (tokio, rustls, hyper HTTP/1.1).
//!
//! ```text
//!  TcpListener ─accept (≤ max_connections)─▶ TLS handshake (≤ handshake_timeout,
//!      client certificate: ClientVerifier) ─▶ HTTP/1.1 keep-alive (header timeout)
//!      ├─ GET  /v1/health        any client
//!      ├─ GET  /v1/revocations   any client: the signed list, TLV
//!      └─ POST /v1/batches       terminals: body ≤ max_body, read ≤ body_timeout,
//!      │                         then Ingestor::ingest on a blocking thread
//!                                (≤ ingest_concurrency at once)
//! ```
//!
//! The host holds no CA private key: it verifies with certificates only
//! ([`tapstack_certs::PublicPki`]), its TLS identity is given to it, and
//! pickup credentials are issued offline (`tap-certs credential`).
//!
//! Like mini-redis' `server::run`, [`Host::serve`] takes its listener and a
//! shutdown future, so tests bind port 0 and stop it when they are done.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tapstack_certs::IssuerKeys;
use tapstack_protocol::pki::{Certificate, Role};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::ingest::{Ingestor, VerifyMode};
use crate::revocations::Revocations;
use crate::store::{AtcPolicy, Store};
use crate::tls::{self, ClientVerifier, TlsIdentity};
use crate::wire::{BatchRequest, ErrorBody, DEFAULT_MAX_BODY};
use crate::Error;
pub use tapstack_upload::http::{read_limited, BodyError};

/// Resource limits of the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Largest request body of `POST /v1/batches` (bytes): 413 beyond.
    pub max_body: usize,
    /// Time for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time to receive a request's header block (hyper's header read timeout).
    pub header_timeout: Duration,
    /// Time to receive a request body once its headers are in: 408 beyond.
    pub body_timeout: Duration,
    /// A connection is closed after this long, whatever it does.
    pub connection_lifetime: Duration,
    /// Batches verified and stored at once (blocking threads).
    pub ingest_concurrency: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_body: DEFAULT_MAX_BODY,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            connection_lifetime: Duration::from_secs(600),
            ingest_concurrency: 16,
        }
    }
}

/// Everything a running host needs.
#[derive(Debug)]
pub struct Host {
    ingestor: Arc<Ingestor>,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    ingest_permits: Arc<Semaphore>,
}

/// How to build a [`Host`] from a PKI directory.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// Where wallets' cryptogram keys come from: `None` = the PKI's
    /// `issuer-master.key` (development); an HSM in production
    /// ([`tapstack_certs::HsmMasterKey`]).
    pub issuer_keys: Option<Arc<dyn IssuerKeys>>,
    pub verify_mode: VerifyMode,
    pub limits: Limits,
    /// The wallets' ATC window (`--atc-window`).
    pub atc_policy: AtcPolicy,
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Host {
    /// A host with explicit parts.
    pub fn new(
        ingestor: Arc<Ingestor>,
        identity: TlsIdentity,
        limits: Limits,
    ) -> Result<Arc<Self>, Error> {
        let verifier = Arc::new(ClientVerifier::new(
            ingestor.trust().clone(),
            ingestor.revocations().clone(),
        ));
        let tls = tls::server_config(identity, verifier)?;
        let ingest_permits = Arc::new(Semaphore::new(limits.ingest_concurrency.max(1)));
        Ok(Arc::new(Host {
            ingestor,
            tls,
            limits,
            ingest_permits,
        }))
    }

    /// A host for the public half of a `tap-certs init` directory: trusts
    /// its root and intermediates, enforces (and follows changes of) its
    /// revocation list, checks cryptograms with `opts.issuer_keys` (else its
    /// issuer master key file) and serves TLS as `identity` (issued by the
    /// TLS CA). It reads and signs with no CA key.
    pub fn from_pki(
        pki: &tapstack_certs::PublicPki,
        store: Arc<dyn Store>,
        identity: TlsIdentity,
        opts: HostOptions,
    ) -> Result<Arc<Self>, Error> {
        let trust = pki.trust_store().clone();
        let revocations = Arc::new(Revocations::watch(
            &pki.path(tapstack_certs::REVOCATIONS_FILE),
            trust.clone(),
        )?);
        let issuer_keys: Arc<dyn IssuerKeys> = match opts.issuer_keys {
            Some(keys) => keys,
            None => Arc::new(pki.issuer_master_key_file()?.clone()),
        };
        let ingestor = Arc::new(
            Ingestor::new(store, trust, issuer_keys, revocations, opts.verify_mode)?
                .with_atc_policy(opts.atc_policy),
        );
        Host::new(ingestor, identity, opts.limits)
    }

    pub fn ingestor(&self) -> &Arc<Ingestor> {
        &self.ingestor
    }

    /// Serve until `shutdown` completes; then stop accepting and close every
    /// connection (an ingest already running finishes on its own thread:
    /// what it stores stays stored, its answer is lost, a retry gets
    /// `duplicate`).
    /// Serve `GET /metrics` (Prometheus text format, [`crate::metrics`])
    /// in plain HTTP on `listener` until `shutdown`: for a scraper on the
    /// host's network, apart from the upload port, which admits terminals
    /// only. Anything else is 404.
    pub async fn serve_metrics(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        tokio::pin!(shutdown);
        let mut conns = JoinSet::new();
        loop {
            let tcp = tokio::select! {
                () = &mut shutdown => break,
                a = listener.accept() => match a {
                    Ok((tcp, _)) => tcp,
                    Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                },
            };
            let host = self.clone();
            conns.spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let host = host.clone();
                    async move {
                        let r = if req.method() == Method::GET && req.uri().path() == "/metrics" {
                            let store = host.ingestor.store().clone();
                            let metrics = host.ingestor.metrics().clone();
                            // The pool's status is cheap; the store may block.
                            let text =
                                tokio::task::spawn_blocking(move || metrics.render(store.as_ref()))
                                    .await
                                    .unwrap_or_default();
                            let mut r = Response::new(Full::new(Bytes::from(text)));
                            r.headers_mut().insert(
                                CONTENT_TYPE,
                                HeaderValue::from_static("text/plain; version=0.0.4"),
                            );
                            r
                        } else {
                            error(StatusCode::NOT_FOUND, "not_found", "GET /metrics only")
                        };
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = tokio::time::timeout(
                    Duration::from_secs(30),
                    http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(TokioIo::new(tcp), service),
                )
                .await;
            });
            while conns.try_join_next().is_some() {}
        }
        conns.shutdown().await;
        Ok(())
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        let acceptor = TlsAcceptor::from(self.tls.clone());
        let slots = Arc::new(Semaphore::new(self.limits.max_connections.max(1)));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (tcp, _peer) = tokio::select! {
                () = &mut shutdown => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    // EMFILE and friends: back off briefly, keep serving.
                    Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                },
            };
            let _ = tcp.set_nodelay(true);
            let host = self.clone();
            let acceptor = acceptor.clone();
            conns.spawn(async move {
                let _permit = permit;
                let _ = tokio::time::timeout(
                    host.limits.connection_lifetime,
                    host.connection(acceptor, tcp),
                )
                .await;
            });
            // Reap finished connection tasks.
            while conns.try_join_next().is_some() {}
        }
        conns.shutdown().await;
        Ok(())
    }

    async fn connection(self: Arc<Self>, acceptor: TlsAcceptor, tcp: tokio::net::TcpStream) {
        let peer_addr = tcp
            .peer_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        let stream = match tokio::time::timeout(self.limits.handshake_timeout, acceptor.accept(tcp))
            .await
        {
            Ok(Ok(s)) => s,
            // Connected and closed without a byte: a balancer's TCP health
            // check, not a refused client.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(peer = %peer_addr, "connection closed before TLS");
                return;
            }
            Ok(Err(e)) => {
                // Why a client was refused: no certificate, a wrong CA,
                // a role that may not connect, plain HTTP on the port…
                tracing::warn!(peer = %peer_addr, error = %e, "TLS handshake refused");
                return;
            }
            Err(_) => {
                tracing::warn!(peer = %peer_addr, timeout_ms = self.limits.handshake_timeout.as_millis() as u64, "TLS handshake timed out");
                return;
            }
        };
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| Certificate::from_der(c).ok());
        let Some(peer) = peer.map(Arc::new) else {
            return;
        };
        let host = self.clone();
        let service = service_fn(move |req| {
            let host = host.clone();
            let peer = peer.clone();
            async move { Ok::<_, Infallible>(host.handle(&peer, req).await) }
        });
        let _ = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }

    async fn handle(
        &self,
        peer: &Arc<Certificate>,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/v1/health") => {
                json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
            }
            (Method::GET, "/v1/revocations") => {
                let bytes = self.ingestor.revocations().encoded();
                let mut r = Response::new(Full::new(Bytes::from(bytes.as_ref().clone())));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            (Method::POST, "/v1/batches") => self.batches(peer, req).await,
            (_, "/v1/health" | "/v1/revocations" | "/v1/batches") => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this path",
            ),
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
    }

    /// `POST /v1/batches`, with one log line per batch: the terminal, the
    /// counts, the latency — and one per refused record or batch, with why.
    async fn batches(
        &self,
        peer: &Arc<Certificate>,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        let started = std::time::Instant::now();
        let r = self.batch(peer, req).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if !r.status().is_success() {
            self.ingestor.metrics().batch_refused();
            tracing::warn!(terminal = %peer.common_name(), status = r.status().as_u16(), ms, "batch refused");
        }
        r
    }

    async fn batch(
        &self,
        peer: &Arc<Certificate>,
        req: Request<Incoming>,
    ) -> Response<Full<Bytes>> {
        // The TLS handshake admits only terminal TLS certificates
        // (`tls::CLIENT_ROLES`); this is the second line.
        if peer.role() != Role::TerminalTls {
            return error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only a terminal's TLS certificate (tap-certs terminal-tls) may upload batches",
            );
        }
        let body = match read_body(req, self.limits.max_body, self.limits.body_timeout).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let (records, earlier) = match BatchRequest::decode_with_certificates(&body) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
        };
        let earlier = match self.ingestor.earlier_certificates(peer, &earlier) {
            Ok(c) => c,
            Err(e) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "certificate_rejected",
                    &e.to_string(),
                )
            }
        };
        let Ok(permit) = self.ingest_permits.clone().acquire_owned().await else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the host is shutting down",
            );
        };
        let ingestor = self.ingestor.clone();
        let who = peer.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            ingestor.ingest_with_earlier(&who, &earlier, &records, unix_now())
        })
        .await;
        match result {
            Ok(Ok(resp)) => {
                log_batch(peer, &resp, started.elapsed());
                self.ingestor.metrics().batch_done(&resp, started.elapsed());
                json(StatusCode::OK, &resp)
            }
            Ok(Err(e @ Error::IssuerKey { .. })) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "issuer_key_unavailable",
                &format!("nothing was acknowledged: {e}"),
            ),
            Ok(Err(e)) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                &format!("nothing was acknowledged: {e}"),
            ),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "nothing was acknowledged: ingest task failed",
            ),
        }
    }
}

/// One line per batch; one per record the host did not take as sent.
fn log_batch(peer: &Certificate, resp: &crate::wire::BatchResponse, took: Duration) {
    let terminal = peer.common_name();
    tracing::info!(
        terminal = %terminal,
        chain = %resp.terminal.get(..16).unwrap_or_default(),
        records = resp.results.len(),
        accepted = resp.accepted,
        duplicates = resp.duplicates,
        declined = resp.declined,
        rejected = resp.rejected,
        acked_seq = resp.acked_seq,
        ms = took.as_secs_f64() * 1000.0,
        "batch"
    );
    for r in &resp.results {
        let reason = r.reason.map(|x| x.as_str());
        match r.status {
            crate::wire::RecordStatus::Rejected => tracing::warn!(
                terminal = %terminal, seq = r.seq, reason, detail = r.message.as_deref(),
                "record rejected"
            ),
            crate::wire::RecordStatus::Declined => tracing::info!(
                terminal = %terminal, seq = r.seq, reason, detail = r.message.as_deref(),
                "record declined"
            ),
            _ => {}
        }
    }
}

async fn read_body(
    req: Request<Incoming>,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, Response<Full<Bytes>>> {
    let closing = |mut r: Response<Full<Bytes>>| {
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        r
    };
    read_limited(req, max, timeout).await.map_err(|e| match e {
        BodyError::TooLarge => closing(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("request body above {max} bytes"),
        )),
        BodyError::Timeout => closing(error(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "request body not received in time",
        )),
        BodyError::Unreadable => error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            "request body could not be read",
        ),
    })
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &ErrorBody {
            error: code.to_owned(),
            message: message.to_owned(),
        },
    )
}
