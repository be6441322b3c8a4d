//! The agent's answers: one function per endpoint, each turning a request into a JSON response.

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Agent, REQUEST_TIMEOUT};
use crate::error::ErrorKind;
use crate::route::Address;

/// The largest request body read (a report is a few dozen bytes).
const MAX_BODY: usize = 64 * 1024;

const RESOLVE: &str = "/v1/resolve/";

/// The response to one request.
pub(super) async fn answer(agent: &Agent, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    // HEAD answers as GET does (hyper leaves the body out).
    let get = method == Method::GET || method == Method::HEAD;
    match path.as_str() {
        resolve if resolve.starts_with(RESOLVE) && get => {
            let query = request.uri().query().unwrap_or("");
            resolve_path(agent, &resolve[RESOLVE.len()..], query).await
        }
        "/v1/routes" if get => routes(agent),
        "/v1/report" if method == Method::POST => report(agent, request).await,
        "/metrics" if get => metrics(agent),
        "/healthz" if get => healthz(agent),
        "/v1/report" => not_allowed("POST"),
        "/v1/routes" | "/metrics" | "/healthz" => not_allowed("GET, HEAD"),
        resolve if resolve.starts_with(RESOLVE) => not_allowed("GET, HEAD"),
        other => error(StatusCode::NOT_FOUND, &format!("no endpoint {other}")),
    }
}

/// 405, with the methods the endpoint takes.
fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here");
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// `GET /v1/resolve/<route path>[?key=K]`: one pick.
async fn resolve_path(agent: &Agent, encoded_path: &str, query: &str) -> Response<Full<Bytes>> {
    let Ok(path) = percent_encoding::percent_decode_str(encoded_path).decode_utf8() else {
        return error(StatusCode::BAD_REQUEST, "the route path is not UTF-8");
    };
    let key = url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "key")
        .map(|(_, value)| value.into_owned())
        .filter(|key| !key.is_empty());
    let key = key.as_deref().map(str::as_bytes);
    // Only an unknown path waits (for one listing of the registry), and not for ever.
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, agent.resolver.resolve_path(&path, key));
    let Ok(answer) = answer.await else {
        let reason = format!("the registry did not answer within {REQUEST_TIMEOUT:?}");
        return error(StatusCode::GATEWAY_TIMEOUT, &reason);
    };
    match answer {
        Ok(resolved) => {
            let address = resolved.address();
            let body = json!({
                "address": address.to_string(),
                "host": address.ip,
                "port": address.port,
                "service_id": resolved.route().id(),
                "fail_open": resolved.is_fail_open(),
            });
            resolved.release();
            ok(&body)
        }
        Err(err) => {
            let status = match err.kind() {
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, &err.to_string())
        }
    }
}

/// `GET /v1/routes`: every route with its state and its addresses' health, by service id.
fn routes(agent: &Agent) -> Response<Full<Bytes>> {
    let table = agent.resolver.table();
    let mut entries: Vec<_> = table.entries().collect();
    entries.sort_by(|a, b| a.route().id().cmp(b.route().id()));
    let routes: Vec<Value> = entries
        .iter()
        .map(|entry| {
            let addresses: Vec<Value> = entry
                .route()
                .addresses
                .iter()
                .zip(entry.endpoints())
                .map(|(address, endpoint)| {
                    json!({
                        "address": address.to_string(),
                        "healthy": endpoint.is_healthy(),
                        "ejected": endpoint.is_ejected(),
                    })
                })
                .collect();
            json!({
                "service_id": entry.route().id(),
                "path": entry.route().route_path(),
                "state": entry.state().as_str(),
                "addresses": addresses,
            })
        })
        .collect();
    let stats = agent.resolver.stats();
    ok(&json!({
        "stale": stats.stale,
        "staleness_seconds": stats.age.as_secs_f64(),
        "routes": routes,
    }))
}

/// A report's body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    /// `HOST:PORT`.
    address: String,
    /// Whether the call succeeded.
    ok: bool,
}

/// `POST /v1/report`: one call's outcome at an address.
async fn report(agent: &Agent, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a report is at most {MAX_BODY} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_BODY) {
        return too_large();
    }
    let body = Limited::new(request.into_body(), MAX_BODY).collect();
    let bytes = match tokio::time::timeout(REQUEST_TIMEOUT, body).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if err.is::<LengthLimitError>() => return too_large(),
        Ok(Err(err)) => return error(StatusCode::BAD_REQUEST, &format!("unreadable body: {err}")),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            )
        }
    };
    let report: Report = match serde_json::from_slice(&bytes) {
        Ok(report) => report,
        Err(err) => {
            let reason = format!("expected {{\"address\": \"HOST:PORT\", \"ok\": BOOL}}: {err}");
            return error(StatusCode::BAD_REQUEST, &reason);
        }
    };
    let address = match Address::parse(&report.address) {
        Ok(address) => address,
        Err(err) => return error(StatusCode::BAD_REQUEST, &err.to_string()),
    };
    let resolver = &agent.resolver;
    if resolver.is_healthy(&address).is_none() {
        let reason = format!("{address} is in no route");
        return error(StatusCode::NOT_FOUND, &reason);
    }
    if report.ok {
        resolver.report_success(&address);
    } else {
        resolver.report_failure(&address);
    }
    ok(&json!({
        "address": address.to_string(),
        "healthy": resolver.is_healthy(&address),
        "ejected": resolver.is_ejected(&address),
    }))
}

/// `GET /metrics`: Prometheus text, freshly published.
fn metrics(agent: &Agent) -> Response<Full<Bytes>> {
    let Some(render) = &agent.metrics else {
        return error(StatusCode::NOT_FOUND, "this agent serves no metrics");
    };
    agent.resolver.publish_metrics();
    let mut response = Response::new(Full::new(Bytes::from(render())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `GET /healthz`: whether the resolver's view of the registry is fresh.
fn healthz(agent: &Agent) -> Response<Full<Bytes>> {
    let stats = agent.resolver.stats();
    if stats.stale || stats.from_snapshot {
        let body = json!({
            "status": "stale",
            "staleness_seconds": stats.age.as_secs_f64(),
            "from_snapshot": stats.from_snapshot,
            "routes": stats.routes,
        });
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &body);
    }
    ok(&json!({"status": "fresh", "routes": stats.routes}))
}

fn ok(body: &Value) -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, body)
}

fn error(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": reason }))
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
