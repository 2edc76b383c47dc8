//! The local HTTP+JSON API of `tap-terminal serve` (hyper, HTTP/1.1).
//! The contract is `docs/terminal-api.yaml`; errors are
//! `{"error": "<code>", "message": "<text>"}` with a stable code.
//!
//! ```text
//!  POST   /v1/intents              create (Idempotency-Key: same key → same intent)
//!  GET    /v1/intents/{id}[?wait=S] state; long-poll up to S (≤ 60) seconds for the end
//!  GET    /v1/intents/{id}/events  Server-Sent Events: every state change, then the end
//!  DELETE /v1/intents/{id}         cancel (not while a phone is being read)
//!  GET    /v1/queue                what waits for upload, the last sync
//!  GET    /v1/transactions?limit=N the newest records still held
//!  POST   /v1/sync                 upload now
//!  GET    /v1/health
//! ```

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{
    HeaderMap, HeaderValue, ALLOW, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HOST, LOCATION,
    RETRY_AFTER,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde_json::{Map, Value};
use tapstack_protocol::scenario::MAX_CART_ITEMS;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::daemon::{CancelRefused, CreateRefused, Daemon, Event, IntentCell, Shared, SyncStatus};
use crate::request::{parse_currency, IntentRequest};
use crate::tap::{Intent, Terms};
use crate::Error;

type RespBody = BoxBody<Bytes, Infallible>;
type Resp = Response<RespBody>;
type Handled = Result<Resp, ApiError>;

/// Largest `Idempotency-Key`.
const MAX_KEY: usize = 255;
/// Most transactions one `GET /v1/transactions` returns.
const MAX_LIMIT: usize = 1000;
/// SSE comment sent when nothing happened for this long.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Accept connections until `stop`, then let open ones finish (the caller
/// bounds how long).
impl Daemon {
    /// Serve the local API on `listener` until `shutdown` completes (or the
    /// reader thread dies: an error). Then: stop accepting, let the reader
    /// finish a tap in flight and cancel what waits, let open requests
    /// finish (up to `Options::grace`), stop the uploader.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        self.serve_with(
            move |shared, stop| serve_http(shared, listener, stop),
            shutdown,
        )
        .await
    }
}

pub(crate) async fn serve_http(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let slots = Arc::new(Semaphore::new(shared.opts.max_connections.max(1)));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = crate::daemon::stopped(&mut stop) => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let tcp = tokio::select! {
            () = crate::daemon::stopped(&mut stop) => break,
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                // EMFILE and friends: back off briefly, keep serving.
                Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let mut stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            let svc_shared = shared.clone();
            let service = service_fn(move |req| {
                let shared = svc_shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, loopback, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(shared.opts.header_timeout)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                () = crate::daemon::stopped(&mut stop) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

// ---------------------------------------------------------------- responses

#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    fn response(self) -> Resp {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: &'a str,
        }
        json(
            self.status,
            &Body {
                error: self.code,
                message: &self.message,
            },
        )
    }
}

fn full(bytes: impl Into<Bytes>) -> RespBody {
    Full::new(bytes.into()).boxed()
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    let mut bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    let mut r = Response::new(full(bytes));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Resp {
    ApiError::new(status, code, message).response()
}

// ---------------------------------------------------------------- routing

async fn handle(shared: &Arc<Shared>, loopback: bool, req: Request<Incoming>) -> Resp {
    if loopback {
        if let Err(e) = check_host(req.headers()) {
            return e.response();
        }
    }
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(&path).split('/').collect();
    let method = req.method().clone();
    let result = match (&method, segments.as_slice()) {
        (&Method::POST, ["v1", "intents"]) => create_intent(shared, req).await,
        (&Method::GET, ["v1", "intents", id]) => get_intent(shared, id, &query).await,
        (&Method::DELETE, ["v1", "intents", id]) => cancel_intent(shared, id),
        (&Method::GET, ["v1", "intents", id, "events"]) => events(shared, id, req.headers()),
        (&Method::GET, ["v1", "queue"]) => {
            queue_view(shared).await.map(|v| json(StatusCode::OK, &v))
        }
        (&Method::GET, ["v1", "transactions"]) => transactions(shared, &query).await,
        (&Method::POST, ["v1", "sync"]) => sync(shared).await,
        (&Method::GET, ["v1", "health"]) => Ok(health(shared)),
        (_, path_segments) => {
            let allow = match path_segments {
                ["v1", "intents"] | ["v1", "sync"] => Some("POST"),
                ["v1", "intents", _] => Some("GET, DELETE"),
                ["v1", "intents", _, "events"]
                | ["v1", "queue"]
                | ["v1", "transactions"]
                | ["v1", "health"] => Some("GET"),
                _ => None,
            };
            match allow {
                Some(allow) => {
                    let mut r = error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        format!("{method} is not allowed on {path} (allowed: {allow})"),
                    );
                    r.headers_mut()
                        .insert(ALLOW, HeaderValue::from_static(allow));
                    Ok(r)
                }
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no endpoint {path}"),
                )),
            }
        }
    };
    result.unwrap_or_else(ApiError::response)
}

/// Bound to a loopback address, the API answers only requests addressed to
/// a loopback name: a web page cannot reach it by DNS rebinding.
fn check_host(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(host) = headers.get(HOST) else {
        return Ok(());
    };
    let host = host.to_str().unwrap_or("");
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let ok = name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            format!("Host {host:?} is not a loopback name; this API answers only local clients"),
        ))
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

// ---------------------------------------------------------------- body

/// Read a body of at most `max` bytes within `timeout`. Beyond `max` the
/// rest is read and dropped up to a cap, so the client sees the 413 rather
/// than a reset; then the connection closes.
async fn read_body(req: Request<Incoming>, max: usize, timeout: Duration) -> Result<Vec<u8>, Resp> {
    use tapstack_upload::http::{read_limited, BodyError};
    let closing = |mut r: Resp| {
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        r
    };
    read_limited(req, max, timeout).await.map_err(|e| match e {
        BodyError::TooLarge => closing(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body above {max} bytes"),
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

// ---------------------------------------------------------------- intents

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad(
            "bad_idempotency_key",
            "more than one Idempotency-Key header",
        ));
    }
    let bytes = v.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY || !bytes.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return Err(ApiError::bad(
            "bad_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

async fn create_intent(shared: &Arc<Shared>, req: Request<Incoming>) -> Handled {
    if shared.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the terminal is shutting down",
        ));
    }
    if !is_json(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the intent as Content-Type: application/json",
        ));
    }
    let key = idempotency_key(req.headers())?;
    let body = match read_body(req, shared.opts.max_body, shared.opts.body_timeout).await {
        Ok(b) => b,
        Err(r) => return Ok(r),
    };
    let (intent, request) = parse_intent(shared, &body)?;
    // What may have changed since a first request with this key (the clock,
    // the queue) is checked for new intents only: a retry gets its intent.
    if !key.as_deref().is_some_and(|k| shared.knows_key(k)) {
        check_now(shared, &intent).await?;
    }
    let cell = IntentCell::new(intent, request, key, shared.terminal.tap_timeout);
    match shared.create(cell) {
        Ok((cell, created)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut r = json(status, &cell.view());
            if let Ok(v) = HeaderValue::from_str(&format!("/v1/intents/{}", cell.id)) {
                r.headers_mut().insert(LOCATION, v);
            }
            if !created {
                r.headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            Ok(r)
        }
        Err(CreateRefused::KeyConflict(id)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            format!("this Idempotency-Key was used for intent {id} with another request"),
        )),
        Err(CreateRefused::TooMany(n)) => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_intents",
                format!("{n} intents are already waiting; try again when one has ended"),
            );
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(r)
        }
        Err(CreateRefused::ShuttingDown) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the terminal is shutting down",
        )),
    }
}

/// Parse and validate a request; the returned value is the request as
/// received (echoed back and compared for idempotency). Three steps: the
/// JSON's shape (what is missing, unknown or of the wrong type: 400, with
/// the field's path), then the [`IntentRequest`] the CLI reads too, then
/// the one conversion to an intent both share ([`IntentRequest::to_intent`]:
/// 422 with its code; a missing pickup site is a 400).
fn parse_intent(shared: &Shared, body: &[u8]) -> Result<(Intent, Value), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("bad_json", format!("request body is not JSON: {e}")))?;
    check_shape(&shared.terminal.terms, &value)?;
    let request: IntentRequest = serde_json::from_value(value.clone())
        .map_err(|e| ApiError::bad("bad_json", format!("request body: {e}")))?;
    let terminal = &shared.terminal;
    let intent = request
        .to_intent(&terminal.terms, terminal.kiosk_site.as_deref())
        .map_err(|r| match r.code {
            "missing_field" => ApiError::bad(r.code, r.message),
            _ => ApiError::invalid(r.code, r.message),
        })?;
    Ok((intent, value))
}

/// The rest of the CLI's checks before a tap (`tap::check_intent`): the
/// terminal's certificate now, and the queue's caps given what it holds. A
/// queue that cannot be read is left to the tap (declined `storage`).
async fn check_now(shared: &Arc<Shared>, intent: &Intent) -> Result<(), ApiError> {
    let queue = shared.queue.clone();
    let queued = tokio::task::spawn_blocking(move || crate::tap::risk_state(queue.as_ref())).await;
    let queued = match queued {
        Ok(Ok(state)) => state,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "queue unreadable: the caps are checked at the tap");
            crate::risk::RiskState::default()
        }
        Err(_) => crate::risk::RiskState::default(),
    };
    let terms = &shared.terminal.terms;
    crate::tap::check_intent(
        terms,
        &shared.terminal.limits,
        &queued,
        intent,
        crate::unix_now(),
    )
    .map(|_| ())
    .map_err(|d| ApiError::invalid(d.code(), terms.explain(&d)))
}

/// The request's JSON shape, field by field, before serde reads it: every
/// problem named by its path (`cart.items[0].qty`). A JSON number where an
/// amount goes is refused as `bad_amount` (a float cannot carry money), a
/// quantity that is not a whole number from 1 as `bad_cart`. The currency
/// is checked as soon as it is read (before any amount, which is read in
/// its minor units): a request with several faults gets the first.
fn check_shape(terms: &Terms, value: &Value) -> Result<(), ApiError> {
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::bad("bad_json", "the request body must be a JSON object"))?;
    let kind = match obj.get("kind") {
        Some(Value::String(k)) => k.as_str(),
        Some(_) => {
            return Err(ApiError::bad(
                "bad_field",
                "kind must be a string: pay, order or pickup",
            ))
        }
        None => {
            return Err(ApiError::bad(
                "missing_field",
                "kind is required: pay, order or pickup",
            ))
        }
    };
    match kind {
        "pay" => {
            only_fields(obj, "", &["kind", "amount", "currency"])?;
            currency_shape(terms, obj, "")?;
            amount_shape(obj, "", "amount")
        }
        "order" => {
            only_fields(obj, "", &["kind", "cart"])?;
            let cart = match obj.get("cart") {
                Some(Value::Object(c)) => c,
                Some(_) => {
                    return Err(ApiError::bad(
                        "bad_field",
                        "cart must be an object {\"currency\": …, \"items\": […]}",
                    ))
                }
                None => {
                    return Err(ApiError::bad(
                        "missing_field",
                        "cart is required for an order",
                    ))
                }
            };
            cart_shape(terms, cart)
        }
        "pickup" => {
            only_fields(obj, "", &["kind", "site"])?;
            text_field(obj, "", "site", false)
        }
        other => Err(ApiError::invalid(
            "bad_kind",
            format!("kind {other:?} is not pay, order or pickup"),
        )),
    }
}

fn only_fields(obj: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), ApiError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad(
            "unknown_field",
            format!("unknown field {at}{k} (allowed: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// `name` is a string (or absent, unless `required`).
fn text_field(
    obj: &Map<String, Value>,
    at: &str,
    name: &str,
    required: bool,
) -> Result<(), ApiError> {
    match obj.get(name) {
        Some(Value::String(_)) => Ok(()),
        Some(_) => Err(ApiError::bad(
            "bad_field",
            format!("{at}{name} must be a string"),
        )),
        None if required => Err(ApiError::bad(
            "missing_field",
            format!("{at}{name} is required"),
        )),
        None => Ok(()),
    }
}

fn amount_shape(obj: &Map<String, Value>, at: &str, name: &str) -> Result<(), ApiError> {
    match obj.get(name) {
        Some(Value::String(_)) | None => text_field(obj, at, name, true),
        Some(_) => Err(ApiError::invalid(
            "bad_amount",
            format!("{at}{name} must be a decimal string like \"12.50\", not a JSON number"),
        )),
    }
}

/// `currency` is a string, an ISO 4217 code, and the terminal's.
fn currency_shape(terms: &Terms, obj: &Map<String, Value>, at: &str) -> Result<(), ApiError> {
    let expected = terms.currency;
    match obj.get("currency") {
        Some(Value::String(text)) => parse_currency(terms, text, &format!("{at}currency"))
            .map(|_| ())
            .map_err(|r| ApiError::invalid(r.code, r.message)),
        Some(_) => Err(ApiError::bad(
            "bad_field",
            format!("{at}currency must be a string like \"{expected}\""),
        )),
        None => Err(ApiError::bad(
            "missing_field",
            format!("{at}currency is required"),
        )),
    }
}

fn cart_shape(terms: &Terms, cart: &Map<String, Value>) -> Result<(), ApiError> {
    only_fields(cart, "cart.", &["currency", "items"])?;
    currency_shape(terms, cart, "cart.")?;
    let items = match cart.get("items") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad("bad_field", "cart.items must be an array")),
        None => return Err(ApiError::bad("missing_field", "cart.items is required")),
    };
    // Before the items: a cart of none, or of too many (CartRequest::to_cart
    // says the same; here it comes before any item's fault).
    if items.is_empty() || items.len() > MAX_CART_ITEMS {
        return Err(ApiError::invalid(
            "bad_cart",
            format!("a cart has 1 to {MAX_CART_ITEMS} items"),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        let at = format!("cart.items[{i}].");
        let Value::Object(item) = item else {
            return Err(ApiError::bad(
                "bad_field",
                format!("cart.items[{i}] must be an object"),
            ));
        };
        only_fields(item, &at, &["sku", "name", "qty", "price"])?;
        text_field(item, &at, "sku", true)?;
        text_field(item, &at, "name", true)?;
        match item.get("qty") {
            Some(Value::Number(n)) if n.as_u64().is_some_and(|q| u32::try_from(q).is_ok()) => {}
            Some(Value::Number(_)) => {
                return Err(ApiError::invalid(
                    "bad_cart",
                    format!("{at}qty must be a whole number from 1"),
                ))
            }
            Some(_) => {
                return Err(ApiError::bad(
                    "bad_field",
                    format!("{at}qty must be a number"),
                ))
            }
            None => {
                return Err(ApiError::bad(
                    "missing_field",
                    format!("{at}qty is required"),
                ))
            }
        }
        amount_shape(item, &at, "price")?;
    }
    Ok(())
}

fn lookup(shared: &Shared, id: &str) -> Result<Arc<IntentCell>, ApiError> {
    shared.get(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_intent",
            format!("no intent {id} (unknown, or finished long ago)"),
        )
    })
}

async fn get_intent(shared: &Arc<Shared>, id: &str, query: &str) -> Handled {
    let cell = lookup(shared, id)?;
    let wait = match query_param(query, "wait") {
        None => Duration::ZERO,
        Some(v) => match v.parse::<u64>() {
            Ok(s) => Duration::from_secs(s).min(shared.opts.max_wait),
            Err(_) => {
                return Err(ApiError::bad(
                    "bad_query",
                    format!(
                        "wait must be whole seconds (0 to {})",
                        shared.opts.max_wait.as_secs()
                    ),
                ))
            }
        },
    };
    if !wait.is_zero() {
        let mut rx = cell.subscribe();
        let until = tokio::time::Instant::now() + wait;
        while !cell.is_final() {
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
    }
    Ok(json(StatusCode::OK, &cell.view()))
}

fn cancel_intent(shared: &Arc<Shared>, id: &str) -> Handled {
    let cell = lookup(shared, id)?;
    match shared.cancel(&cell) {
        Ok(()) => Ok(json(StatusCode::OK, &cell.view())),
        Err(CancelRefused::TapInProgress) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "tap_in_progress",
            "a phone is being read for this intent; wait for the outcome",
        )),
        Err(CancelRefused::AlreadyFinal(state)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_final",
            format!("the intent already ended: {state}"),
        )),
    }
}

// ---------------------------------------------------------------- SSE

/// A streamed body fed from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn sse_event(id: &str, e: &Event) -> Bytes {
    #[derive(Serialize)]
    struct Data<'a> {
        intent: &'a str,
        #[serde(flatten)]
        event: &'a Event,
    }
    let data = serde_json::to_string(&Data {
        intent: id,
        event: e,
    })
    .unwrap_or_default();
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {data}\n\n",
        e.seq, e.state
    ))
}

fn events(shared: &Arc<Shared>, id: &str, headers: &HeaderMap) -> Handled {
    let cell = lookup(shared, id)?;
    // A reconnecting EventSource resumes after the last event it saw.
    let mut next = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(1, |n| n + 1);
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut changes = cell.subscribe();
        loop {
            let (list, done) = cell.events_from(next);
            for e in &list {
                if tx.send(sse_event(&cell.id, e)).await.is_err() {
                    return;
                }
                next = e.seq + 1;
            }
            if done {
                return;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = tokio::time::sleep(KEEP_ALIVE) => {
                    if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() { return }
                }
                () = tx.closed() => return,
            }
        }
    });
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

// ---------------------------------------------------------------- queue, transactions, sync, health

#[derive(Debug, Serialize)]
struct QueueView {
    /// Records waiting for upload.
    pending: u32,
    /// Their total, minor units of `currency` (pickups count 0).
    pending_amount: u64,
    currency: String,
    /// `recorded_at` of the oldest pending record.
    oldest: Option<u64>,
    /// Newest sequence number ever used.
    head_seq: u64,
    /// Highest sequence number the host acknowledged.
    acked_seq: u64,
    intents: IntentsView,
    /// The queue's integrity: damage found, storage errors.
    integrity: crate::queue::Integrity,
    /// `null` without a `[host]` section.
    last_sync: Option<SyncStatus>,
}

#[derive(Debug, Serialize)]
struct IntentsView {
    open: usize,
    active: Option<String>,
}

async fn queue_view(shared: &Arc<Shared>) -> Result<QueueView, ApiError> {
    let queue = shared.queue.clone();
    let facts = tokio::task::spawn_blocking(move || -> Result<_, crate::Error> {
        let state = crate::tap::risk_state(queue.as_ref())?;
        Ok((state, queue.head()?.0, queue.acked()?))
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "queue task failed",
        )
    })?
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "queue_error",
            e.to_string(),
        )
    })?;
    let (state, head, acked) = facts;
    Ok(QueueView {
        pending: state.queued_count,
        pending_amount: state.queued_amount,
        currency: shared.terminal.terms.currency.to_string(),
        oldest: state.oldest,
        head_seq: head,
        acked_seq: acked,
        intents: IntentsView {
            open: shared.open_intents().len(),
            active: shared.reader_status().active_intent,
        },
        integrity: shared.queue.integrity(),
        last_sync: shared.uploader.as_ref().map(|u| u.status()),
    })
}

async fn transactions(shared: &Arc<Shared>, query: &str) -> Handled {
    let limit = match query_param(query, "limit") {
        None => 20,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => n.min(MAX_LIMIT),
            _ => {
                return Err(ApiError::bad(
                    "bad_query",
                    format!("limit must be a whole number from 1 to {MAX_LIMIT}"),
                ))
            }
        },
    };
    let queue = shared.queue.clone();
    let result = tokio::task::spawn_blocking(move || {
        crate::report::TransactionView::recent(queue.as_ref(), limit)
    })
    .await;
    match result {
        Ok(Ok(list)) => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "transactions": list }),
        )),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "queue_error",
            e.to_string(),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "queue task failed",
        )),
    }
}

async fn sync(shared: &Arc<Shared>) -> Handled {
    let Some(up) = &shared.uploader else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_host",
            "no [host] in the configuration: nothing to upload to",
        ));
    };
    if shared.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the terminal is shutting down",
        ));
    }
    match up.sync_now().await {
        Ok(report) => {
            let queue = queue_view(shared).await.ok();
            Ok(json(
                StatusCode::OK,
                &serde_json::json!({ "report": report, "queue": queue }),
            ))
        }
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upload_failed",
            format!("{e}; nothing approved is lost, the records stay queued"),
        )),
    }
}

fn health(shared: &Arc<Shared>) -> Resp {
    let reader = shared.reader_status();
    let stopping = shared.shutting_down.load(Ordering::SeqCst);
    let queue = shared.queue.integrity();
    // The terminal's own certificate: expired or not yet valid, every
    // intent is refused (`terminal_certificate_expired`, …).
    let certificate = shared.terminal.terms.check_certificate(crate::unix_now());
    // Why it is degraded, in stable words.
    let mut problems = Vec::new();
    if queue.storage_error.is_some() {
        problems.push("storage");
    }
    if !queue.damaged.is_empty() {
        problems.push("queue_damaged");
    }
    if certificate.is_err() {
        problems.push("certificate");
    }
    if !reader.ok || !reader.running {
        problems.push("reader");
    }
    // Refresh failing, list overdue or past its grace (then nothing is approved).
    let revocations = shared.revocation_state(crate::unix_now());
    if revocations.as_ref().is_some_and(|r| r.is_problem()) {
        problems.push("revocations");
    }
    let status = if stopping {
        "shutting_down"
    } else if !problems.is_empty() {
        "degraded"
    } else {
        "ok"
    };
    let terms = &shared.terminal.terms;
    let certificate = serde_json::json!({
        "status": match &certificate {
            Ok(()) => "valid",
            Err(d) => d.code(),
        },
        "not_before": terms.not_before,
        "not_after": terms.not_after,
        "message": certificate.err().map(|d| d.to_string()),
    });
    let body = serde_json::json!({
        "status": status,
        "terminal": shared.terminal.name,
        "currency": shared.terminal.terms.currency.to_string(),
        "version": env!("CARGO_PKG_VERSION"),
        "reader": reader,
        "problems": problems,
        "queue": queue,
        "certificate": certificate,
        "revocations": revocations,
        "host_configured": shared.uploader.is_some(),
        "last_sync_ok": shared.uploader.as_ref().and_then(|u| u.status().ok),
    });
    json(
        if stopping {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        },
        &body,
    )
}
