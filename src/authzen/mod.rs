//! The OpenID AuthZEN Authorization API 1.0 over HTTP: a thin adapter over
//! the same pipeline as gRPC, so the same limits, cache, spans, metrics
//! (`api="authzen"`) and decision records apply.
//!
//! - `POST /access/v1/evaluation`: one decision.
//! - `POST /access/v1/evaluations`: a batch against one snapshot, with the
//!   spec's defaults and evaluation semantics.
//! - `POST /access/v1/search/{subject,resource,action}`: the candidates an
//!   evaluation allows, paginated ([`search`]).
//! - `GET /.well-known/authzen-configuration`: the PDP metadata.
//!
//! Every evaluation request, even one whose body is not JSON, is handed to
//! the pipeline, so it leaves exactly one record and one metric. The
//! mapping to Cedar is [`mapping`]; the statuses are [`status`].

mod mapping;
mod search;
mod status;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde_json::{Map, Value as Json, json};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::Config;
use crate::identity::PeerFacts;
use crate::metrics::Metrics;
use crate::pipeline::{
    Admission, Answer, Api, BatchStop, Call, DecisionError, DecisionRequest, InvalidField,
    Pipeline, Reason, Rejected, Submitted, span,
};
use crate::policy_store::Snapshot;
use crate::transport::TlsAccept;
use crate::transport::budget::{BufferBudget, Charge};
use crate::transport::http::{self, HttpLimits};
use mapping::{Mapping, Parts};
use search::Kind;

/// The spec's default paths.
pub const EVALUATION_PATH: &str = "/access/v1/evaluation";
/// The batch endpoint.
pub const EVALUATIONS_PATH: &str = "/access/v1/evaluations";
/// The metadata document.
pub const METADATA_PATH: &str = "/.well-known/authzen-configuration";

/// Echoed on every answer, and the record's `request_id`.
const REQUEST_ID_HEADER: &str = "x-request-id";
use crate::pipeline::{DECISION_ID_HEADER, REVISION_HEADER};

/// The AuthZEN front-end: the pipeline, the mapping, the body limit and
/// the process-wide budget bodies are read into.
#[derive(Clone, Debug)]
pub(crate) struct Authzen {
    pipeline: Pipeline,
    mapping: Arc<Mapping>,
    max_body_bytes: usize,
    budget: Arc<BufferBudget>,
    /// `authzen.base_url`, when configured.
    base_url: Option<Arc<str>>,
    /// `https` when the listener does TLS, else `http`.
    scheme: &'static str,
}

impl Authzen {
    /// The front-end `config` describes, over `pipeline`, reading bodies
    /// into `budget`.
    pub(crate) fn new(pipeline: Pipeline, config: &Config, budget: Arc<BufferBudget>) -> Self {
        Self {
            pipeline,
            mapping: Arc::new(Mapping::new(&config.authzen, &config.context_keys)),
            max_body_bytes: config.authzen.max_body_bytes,
            budget,
            base_url: Some(config.authzen.base_url.as_str())
                .filter(|u| !u.is_empty())
                .map(Arc::from),
            scheme: if config.tls.enabled() {
                "https"
            } else {
                "http"
            },
        }
    }

    /// The routes, for [`serve`] and tests. The state is shared, not
    /// cloned per request: a clone is a dozen reference counts bumped on
    /// lines every core writes.
    fn router(self) -> Router {
        Router::new()
            .route(EVALUATION_PATH, post(evaluation))
            .route(EVALUATIONS_PATH, post(evaluations))
            .route(search::SUBJECT_PATH, post(search_subject))
            .route(search::RESOURCE_PATH, post(search_resource))
            .route(search::ACTION_PATH, post(search_action))
            .route(METADATA_PATH, get(metadata))
            .fallback(not_found)
            .with_state(Arc::new(self))
    }
}

/// Serves the AuthZEN API on `listener` (over TLS, with the `[tls]`
/// material, when `tls` is given) until `shutdown` completes, then lets open
/// requests finish; each client is bounded by `limits`.
pub(crate) async fn serve(
    listener: TcpListener,
    limits: HttpLimits,
    authzen: Authzen,
    tls: Option<TlsAccept>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) {
    http::serve(listener, authzen.router(), limits, tls, metrics, shutdown).await;
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// One HTTP request's call: its peer, its trace context, its id, its
/// deadline, and its place in the in-flight gauge.
struct Http {
    call: Call,
    request_id: String,
    timeout: Duration,
    _inflight: crate::metrics::InflightGuard,
}

impl Http {
    fn start(pipeline: &Pipeline, request: &Request, span: Span) -> Self {
        let headers = request.headers();
        if !span.is_disabled() {
            let parent = TraceContextPropagator::new().extract(&Headers(headers));
            let _ = span.set_parent(parent);
        }
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let peer = request
            .extensions()
            .get::<PeerFacts>()
            .cloned()
            .unwrap_or_default();
        Self {
            _inflight: pipeline.metrics().inflight(),
            call: Call::new(peer, text("traceparent"), span).through(Api::Authzen),
            request_id: text(REQUEST_ID_HEADER).unwrap_or_default(),
            timeout: pipeline.timeout(None),
        }
    }

    fn deadline(&self) -> Instant {
        self.call.started + self.timeout
    }

    /// A request refused before it converted, for its record.
    fn rejected(&self, error: InvalidField, reason: Reason) -> Submitted {
        let request = DecisionRequest {
            request_id: self.request_id.clone(),
            ..DecisionRequest::default()
        };
        Err(Box::new(Rejected {
            reason,
            ..Rejected::new(request, error)
        }))
    }

    /// `response` with the caller's `X-Request-ID`, when it sent one.
    fn answer(&self, status: StatusCode, body: &Json, extra: &[(&'static str, &str)]) -> Response {
        let mut response = json_response(status, body);
        let headers = response.headers_mut();
        let pairs: [(&'static str, &str); 1] = [(REQUEST_ID_HEADER, self.request_id.as_str())];
        for (name, value) in pairs.iter().chain(extra) {
            if value.is_empty() {
                continue;
            }
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(*name, value);
            }
        }
        response
    }
}

/// `body` as `application/json`.
fn json_response(status: StatusCode, body: &Json) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Why a body is not an evaluation request, with the reason it is refused for.
type BodyError = (InvalidField, Reason);

/// The body as a JSON object: `Content-Type: application/json`, at most
/// `limit` bytes, all of it by `deadline`. Its bytes are charged to
/// `charge` before they are held: a declared length at once, before any is
/// read, and a chunked body as its buffer grows; past the budget it is
/// refused (`buffer_budget`), not read. The caller keeps the charge until
/// the request is answered.
async fn read_object(
    request: Request,
    limit: usize,
    deadline: Instant,
    charge: &mut Charge,
) -> Result<Map<String, Json>, BodyError> {
    let invalid = |m: &str| (InvalidField::new("body", m), Reason::InvalidRequest);
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        let message = if content_type.is_empty() {
            "`Content-Type` is missing; send `application/json`".to_string()
        } else {
            format!("`Content-Type` is `{content_type}`; send `application/json`")
        };
        return Err((
            InvalidField::new("content-type", message),
            Reason::InvalidRequest,
        ));
    }
    let too_large = || {
        (
            InvalidField::new(
                "body",
                format!("is larger than {limit} bytes (`authzen.max_body_bytes`)"),
            ),
            Reason::LimitExceeded,
        )
    };
    let exhausted = |e: crate::transport::budget::Exhausted| {
        (
            InvalidField::new("body", e.to_string()),
            Reason::BufferBudget,
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    if let Some(n) = declared.and_then(|n| usize::try_from(n).ok()) {
        charge.take(n).map_err(exhausted)?;
        bytes.reserve_exact(n);
    }
    let read = async {
        let mut stream = request.into_body().into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| invalid(&format!("cannot be read: {e}")))?;
            let need = bytes.len() + chunk.len();
            if need > limit {
                return Err(too_large());
            }
            if need > bytes.capacity() {
                // INVARIANT: the charge covers the buffer's capacity.
                let grown = need.max(bytes.capacity().saturating_mul(2)).min(limit);
                charge
                    .take(grown.saturating_sub(charge.held()))
                    .map_err(exhausted)?;
                bytes.reserve_exact(grown - bytes.len());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    let bytes = match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(read) => read?,
        Err(_) => {
            return Err((
                InvalidField::new("body", "did not arrive before `limits.request_timeout`"),
                Reason::Deadline,
            ));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("is empty; send a JSON object"));
    }
    match serde_json::from_slice::<Json>(&bytes) {
        Ok(Json::Object(object)) => Ok(object),
        Ok(_) => Err(invalid("must be a JSON object")),
        Err(e) => Err(invalid(&format!("is not JSON: {e}"))),
    }
}

/// `options.include_reasons`, when it is a boolean.
fn include_reasons(options: Option<&Map<String, Json>>) -> Result<bool, InvalidField> {
    match options.and_then(|o| o.get("include_reasons")) {
        None | Some(Json::Null) => Ok(false),
        Some(Json::Bool(b)) => Ok(*b),
        Some(_) => Err(InvalidField::new(
            "options.include_reasons",
            "must be a boolean",
        )),
    }
}

/// `options`, when it is an object (absent and `null` are no options).
fn options(body: &Map<String, Json>) -> Result<Option<&Map<String, Json>>, InvalidField> {
    match body.get("options") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(o)) => Ok(Some(o)),
        Some(_) => Err(InvalidField::new("options", "must be a JSON object")),
    }
}

/// `options.evaluations_semantic`.
fn semantic(options: Option<&Map<String, Json>>) -> Result<BatchStop, InvalidField> {
    let field = "options.evaluations_semantic";
    match options.and_then(|o| o.get("evaluations_semantic")) {
        None | Some(Json::Null) => Ok(BatchStop::Never),
        Some(Json::String(s)) => match s.as_str() {
            "execute_all" => Ok(BatchStop::Never),
            "deny_on_first_deny" => Ok(BatchStop::FirstDeny),
            "permit_on_first_permit" => Ok(BatchStop::FirstPermit),
            other => Err(InvalidField::new(
                field,
                format!(
                    "`{other}` is not `execute_all`, `deny_on_first_deny` or `permit_on_first_permit`"
                ),
            )),
        },
        Some(_) => Err(InvalidField::new(field, "must be a string")),
    }
}

/// The AuthZEN decision of one answer. Its `context` is there only when
/// reasons were asked for, or (in a batch) to carry an item's error.
fn decision(answer: &Answer, reasons: bool) -> Json {
    match answer {
        Ok(outcome) if reasons => json!({
            "decision": outcome.decision.allow,
            "context": {
                "id": outcome.decision_id,
                "policy_revision": outcome.policy_revision,
                "reason_admin": {
                    "why": outcome.why(),
                    "determining_policies": outcome.decision.determining_policies,
                    "errors": outcome.decision.errors.iter()
                        .map(|e| json!({"policy_id": e.policy_id, "message": e.message}))
                        .collect::<Vec<_>>(),
                },
            },
        }),
        Ok(outcome) => json!({"decision": outcome.decision.allow}),
        Err(refusal) => {
            let mut context = json!({"error": status::item_error(&refusal.error)});
            if reasons {
                context["id"] = json!(refusal.decision_id);
                context["policy_revision"] = json!(refusal.policy_revision);
            }
            json!({"decision": false, "context": context})
        }
    }
}

impl Authzen {
    /// Decides one evaluation and answers it: 200 with the decision, or the
    /// refusal's status and `{error, message}`.
    async fn single(
        &self,
        http: &Http,
        snapshot: Option<Arc<Snapshot>>,
        req: Submitted,
        reasons: bool,
    ) -> Response {
        let admission = Admission::Acquire {
            timeout: http.timeout,
        };
        let answer = self
            .pipeline
            .authorize_on(snapshot, req, &http.call, admission)
            .await;
        match &answer {
            Ok(outcome) => http.answer(
                StatusCode::OK,
                &decision(&answer, reasons),
                &[
                    (DECISION_ID_HEADER, outcome.decision_id.as_str()),
                    (REVISION_HEADER, outcome.policy_revision.as_str()),
                ],
            ),
            Err(refusal) => self.refused(http, &refusal.error, &refusal.decision_id),
        }
    }

    fn refused(&self, http: &Http, error: &DecisionError, decision_id: &str) -> Response {
        http.answer(
            status::http_status(error.reason),
            &status::error_body(error),
            &[(DECISION_ID_HEADER, decision_id)],
        )
    }

    /// A body that is not a request at all, refused through the pipeline so
    /// that it is recorded and counted like any other refusal.
    async fn refuse_body(&self, http: &Http, (error, reason): BodyError) -> Response {
        let snapshot = self.pipeline.store().snapshot();
        self.single(http, snapshot, http.rejected(error, reason), false)
            .await
    }

    /// One evaluation of `parts`.
    fn convert(&self, parts: Parts<'_>, http: &Http, prefix: &str) -> Submitted {
        self.mapping.request(parts, &http.request_id, prefix)
    }
}

async fn evaluation(State(az): State<Arc<Authzen>>, request: Request) -> Response {
    let http = Http::start(&az.pipeline, &request, span::authorize(None));
    let mut charge = az.budget.charge();
    let body = match read_object(request, az.max_body_bytes, http.deadline(), &mut charge).await {
        Ok(body) => body,
        Err(e) => return az.refuse_body(&http, e).await,
    };
    let reasons = match options(&body).and_then(include_reasons) {
        Ok(r) => r,
        Err(e) => return az.refuse_body(&http, (e, Reason::InvalidRequest)).await,
    };
    let snapshot = az.pipeline.store().snapshot();
    let req = az.convert(Parts::take(body), &http, "");
    az.single(&http, snapshot, req, reasons).await
}

async fn evaluations(State(az): State<Arc<Authzen>>, request: Request) -> Response {
    let http = Http::start(&az.pipeline, &request, span::batch());
    let mut charge = az.budget.charge();
    let mut body = match read_object(request, az.max_body_bytes, http.deadline(), &mut charge).await
    {
        Ok(body) => body,
        Err(e) => return az.refuse_body(&http, e).await,
    };
    let opts = options(&body).and_then(|o| Ok((include_reasons(o)?, semantic(o)?)));
    let (reasons, stop) = match opts {
        Ok(o) => o,
        Err(e) => return az.refuse_body(&http, (e, Reason::InvalidRequest)).await,
    };
    // Taken out, so that each item's parts move into its request.
    let items = match body.remove("evaluations") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(items)) => items,
        Some(_) => {
            let e = InvalidField::new("evaluations", "must be an array");
            return az.refuse_body(&http, (e, Reason::InvalidRequest)).await;
        }
    };
    let defaults = Parts::of(&body);
    let snapshot = az.pipeline.store().snapshot();
    // Without items, the request is a single evaluation, answered as one.
    if items.is_empty() {
        let req = az.convert(defaults, &http, "");
        return az.single(&http, snapshot, req, reasons).await;
    }
    http.call
        .span
        .record("cedar.batch_size", items.len() as u64);
    // The body limit bounds the items; the pipeline refuses (and records)
    // a batch over `limits.max_batch_size` as a whole.
    let submitted: Vec<Submitted> = items
        .into_iter()
        // The pipeline names each item's errors `evaluations[i]`.
        .map(|item| match item {
            Json::Object(item) => az.convert(Parts::take(item).or(&defaults), &http, ""),
            _ => {
                let e = InvalidField::new("", "must be a JSON object");
                http.rejected(e, Reason::InvalidRequest)
            }
        })
        .collect();
    let answers = az
        .pipeline
        .authorize_batch_on(
            snapshot,
            submitted,
            Ok(Vec::new()),
            &http.call,
            http.timeout,
            stop,
        )
        .await;
    match answers {
        Ok(answers) => {
            let evaluations: Vec<Json> = answers.iter().map(|a| decision(a, reasons)).collect();
            http.answer(StatusCode::OK, &json!({"evaluations": evaluations}), &[])
        }
        Err(error) => http.answer(
            status::http_status(error.reason),
            &status::error_body(&error),
            &[],
        ),
    }
}

async fn search_subject(State(az): State<Arc<Authzen>>, request: Request) -> Response {
    search_on(az, request, Kind::Subject).await
}

async fn search_resource(State(az): State<Arc<Authzen>>, request: Request) -> Response {
    search_on(az, request, Kind::Resource).await
}

async fn search_action(State(az): State<Arc<Authzen>>, request: Request) -> Response {
    search_on(az, request, Kind::Action).await
}

async fn search_on(az: Arc<Authzen>, request: Request, kind: Kind) -> Response {
    let http = Http::start(&az.pipeline, &request, span::search(kind.key()));
    let mut charge = az.budget.charge();
    let response = match read_object(request, az.max_body_bytes, http.deadline(), &mut charge).await
    {
        Ok(body) => az.search(&http, kind, body).await,
        Err(e) => az.refuse_body(&http, e).await,
    };
    if response.status() != StatusCode::OK {
        az.pipeline.metrics().search(kind.key(), "refused");
    }
    response
}

/// The PDP metadata: its identifier, every endpoint it serves, and its
/// `capabilities`: an empty list, because the spec allows only URNs from
/// the IANA capabilities registry, which registers none yet.
async fn metadata(State(az): State<Arc<Authzen>>, request: Request) -> Response {
    let base = match &az.base_url {
        Some(base) => base.to_string(),
        None => {
            let host = request
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .or_else(|| request.uri().authority().map(|a| a.to_string()));
            match host.filter(|h| h.parse::<axum::http::uri::Authority>().is_ok()) {
                Some(host) => format!("{}://{host}", az.scheme),
                None => {
                    let body = json!({
                        "error": "invalid_request",
                        "message": "the request names no valid `Host`; set `authzen.base_url`",
                    });
                    return json_response(StatusCode::BAD_REQUEST, &body);
                }
            }
        }
    };
    let body = json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}{EVALUATION_PATH}"),
        "access_evaluations_endpoint": format!("{base}{EVALUATIONS_PATH}"),
        "search_subject_endpoint": format!("{base}{}", search::SUBJECT_PATH),
        "search_resource_endpoint": format!("{base}{}", search::RESOURCE_PATH),
        "search_action_endpoint": format!("{base}{}", search::ACTION_PATH),
        "capabilities": [],
    });
    json_response(StatusCode::OK, &body)
}

async fn not_found(request: Request<Body>) -> Response {
    let body = json!({
        "error": "not_found",
        "message": format!(
            "`{}` is not an AuthZEN endpoint; see `{METADATA_PATH}`",
            request.uri().path()
        ),
    });
    json_response(StatusCode::NOT_FOUND, &body)
}
