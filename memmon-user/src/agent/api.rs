//! The control API: JSON over HTTP for the management commands (DESIGN.md contract). Loopback
//! by default; every error is a 4xx/5xx with `{"error": "..."}`.

use axum::{
    Json, Router,
    extract::{State, rejection::QueryRejection, Query},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use super::Handle;
use crate::wire::ApiError;

pub async fn serve(listener: tokio::net::TcpListener, agent: Handle) {
    let app = Router::new()
        .route("/status", get(status))
        .route("/health", get(health))
        .route("/leaks", get(leaks))
        .route("/memory-summary", get(memory_summary))
        .route("/update-metrics", post(update_metrics))
        .route("/metrics", get(prometheus_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(agent);
    if let Err(err) = axum::serve(listener, app).await {
        log::error!("control API stopped: {err}");
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ApiError { error: message.into() })).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; try /status, /health, /leaks, /memory-summary or POST /update-metrics",
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
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: POST /update-metrics, GET for the rest")
}

async fn status(State(agent): State<Handle>) -> Response {
    answer(&agent, |agent| Ok(agent.status())).await
}

async fn health(State(agent): State<Handle>) -> Response {
    answer(&agent, |agent| Ok(agent.health())).await
}

/// `verbose` is accepted (the command sends it) but changes nothing here: the JSON always
/// carries every number and frame; only the command's text rendering differs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaksQuery {
    #[serde(default, rename = "verbose")]
    _verbose: bool,
}

async fn leaks(State(agent): State<Handle>, query: Result<Query<LeaksQuery>, QueryRejection>) -> Response {
    // verbose only changes the text rendering; the JSON always carries every number and frame.
    if let Err(rejection) = query {
        return error(StatusCode::BAD_REQUEST, format!("bad query: {}", rejection.body_text()));
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
