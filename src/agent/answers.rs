//! The agent's answers: one function per endpoint, each turning a request into a JSON response.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::Agent;
use crate::error::ErrorKind;
use crate::route::Address;

/// The largest request body read (a report is a few dozen bytes).
const MAX_BODY: usize = 64 * 1024;

const RESOLVE: &str = "/v1/resolve/";

/// The response to one request.
pub(super) async fn answer(agent: &Agent, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (method, path.as_str()) {
        (Method::GET, resolve) if resolve.starts_with(RESOLVE) => {
            let query = request.uri().query().unwrap_or("");
            resolve_path(agent, &resolve[RESOLVE.len()..], query).await
        }
        (Method::GET, "/v1/routes") => routes(agent),
        (Method::POST, "/v1/report") => report(agent, request.into_body()).await,
        (Method::GET, "/metrics") => metrics(agent),
        (Method::GET, "/healthz") => healthz(agent),
        (_, "/v1/routes" | "/v1/report" | "/metrics" | "/healthz") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        }
        (_, other) if other.starts_with(RESOLVE) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        }
        (_, other) => error(StatusCode::NOT_FOUND, &format!("no endpoint {other}")),
    }
}

/// `GET /v1/resolve/<route path>[?key=K]`: one pick.
async fn resolve_path(agent: &Agent, encoded_path: &str, query: &str) -> Response<Full<Bytes>> {
    let Ok(path) = percent_encoding::percent_decode_str(encoded_path).decode_utf8() else {
        return error(StatusCode::BAD_REQUEST, "the route path is not UTF-8");
    };
    let key = url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "key")
        .map(|(_, value)| value.into_owned());
    let key = key.as_deref().map(str::as_bytes);
    match agent.resolver.resolve_path(&path, key).await {
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
        Err(err) if err.kind() == ErrorKind::NotFound => {
            error(StatusCode::NOT_FOUND, &err.to_string())
        }
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
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
async fn report(agent: &Agent, body: Incoming) -> Response<Full<Bytes>> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => return error(StatusCode::BAD_REQUEST, &format!("unreadable body: {err}")),
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
        HeaderValue::from_static("text/plain; version=0.0.4"),
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
