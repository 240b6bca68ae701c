//! A tiny TCC participant for trying the coordinator by hand (see the README's walk-through).
//!
//! `POST /try/{name}` reserves and answers a participant link that lapses after 60 s;
//! `PUT /reservations/{id}` confirms; `DELETE /reservations/{id}` cancels. Each step is printed.
//! Usage: `cargo run --example participant [ADDR]` (default 127.0.0.1:9000).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;

/// Reservation id → (lapses at, state).
type Held = HashMap<String, (DateTime<Utc>, &'static str)>;

#[derive(Clone, Default)]
struct Book {
    base: String,
    held: Arc<Mutex<Held>>,
}

impl Book {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn reserve(
    State(book): State<Book>,
    Path(name): Path<String>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let id = format!("{name}-{}", uuid::Uuid::now_v7().simple());
    let expires = Utc::now() + chrono::Duration::seconds(60);
    book.held().insert(id.clone(), (expires, "reserved"));
    println!("try      {id}: reserved until {expires}");
    (
        StatusCode::CREATED,
        axum::Json(json!({"participantLink": {
            "uri": format!("{}/reservations/{id}", book.base),
            "expires": expires.to_rfc3339_opts(SecondsFormat::Millis, true),
        }})),
    )
}

async fn confirm(State(book): State<Book>, Path(id): Path<String>) -> StatusCode {
    let mut held = book.held();
    match held.get_mut(&id) {
        Some((expires, state)) if *state != "cancelled" && *expires > Utc::now() => {
            *state = "confirmed";
            println!("confirm  {id}");
            StatusCode::NO_CONTENT
        }
        _ => {
            println!("confirm  {id}: gone");
            StatusCode::NOT_FOUND
        }
    }
}

async fn cancel(State(book): State<Book>, Path(id): Path<String>) -> StatusCode {
    let mut held = book.held();
    match held.get_mut(&id) {
        Some((_, "confirmed")) => StatusCode::CONFLICT,
        Some((_, state)) => {
            *state = "cancelled";
            println!("cancel   {id}");
            StatusCode::NO_CONTENT
        }
        None => StatusCode::NOT_FOUND,
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let book = Book {
        base: format!("http://{}", listener.local_addr()?),
        ..Book::default()
    };
    println!("participant listening on {}", book.base);
    let app = Router::new()
        .route("/try/{name}", post(reserve))
        .route("/reservations/{id}", put(confirm).delete(cancel))
        .with_state(book);
    axum::serve(listener, app).await
}
