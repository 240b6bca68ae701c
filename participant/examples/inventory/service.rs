//! `inventory`: a stock-keeping service whose holds are TCC reservations.
//!
//! - `PUT /items/{sku}` `{"available": n}` sets the stock (what is held and sold stays);
//! - `GET /items/{sku}` → `{"sku", "available", "held", "sold"}`;
//! - the Try `POST /items/{sku}/holds` `{"quantity": n}` holds n units (409 when fewer are
//!   available); confirming sells them, canceling or expiry returns them;
//! - `GET`, `PUT`, `DELETE /reservations/{id}`: the links (the library's router);
//! - `GET /metrics`: Prometheus, when the caller installed a recorder.
//!
//! Every unit is in exactly one of available, held and sold: the three change together, in the
//! transaction that decides the reservation.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tcc_participant::{
    Participant, Refusal, Release, Reservation, Service, Transaction, TryRequest,
};

/// The service's own table.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS inventory_items (
    sku       text PRIMARY KEY,
    available bigint NOT NULL CHECK (available >= 0),
    held      bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    sold      bigint NOT NULL DEFAULT 0 CHECK (sold >= 0)
)";

/// The most units of an item, and of a hold: sums of them never overflow.
pub const MAX_UNITS: i64 = 1 << 40;

/// Stock keeping: a hold moves units from available to held; confirming moves them to sold,
/// releasing back to available.
pub struct Inventory;

/// The quantity a reservation holds.
fn quantity(r: &Reservation) -> i64 {
    r.data["quantity"].as_i64().unwrap_or(0)
}

impl Service for Inventory {
    async fn reserve(&self, tx: &Transaction<'_>, request: &TryRequest) -> Result<Value, Refusal> {
        let quantity = request
            .body
            .get("quantity")
            .and_then(Value::as_i64)
            .filter(|q| (1..=MAX_UNITS).contains(q))
            .ok_or_else(|| {
                Refusal::Invalid(format!(
                    "the body must be {{\"quantity\": n}}, n a whole number from 1 to {MAX_UNITS}"
                ))
            })?;
        let sku = &request.subject;
        let held = tx
            .execute(
                "UPDATE inventory_items SET available = available - $2, held = held + $2
                 WHERE sku = $1 AND available >= $2",
                &[sku, &quantity],
            )
            .await?;
        if held == 1 {
            return Ok(json!({"quantity": quantity}));
        }
        let available = tx
            .query_opt(
                "SELECT available FROM inventory_items WHERE sku = $1",
                &[sku],
            )
            .await?;
        Err(Refusal::Refused(match available {
            None => format!("there is no item {sku}"),
            Some(row) => format!(
                "only {} of {sku} available, {quantity} asked",
                row.try_get::<_, i64>(0)?
            ),
        }))
    }

    async fn confirm(
        &self,
        tx: &Transaction<'_>,
        r: &Reservation,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute(
            "UPDATE inventory_items SET held = held - $2, sold = sold + $2 WHERE sku = $1",
            &[&r.subject, &quantity(r)],
        )
        .await?;
        Ok(())
    }

    async fn release(
        &self,
        tx: &Transaction<'_>,
        r: &Reservation,
        _why: Release,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute(
            "UPDATE inventory_items SET held = held - $2, available = available + $2
             WHERE sku = $1",
            &[&r.subject, &quantity(r)],
        )
        .await?;
        Ok(())
    }
}

/// What the routes share.
#[derive(Clone)]
pub struct App {
    pub participant: Participant<Inventory>,
    pub pool: deadpool_postgres::Pool,
    /// Renders `/metrics`, when a Prometheus recorder is installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// The service's routes: its items, its Try, the links.
pub fn router(app: App) -> axum::Router {
    axum::Router::new()
        .route("/items/{sku}", get(item).put(set_stock))
        .route("/items/{sku}/holds", post(hold))
        .route("/metrics", get(metrics))
        .merge(app.participant.router())
        .with_state(app)
}

fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = json!({"title": status.canonical_reason(), "status": status.as_u16(), "detail": detail.into()});
    (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    let mut resp = problem(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"));
    resp.headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    resp
}

async fn item(State(app): State<App>, Path(sku): Path<String>) -> Response {
    let client = match app.pool.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(e),
    };
    match client
        .query_opt(
            "SELECT available, held, sold FROM inventory_items WHERE sku = $1",
            &[&sku],
        )
        .await
    {
        Ok(Some(row)) => Json(json!({
            "sku": sku,
            "available": row.get::<_, i64>(0),
            "held": row.get::<_, i64>(1),
            "sold": row.get::<_, i64>(2),
        }))
        .into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("there is no item {sku}")),
        Err(e) => unavailable(e),
    }
}

async fn set_stock(State(app): State<App>, Path(sku): Path<String>, body: Bytes) -> Response {
    let available = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("available").and_then(Value::as_i64))
        .filter(|n| (0..=MAX_UNITS).contains(n));
    let Some(available) = available else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the body must be {{\"available\": n}}, n a whole number from 0 to {MAX_UNITS}"
            ),
        );
    };
    let client = match app.pool.get().await {
        Ok(c) => c,
        Err(e) => return unavailable(e),
    };
    let set = client
        .execute(
            "INSERT INTO inventory_items (sku, available) VALUES ($1, $2)
             ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available",
            &[&sku, &available],
        )
        .await;
    match set {
        Ok(_) => item(State(app), Path(sku)).await,
        Err(e) => unavailable(e),
    }
}

async fn hold(
    State(app): State<App>,
    Path(sku): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    app.participant.try_reserve(&headers, &sku, &body).await
}

async fn metrics(State(app): State<App>) -> Response {
    match &app.metrics {
        Some(handle) => handle.render().into_response(),
        None => problem(StatusCode::NOT_FOUND, "no metrics recorder is installed"),
    }
}
