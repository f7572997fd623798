//! The routes: matching, role checks, and one handler per route.
//!
//! Order of checks for every request: route (404, or 405 with `Allow`),
//! role (401, 403; before any body is read), `HXO_ENABLED` (503 for
//! `/api/hxo/*`), body size (413, from `Content-Length` before reading,
//! and a capped read), then the handler. Errors are JSON `{"error": ...}`;
//! plan errors add `"path"`, the JSON path they name.

use super::auth::{Access, Denied, Role};
use super::server::{BodyError, Exchange, Reply};
use super::{sse, App};
use crate::engine::lifecycle::AbortOutcome;
use crate::engine::EngineError;
use crate::events;
use crate::ids::{plan_id_text, PlanId};
use crate::plan::{PlanError, PlanSpec};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Every route the server serves: method and path template. The router
/// matches requests against this table, and `openapi.json` must describe
/// exactly these (a test checks).
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", CREATE_AND_SUBMIT),
    ("POST", PLAN),
    ("POST", SUBMIT),
    ("GET", STATUS),
    ("GET", REPORT),
    ("POST", ABORT),
    ("POST", REPLAY),
    ("GET", PLANS),
    ("GET", PROOF),
    ("GET", EVENTS),
    ("GET", STREAM),
    ("GET", METRICS),
    ("GET", HEALTHZ),
    ("GET", DASHBOARD),
];

const CREATE_AND_SUBMIT: &str = "/api/hxo/create-and-submit";
const PLAN: &str = "/api/hxo/plan";
const SUBMIT: &str = "/api/hxo/submit";
const STATUS: &str = "/api/hxo/status/{plan_id}";
const REPORT: &str = "/api/hxo/report/{plan_id}";
const ABORT: &str = "/api/hxo/abort/{plan_id}";
const REPLAY: &str = "/api/hxo/replay/{plan_id}";
const PLANS: &str = "/api/hxo/plans";
const PROOF: &str = "/api/hxo/proof/{plan_id}/{cas_id}";
const EVENTS: &str = "/api/genesis/events";
const STREAM: &str = "/api/genesis/stream";
const METRICS: &str = "/metrics";
const HEALTHZ: &str = "/healthz";
const DASHBOARD: &str = "/";

/// How long an abort waits for a running plan to stop before answering.
const ABORT_WAIT: Duration = Duration::from_secs(10);

fn access_of(template: &str) -> Access {
    match template {
        HEALTHZ | DASHBOARD => Access::Public,
        CREATE_AND_SUBMIT | PLAN | SUBMIT | ABORT | REPLAY => Access::Admiral,
        _ => Access::View,
    }
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// The JSON path a plan error names.
    pub path: Option<String>,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            path: None,
            headers: Vec::new(),
        }
    }

    fn reply(self) -> Reply {
        let mut body = json!({ "error": self.message });
        if let Some(path) = self.path {
            body["path"] = Value::String(path);
        }
        let mut reply = Reply::json(self.status, &body);
        reply.headers = self.headers;
        reply
    }
}

impl From<PlanError> for ApiError {
    fn from(error: PlanError) -> ApiError {
        ApiError {
            status: 400,
            message: error.to_string(),
            path: Some(error.path.clone()),
            headers: Vec::new(),
        }
    }
}

impl From<EngineError> for ApiError {
    /// Every engine error's status, one arm each: a new variant must be
    /// placed here before it compiles.
    fn from(error: EngineError) -> ApiError {
        match &error {
            EngineError::Invalid(compile) => ApiError {
                status: 400,
                message: error.to_string(),
                path: Some(compile.path()),
                headers: Vec::new(),
            },
            EngineError::UnknownPlan(_) | EngineError::UnknownShard { .. } => {
                ApiError::new(404, error.to_string())
            }
            EngineError::InputsChanged { .. }
            | EngineError::WrongState { .. }
            | EngineError::NothingToReplay { .. }
            | EngineError::NoRoot { .. }
            | EngineError::Running(_)
            | EngineError::Merge(_) => ApiError::new(409, error.to_string()),
            EngineError::AtCapacity { .. } => {
                ApiError::new(503, error.to_string()).with_header("Retry-After", "1")
            }
            EngineError::Store(_)
            | EngineError::Uncertifiable { .. }
            | EngineError::Spawn(_)
            | EngineError::Output(_) => {
                let message = chain(&error);
                tracing::error!("http: {message}");
                ApiError::new(500, message)
            }
        }
    }
}

/// An error's text with its causes, for an answer that has no room for a
/// chain.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

type Outcome = Result<Reply, ApiError>;

/// The route a path and method match.
enum Lookup<'a> {
    Found(&'static str, Vec<&'a str>),
    WrongMethod(Vec<&'static str>),
    Missing,
}

fn match_template<'a>(template: &str, path: &'a str) -> Option<Vec<&'a str>> {
    if template == path {
        return Some(Vec::new());
    }
    let mut params = Vec::new();
    let mut wanted = template.split('/');
    let mut given = path.split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(g)) if w.starts_with('{') => {
                if g.is_empty() {
                    return None;
                }
                params.push(g);
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

fn lookup<'a>(method: &str, path: &'a str) -> Lookup<'a> {
    let mut allowed = Vec::new();
    for (route_method, template) in ROUTES {
        if let Some(params) = match_template(template, path) {
            if *route_method == method {
                return Lookup::Found(template, params);
            }
            allowed.push(*route_method);
        }
    }
    if allowed.is_empty() {
        Lookup::Missing
    } else {
        Lookup::WrongMethod(allowed)
    }
}

/// Decodes `%XX` and `+` of a query component.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        index += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(text: &str) -> Query {
        Query(
            text.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(key), decode(value))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::new(400, format!("{key}: expected a whole number, got {v:?}"))
                })
            })
            .transpose()
    }

    fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("0" | "false" | "no") => Ok(false),
            Some("1" | "true" | "yes") => Ok(true),
            Some(other) => Err(ApiError::new(
                400,
                format!("{key}: expected true or false, got {other:?}"),
            )),
        }
    }
}

/// Answers one request.
pub fn handle(app: &Arc<App>, mut exchange: Exchange) {
    let url = exchange.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let query = Query::parse(query);
    let method = exchange.method().to_string();
    let (template, params) = match lookup(&method, path) {
        Lookup::Found(template, params) => (template, params),
        Lookup::WrongMethod(allowed) => {
            let mut error = ApiError::new(
                405,
                format!(
                    "{method} is not allowed on {path}; use {}",
                    allowed.join(", ")
                ),
            );
            error.headers.push(("Allow", allowed.join(", ")));
            return send(app, exchange, Err(error));
        }
        Lookup::Missing => {
            return send(
                app,
                exchange,
                Err(ApiError::new(404, format!("no route {path}"))),
            );
        }
    };
    // Roles first: nothing of the body is read for a refused request. The
    // `token` query parameter is for EventSource, which cannot send headers.
    let query_token = if template == STREAM {
        query.get("token")
    } else {
        None
    };
    let role = match app.tokens.authorize(
        access_of(template),
        exchange.header("Authorization"),
        query_token,
    ) {
        Ok(role) => role,
        Err(Denied::Unauthenticated(message)) => {
            let mut error = ApiError::new(401, message);
            error
                .headers
                .push(("WWW-Authenticate", "Bearer realm=\"hxo\"".into()));
            return send(app, exchange, Err(error));
        }
        Err(Denied::Forbidden(message)) => {
            tracing::warn!(route = template, "http: forbidden: {message}");
            return send(app, exchange, Err(ApiError::new(403, message)));
        }
    };
    if template.starts_with("/api/hxo/") && !app.engine.settings.enabled {
        let error = ApiError::new(
            503,
            "HXO is disabled (HXO_ENABLED=false): set HXO_ENABLED=true and restart hxo serve",
        );
        return send(app, exchange, Err(error));
    }
    if template == STREAM {
        return stream(app, exchange, &query);
    }
    let actor = role.map_or("anonymous", Role::name);
    let outcome = match template {
        CREATE_AND_SUBMIT => read_json(&mut exchange)
            .and_then(|text| create(app, &text, actor, true, query.flag("dry_run")?)),
        PLAN => read_json(&mut exchange)
            .and_then(|text| create(app, &text, actor, false, query.flag("dry_run")?)),
        SUBMIT => read_json(&mut exchange).and_then(|text| submit(app, &text, actor)),
        STATUS => status(app, params[0]),
        REPORT => report(app, params[0]),
        ABORT => abort(app, params[0], actor),
        REPLAY => replay(app, params[0], actor),
        PLANS => plans(app),
        PROOF => proof(app, params[0], params[1]),
        EVENTS => events_page(app, &query),
        METRICS => Ok(Reply::text(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            super::metrics::render(app),
        )),
        HEALTHZ => Ok(Reply::json(
            200,
            &json!({"status": "ok", "enabled": app.engine.settings.enabled}),
        )),
        DASHBOARD => Ok(super::dashboard::page()),
        other => unreachable!("route {other} has no handler"),
    };
    send(app, exchange, outcome);
}

fn send(app: &App, exchange: Exchange, outcome: Outcome) {
    let reply = outcome.unwrap_or_else(ApiError::reply);
    let class = (reply.status / 100).clamp(2, 5) as usize - 2;
    app.requests[class].fetch_add(1, Ordering::Relaxed);
    exchange.respond(reply);
}

/// Reads a body of at most `PLAN_BYTES_MAX` bytes as UTF-8.
fn read_json(exchange: &mut Exchange) -> Result<String, ApiError> {
    let max = crate::limits::PLAN_BYTES_MAX;
    let body = exchange.read_body(max).map_err(|error| match error {
        BodyError::TooLarge => ApiError::new(
            413,
            format!("request body is over the limit of {max} bytes"),
        ),
        BodyError::Io(error) => ApiError::new(400, format!("reading the request body: {error}")),
    })?;
    String::from_utf8(body).map_err(|_| {
        ApiError::from(PlanError {
            path: "$".into(),
            message: "request body is not UTF-8".into(),
        })
    })
}

fn find(app: &App, text: &str) -> Result<PlanId, ApiError> {
    Ok(app.engine.find(text)?)
}

fn create(app: &Arc<App>, text: &str, actor: &str, start: bool, dry_run: bool) -> Outcome {
    let spec = PlanSpec::from_json(text)?;
    let compiled = app.engine.compile(spec, &app.root)?;
    let name = compiled.plan.name.clone();
    let total = compiled.dag.shard_count();
    let (plan_id, status) = if start {
        let ticket = app.engine.start_new(compiled, actor, dry_run)?;
        let plan_id = *ticket.plan_id();
        app.engine.spawn(ticket)?;
        (plan_id, "submitted")
    } else {
        (app.engine.create(&compiled, actor, dry_run)?, "created")
    };
    Ok(Reply::json(
        201,
        &json!({"plan_id": plan_id_text(&plan_id), "name": name, "status": status,
                "merkle_seed": null, "total_shards": total}),
    ))
}

/// The plan id of a `{"plan_id": ...}` body.
fn plan_id_of_body(text: &str) -> Result<String, ApiError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ApiError::from(PlanError {
            path: "$".into(),
            message: format!("invalid JSON: {e}"),
        })
    })?;
    let Some(object) = value.as_object() else {
        return Err(PlanError {
            path: "$".into(),
            message: "expected an object {\"plan_id\": ...}".into(),
        }
        .into());
    };
    if let Some(key) = object.keys().find(|k| *k != "plan_id") {
        return Err(PlanError {
            path: key.clone(),
            message: "unknown field (expected only plan_id)".into(),
        }
        .into());
    }
    match object.get("plan_id").and_then(Value::as_str) {
        Some(id) => Ok(id.to_string()),
        None => Err(PlanError {
            path: "plan_id".into(),
            message: "required string is missing".into(),
        }
        .into()),
    }
}

fn submit(app: &Arc<App>, text: &str, actor: &str) -> Outcome {
    let plan_id = find(app, &plan_id_of_body(text)?)?;
    let ticket = app.engine.submit(&plan_id, actor)?;
    let name = ticket.compiled().plan.name.clone();
    let total = ticket.compiled().dag.shard_count();
    app.engine.spawn(ticket)?;
    Ok(Reply::json(
        200,
        &json!({"plan_id": plan_id_text(&plan_id), "name": name, "status": "submitted",
                "merkle_seed": null, "total_shards": total}),
    ))
}

fn status(app: &App, text: &str) -> Outcome {
    let plan_id = find(app, text)?;
    Ok(Reply::json(200, &json!(app.engine.status(&plan_id)?)))
}

fn report(app: &App, text: &str) -> Outcome {
    let plan_id = find(app, text)?;
    Ok(Reply::json(200, &json!(app.engine.report(&plan_id)?)))
}

fn plans(app: &App) -> Outcome {
    Ok(Reply::json(200, &json!({ "plans": app.engine.plans() })))
}

fn abort(app: &App, text: &str, actor: &str) -> Outcome {
    let plan_id = find(app, text)?;
    let text = plan_id_text(&plan_id);
    Ok(match app.engine.abort(&plan_id, actor, ABORT_WAIT)? {
        AbortOutcome::Aborted => Reply::json(200, &json!({"plan_id": text, "status": "aborted"})),
        AbortOutcome::Stopping => Reply::json(202, &json!({"plan_id": text, "status": "aborting"})),
    })
}

fn replay(app: &Arc<App>, text: &str, actor: &str) -> Outcome {
    let plan_id = find(app, text)?;
    let (ticket, shards) = app.engine.replay(&plan_id, actor)?;
    app.engine.spawn(ticket)?;
    Ok(Reply::json(
        200,
        &json!({"plan_id": plan_id_text(&plan_id), "status": "replaying", "replay_shards": shards}),
    ))
}

fn proof(app: &App, text: &str, cas_id: &str) -> Outcome {
    let plan_id = find(app, text)?;
    Ok(Reply::json(200, &app.engine.proof(&plan_id, cas_id)?))
}

/// The `topic`, `plan_id` and `since` parameters shared by the events
/// page and the stream.
fn filter(app: &App, query: &Query) -> Result<sse::Filter, ApiError> {
    let mut topics = Vec::new();
    if let Some(list) = query.get("topic") {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let topic = events::topic(name).ok_or_else(|| {
                ApiError::new(
                    400,
                    format!(
                        "topic: unknown topic {name:?} (expected one of {})",
                        events::TOPICS.join(", ")
                    ),
                )
            })?;
            topics.push(topic);
        }
    }
    let plan_id = match query.get("plan_id") {
        Some(text) => Some(plan_id_text(&find(app, text)?)),
        None => None,
    };
    Ok(sse::Filter {
        topics,
        plan_id,
        since: query.number("since")?,
        progress: query.flag("progress")?,
    })
}

fn events_page(app: &App, query: &Query) -> Outcome {
    let filter = filter(app, query)?;
    let max = crate::limits::HTTP_EVENTS_PAGE_MAX as u64;
    let limit = query.number("limit")?.unwrap_or(100);
    if limit == 0 || limit > max {
        return Err(ApiError::new(
            400,
            format!("limit: must be between 1 and {max}"),
        ));
    }
    let events: Vec<Value> = sse::backlog(app, filter.since.unwrap_or(0), &filter, limit as usize)
        .iter()
        .map(|e| e.to_json())
        .collect();
    Ok(Reply::json(
        200,
        &json!({"events": events, "last_seq": app.engine.bus.last_seq()}),
    ))
}

/// Decrements the open-stream count when a stream ends, however it ends.
struct StreamSlot(Arc<App>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

fn stream(app: &Arc<App>, exchange: Exchange, query: &Query) {
    let mut filter = match filter(app, query) {
        Ok(filter) => filter,
        Err(error) => return send(app, exchange, Err(error)),
    };
    // Last-Event-ID (set by EventSource when it reconnects) beats `since`.
    if let Some(last) = exchange.header("Last-Event-ID") {
        match last.trim().parse::<u64>() {
            Ok(seq) => filter.since = Some(seq),
            Err(_) => {
                let error = ApiError::new(400, "Last-Event-ID: expected an event sequence number");
                return send(app, exchange, Err(error));
            }
        }
    }
    let max = crate::limits::HTTP_EVENT_STREAMS_MAX;
    if app.streams.fetch_add(1, Ordering::SeqCst) >= max {
        app.streams.fetch_sub(1, Ordering::SeqCst);
        let error = ApiError::new(503, format!("too many event streams (limit {max})"))
            .with_header("Retry-After", "5");
        return send(app, exchange, Err(error));
    }
    let slot = StreamSlot(app.clone());
    app.requests[0].fetch_add(1, Ordering::Relaxed);
    let headers = [
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("Cache-Control", "no-store"),
        ("X-Accel-Buffering", "no"),
    ];
    let chunked = match exchange.into_stream(&headers) {
        Ok(chunked) => chunked,
        Err(_) => return,
    };
    let app = app.clone();
    let spawned = std::thread::Builder::new()
        .name("hxo-sse".into())
        .spawn(move || {
            let _slot = slot;
            sse::run(app, chunked, filter);
        });
    if let Err(error) = spawned {
        tracing::error!("http: cannot start an event stream thread: {error}");
    }
}

impl ApiError {
    fn with_header(mut self, name: &'static str, value: &str) -> ApiError {
        self.headers.push((name, value.to_string()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_paths_and_methods() {
        assert!(matches!(
            lookup("GET", "/api/hxo/status/abc"),
            Lookup::Found(STATUS, ref p) if p == &["abc"]
        ));
        assert!(matches!(
            lookup("GET", "/api/hxo/proof/a/b"),
            Lookup::Found(PROOF, ref p) if p == &["a", "b"]
        ));
        assert!(matches!(lookup("GET", "/"), Lookup::Found(DASHBOARD, _)));
        assert!(matches!(
            lookup("GET", "/api/hxo/create-and-submit"),
            Lookup::WrongMethod(ref m) if m == &["POST"]
        ));
        for missing in ["/api/hxo/status/", "/api/hxo/status/a/b", "/nope", "//", ""] {
            assert!(
                matches!(lookup("GET", missing), Lookup::Missing),
                "{missing}"
            );
        }
    }

    #[test]
    fn every_route_has_an_access_rule_and_templates_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for (method, template) in ROUTES {
            assert!(seen.insert((method, template)), "{template} twice");
            let _ = access_of(template);
        }
        assert_eq!(access_of(ABORT), Access::Admiral);
        assert_eq!(access_of(METRICS), Access::View);
        assert_eq!(access_of(DASHBOARD), Access::Public);
    }

    #[test]
    fn query_components_are_decoded() {
        let query = Query::parse("topic=hxo.plan%2Chxo.audit&token=a+b%3D&bad=%zz&x");
        assert_eq!(query.get("topic"), Some("hxo.plan,hxo.audit"));
        assert_eq!(query.get("token"), Some("a b="));
        assert_eq!(query.get("bad"), Some("%zz"));
        assert_eq!(query.get("x"), None);
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("%"), "%");
    }
}
