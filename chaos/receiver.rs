//! A webhook receiver for the scenarios: records, per path, the jobs it was told about (the
//! `jobID` in each delivery's body), and answers some deliveries 503 so that they are retried.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;

type Seen = Arc<Mutex<(HashMap<String, HashSet<String>>, fastrand::Rng)>>;

#[derive(Clone)]
pub struct Receiver {
    pub base: String,
    seen: Seen,
}

async fn receive(State(seen): State<Seen>, Path(path): Path<String>, body: Bytes) -> StatusCode {
    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
    // One delivery in five is turned away: the coordinator must come back.
    if s.1.u8(..5) == 0 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let job = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["job"]["jobID"].as_str().map(str::to_string));
    match job {
        Some(id) => {
            s.0.entry(path).or_default().insert(id);
            StatusCode::NO_CONTENT
        }
        None => StatusCode::BAD_REQUEST,
    }
}

impl Receiver {
    pub async fn start(seed: u64) -> Result<Receiver, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let base = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        let seen: Seen = Arc::new(Mutex::new((HashMap::new(), fastrand::Rng::with_seed(seed))));
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(seen.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { base, seen })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// Whether `/{path}` was told of job `id`.
    pub fn told(&self, path: &str, id: &str) -> bool {
        let s = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        s.0.get(path).is_some_and(|ids| ids.contains(id))
    }
}
