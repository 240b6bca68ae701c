//! What the tests share: a fresh database each, and `inventory` served on a free port.

#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use tcc_coordinator::embedded_pg::{EmbeddedPostgres, create_database};
use tcc_participant::{Config, Participant};

#[path = "../../examples/inventory/service.rs"]
pub mod service;

/// How long a test waits for a condition before it fails.
pub const PATIENCE: Duration = Duration::from_secs(30);

struct Cluster {
    /// A connection string with `{db}` for the database's name.
    template: String,
    admin: tokio_postgres::Config,
    _embedded: Option<EmbeddedPostgres>,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

fn cluster() -> &'static Cluster {
    let c = CLUSTER.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let parsed = url::Url::parse(&url).map_err(|e| format!("DATABASE_URL: {e}"))?;
            let mut template = parsed.clone();
            template.set_path("/DBNAME");
            return Ok(Cluster {
                template: template.to_string().replace("DBNAME", "{db}"),
                admin: url.parse().map_err(|e| format!("DATABASE_URL: {e}"))?,
                _embedded: None,
            });
        }
        // One cluster per checkout, outside it (socket paths are short, and the cluster may run
        // as a user that cannot reach the checkout).
        let tag: u32 = env!("CARGO_MANIFEST_DIR")
            .bytes()
            .fold(2_166_136_261u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(16_777_619)
            });
        let dir = std::env::temp_dir().join(format!("tcc-participant-pg-{tag:08x}"));
        let pg = EmbeddedPostgres::start(&dir).map_err(|e| e.to_string())?;
        Ok(Cluster {
            template: format!(
                "host={} port=5432 user=postgres dbname={{db}}",
                pg.socket_dir().display()
            ),
            admin: pg.config_for("postgres"),
            _embedded: Some(pg),
        })
    });
    match c {
        Ok(c) => c,
        Err(e) => panic!("no PostgreSQL for the tests: {e}"),
    }
}

/// A new, empty database: its connection string.
pub async fn fresh_database() -> String {
    let c = cluster();
    let name = format!("p_{}", uuid::Uuid::new_v4().simple());
    create_database(&c.admin, &name)
        .await
        .expect("create the test database");
    c.template.replace("{db}", &name)
}

/// `inventory`, served in-process on a free port, on a database of its own.
pub struct Shop {
    pub url: String,
    pub pool: deadpool_postgres::Pool,
    pub participant: Participant<service::Inventory>,
    pub http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// `inventory` with holds of `hold`; `tune` changes the library's settings.
pub async fn shop_with(hold: Duration, tune: impl FnOnce(&mut Config)) -> Shop {
    shop_on(&fresh_database().await, hold, tune).await
}

/// `inventory` with one-minute holds.
pub async fn shop() -> Shop {
    shop_with(Duration::from_secs(60), |_| {}).await
}

/// `inventory` on the database at `db` (made ready if it is not).
pub async fn shop_on(db: &str, hold: Duration, tune: impl FnOnce(&mut Config)) -> Shop {
    let pool = tcc_participant::pool(db, 16).expect("a pool");
    tcc_participant::migrate(&pool)
        .await
        .expect("the migration");
    pool.get()
        .await
        .expect("a connection")
        .batch_execute(service::SCHEMA)
        .await
        .expect("the service's table");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    let mut config = Config::new(url.clone());
    config.hold = hold;
    tune(&mut config);
    let participant = Participant::new(pool.clone(), service::Inventory, config);
    let app = service::router(service::App {
        participant: participant.clone(),
        pool: pool.clone(),
        metrics: None,
    });
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Shop {
        url,
        pool,
        participant,
        http: reqwest::Client::new(),
        server,
    }
}

/// An item's stock: (available, held, sold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    pub available: i64,
    pub held: i64,
    pub sold: i64,
}

impl Shop {
    pub async fn stock(&self, sku: &str, available: i64) {
        let r = self
            .http
            .put(format!("{}/items/{sku}", self.url))
            .json(&json!({ "available": available }))
            .send()
            .await
            .expect("PUT item");
        assert_eq!(r.status(), 200);
    }

    pub async fn item(&self, sku: &str) -> Stock {
        let v: Value = self
            .http
            .get(format!("{}/items/{sku}", self.url))
            .send()
            .await
            .expect("GET item")
            .json()
            .await
            .expect("an item");
        let n = |k: &str| v[k].as_i64().unwrap_or(-1);
        Stock {
            available: n("available"),
            held: n("held"),
            sold: n("sold"),
        }
    }

    /// A Try: `(status, body)`.
    pub async fn hold(
        &self,
        sku: &str,
        ids: (&str, &str),
        body: &Value,
        deadline: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/items/{sku}/holds", self.url))
            .header("correlation-id", ids.0)
            .header("request-id", ids.1)
            .json(body);
        if let Some(d) = deadline {
            req = req.header("tcc-deadline", d);
        }
        let r = req.send().await.expect("POST a hold");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A hold of `quantity` that must succeed: its link.
    pub async fn held(&self, sku: &str, request_id: &str, quantity: i64) -> String {
        let (status, body) = self
            .hold(
                sku,
                ("order-1", request_id),
                &json!({ "quantity": quantity }),
                None,
            )
            .await;
        assert_eq!(status, 201, "{body:#}");
        link_of(&body)
    }

    /// `PUT`, `DELETE` or `GET` on a link: the status.
    pub async fn call(&self, method: reqwest::Method, link: &str) -> u16 {
        self.http
            .request(method, link)
            .send()
            .await
            .expect("a call on a link")
            .status()
            .as_u16()
    }

    /// `GET` on a link: the reservation's state.
    pub async fn state(&self, link: &str) -> Value {
        self.http
            .get(link)
            .send()
            .await
            .expect("GET a link")
            .json()
            .await
            .unwrap_or(Value::Null)
    }
}

/// The link of a Try's answer.
pub fn link_of(body: &Value) -> String {
    body["participantLink"]["uri"]
        .as_str()
        .unwrap_or_else(|| panic!("a link in {body:#}"))
        .to_string()
}

/// Poll `check` until it holds or `PATIENCE` passes.
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + PATIENCE;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The process's Prometheus recorder (installed once), as a service's `/metrics` renders it.
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the only recorder of the tests")
        })
        .clone()
}
