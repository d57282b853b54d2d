//! The control API: JSON over HTTP for the management commands (DESIGN.md contract), served on
//! the control socket and on TCP (loopback by default), each behind its gate (`access`);
//! every error is a 4xx/5xx with `{"error": "..."}`.

use axum::{
    Json, Router,
    extract::{Path, State, rejection::PathRejection},
    http::{StatusCode, Uri, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use super::{
    Handle,
    access::{self, Access, AuditNote, Peer},
    requests::{self, StartRequest},
    state::Refusal,
};
use crate::wire::{ApiError, Profiles};

pub async fn serve(tcp: tokio::net::TcpListener, socket: tokio::net::UnixListener, agent: Handle, access: Access) {
    let app = Router::new()
        .route("/status", get(status))
        .route("/health", get(health))
        .route("/leaks", get(leaks))
        .route("/memory-summary", get(memory_summary))
        .route("/update-metrics", post(update_metrics))
        .route("/metrics", get(prometheus_metrics))
        .route("/profiles", get(list_profiles).post(start_profiling))
        .route("/profiles/cleanup", post(cleanup_profiles))
        .route("/profiles/{id}", get(profile))
        .route("/profiles/{id}/stop", post(stop_profiling))
        .route("/profiles/{id}/pprof", get(download_profile))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(agent);
    let on_tcp = app.clone().layer(middleware::from_fn_with_state(access.clone(), access::guard_tcp));
    let on_socket = app.layer(middleware::from_fn_with_state(access, access::guard_socket));
    let (tcp, socket) = tokio::join!(
        axum::serve(tcp, on_tcp.into_make_service_with_connect_info::<std::net::SocketAddr>()),
        axum::serve(socket, on_socket.into_make_service_with_connect_info::<Peer>()),
    );
    for (listener, result) in [("TCP", tcp), ("socket", socket)] {
        if let Err(err) = result {
            log::error!("control API ({listener}) stopped: {err}");
        }
    }
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ApiError { error: message.into() })).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; try /status, /health, /leaks, /memory-summary, /metrics, /profiles or POST /update-metrics",
    )
}

/// Answers with the agent's view as JSON, or 503 if the agent has stopped.
async fn answer<T: serde::Serialize + Send + 'static>(
    agent: &Handle,
    view: impl FnOnce(&mut super::state::Agent) -> anyhow::Result<T> + Send + 'static,
) -> Response {
    match agent.with(view).await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(err)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{err:#}")),
    }
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed: POST /update-metrics, /profiles, /profiles/cleanup and /profiles/ID/stop; GET for the rest",
    )
}

async fn status(State(agent): State<Handle>) -> Response {
    answer(&agent, |agent| Ok(agent.status())).await
}

async fn health(State(agent): State<Handle>) -> Response {
    answer(&agent, |agent| Ok(agent.health())).await
}

async fn leaks(State(agent): State<Handle>, uri: Uri) -> Response {
    if let Err(message) = requests::leaks(&uri) {
        return error(StatusCode::BAD_REQUEST, message);
    }
    answer(&agent, |agent| Ok(agent.leaks())).await
}

/// Refreshes first: the size classes are read from the live table now, and the rest of the
/// summary must describe the same moment.
async fn memory_summary(State(agent): State<Handle>) -> Response {
    answer(&agent, |agent| {
        agent.refresh()?;
        agent.memory_summary()
    })
    .await
}

/// The Prometheus text exposition (404 when MEMMON_PROMETHEUS_METRICS_ENABLED=false).
async fn prometheus_metrics(State(agent): State<Handle>) -> Response {
    let rendered = agent
        .with(|agent| agent.config().prometheus_metrics_enabled.then(|| super::metrics::render(agent)))
        .await;
    match rendered {
        Ok(Some(Ok(text))) => {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "metrics are disabled (MEMMON_PROMETHEUS_METRICS_ENABLED=false)"),
        Ok(Some(Err(err))) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{err:#}")),
    }
}

async fn update_metrics(State(agent): State<Handle>) -> Response {
    answer(&agent, |agent| {
        agent.refresh()?;
        agent.memory_summary()
    })
    .await
}

fn refused(refusal: Refusal) -> Response {
    let status = match refusal {
        Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
        Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
        Refusal::NotFound(_) => StatusCode::NOT_FOUND,
        Refusal::Conflict(_) => StatusCode::CONFLICT,
        Refusal::TooManySessions(_) => StatusCode::TOO_MANY_REQUESTS,
        Refusal::Storage(_) => StatusCode::INSUFFICIENT_STORAGE,
    };
    error(status, refusal.message())
}

/// Runs a profiling request on the agent: its answer as JSON (with `status`), or its refusal.
async fn profiling<T: serde::Serialize + Send + 'static>(
    agent: &Handle,
    status: StatusCode,
    request: impl FnOnce(&mut super::state::Agent) -> Result<T, Refusal> + Send + 'static,
) -> Response {
    match agent.with(request).await {
        Ok(Ok(value)) => (status, Json(value)).into_response(),
        Ok(Err(refusal)) => refused(refusal),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{err:#}")),
    }
}

/// A profile id from the path; ids are checked by the agent, this only turns a path that
/// cannot be decoded into a JSON 400.
fn profile_id(path: Result<Path<String>, PathRejection>) -> Result<String, String> {
    path.map(|Path(id)| id).map_err(|rejection| format!("bad profile id: {}", rejection.body_text()))
}

async fn start_profiling(State(agent): State<Handle>, uri: Uri) -> Response {
    let StartRequest { minutes, pids } = match requests::start(&uri) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match agent.with(move |agent| agent.start_profiling(minutes, &pids)).await {
        Ok(Ok(info)) => {
            let note = AuditNote(format!("profile={} pids={:?}", info.profile_id, info.pids));
            let mut response = (StatusCode::CREATED, Json(info)).into_response();
            response.extensions_mut().insert(note);
            response
        }
        Ok(Err(refusal)) => refused(refusal),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{err:#}")),
    }
}

async fn list_profiles(State(agent): State<Handle>) -> Response {
    profiling(&agent, StatusCode::OK, |agent| Ok(Profiles { profiles: agent.profiles() })).await
}

async fn profile(State(agent): State<Handle>, id: Result<Path<String>, PathRejection>) -> Response {
    match profile_id(id) {
        Ok(id) => profiling(&agent, StatusCode::OK, move |agent| agent.profile(&id)).await,
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

async fn stop_profiling(State(agent): State<Handle>, id: Result<Path<String>, PathRejection>) -> Response {
    match profile_id(id) {
        Ok(id) => profiling(&agent, StatusCode::OK, move |agent| agent.stop_profiling(&id)).await,
        Err(message) => error(StatusCode::BAD_REQUEST, message),
    }
}

/// The gzipped pprof file itself, for `go tool pprof http://…/profiles/ID/pprof` or a
/// profile store.
async fn download_profile(State(agent): State<Handle>, id: Result<Path<String>, PathRejection>) -> Response {
    let id = match profile_id(id) {
        Ok(id) => id,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let name = format!("{id}.pb.gz");
    match agent.with(move |agent| agent.profile_bytes(&id)).await {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
            ],
            bytes,
        )
            .into_response(),
        Ok(Err(refusal)) => refused(refusal),
        Err(err) => error(StatusCode::SERVICE_UNAVAILABLE, format!("{err:#}")),
    }
}

async fn cleanup_profiles(State(agent): State<Handle>, uri: Uri) -> Response {
    let days = match requests::cleanup(&uri) {
        Ok(days) => days,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    profiling(&agent, StatusCode::OK, move |agent| agent.cleanup_profiles(days)).await
}
