//! The HTTP side: `/metrics` on an axum server, stopped by the daemon when collection ends.
use std::sync::Arc;

use axum::{
    extract::State,
    http::{header::CONTENT_TYPE, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::oneshot};

use super::exporter;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves until `stop` fires (or its sender is dropped).
pub async fn run(
    listener: TcpListener,
    registry: Arc<Registry>,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(index))
        .with_state(registry);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = stop.await;
        })
        .await
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    match exporter::render(&registry) {
        Ok(body) => ([(CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not encode metrics\n",
        )
            .into_response(),
    }
}

async fn index() -> &'static str {
    "kvmprof: KVM exit counts and latencies for Prometheus at /metrics\n"
}
