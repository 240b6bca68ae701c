//! The store's batched insert on a real PostgreSQL: many new jobs in one statement, idempotency
//! keys taken earlier or inside the same batch, and a batch that must fail as a whole.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tcc_coordinator::domain::request::{Limits, parse_job};
use tcc_coordinator::store::{self, Inserted, JobRecord, NewJobRow};

use crate::helpers::fresh_database;

fn new_row(key: Option<&str>, hash: &str, task: &str) -> (NewJobRow, JobRecord) {
    let now = Utc::now();
    let doc = json!({
        "tags": ["shared", task],
        "tasks": [{"taskID": task, "taskURL": "http://127.0.0.1:9/try", "taskMaxTTL": 5}]
    });
    let job = parse_job(&doc, Limits { max_tasks: 10 }, now).expect("a valid document");
    let row = NewJobRow {
        id: uuid::Uuid::new_v4().to_string(),
        job,
        source: "jcl",
        created_at: now,
        owner: "store-test".into(),
        lease_ttl: Duration::from_secs(30),
        idempotency_key: key.map(str::to_string),
        request_hash: key.map(|_| hash.to_string()),
        traceparent: None,
    };
    let record = store::initial_record(&row).expect("an initial record");
    (row, record)
}

async fn stored_tags(client: &deadpool_postgres::Client, id: &str) -> Option<Vec<String>> {
    client
        .query_opt("SELECT tags FROM jobs WHERE id = $1", &[&id])
        .await
        .expect("read tags")
        .map(|r| r.get(0))
}

/// A connection to a new database with the schema in place.
async fn migrated_database() -> deadpool_postgres::Client {
    let config: tokio_postgres::Config = fresh_database().await.parse().expect("a config");
    store::migrate(&config).await.expect("migrate");
    let pool = store::pool(config, 2).expect("a pool");
    pool.get().await.expect("a connection")
}

#[tokio::test]
async fn one_statement_stores_many_new_jobs_and_answers_each_key_once() {
    let client = migrated_database().await;

    let earlier = new_row(Some("key-before"), "h0", "e");
    let first = store::insert_job(&client, &earlier.0, &earlier.1).await;
    assert!(matches!(first, Ok(Inserted::Created)), "{first:?}");

    let batch = [
        new_row(Some("key-1"), "h1", "a"),
        new_row(Some("key-1"), "h2", "b"),
        new_row(None, "h3", "c"),
        new_row(Some("key-before"), "h0", "d"),
        new_row(Some("key-1"), "h1", "f"),
    ];
    let refs: Vec<(&NewJobRow, &JobRecord)> = batch.iter().map(|(r, j)| (r, j)).collect();
    let outcomes: Vec<Inserted> = store::insert_many(&client, &refs)
        .await
        .expect("the batch is written")
        .into_iter()
        .map(|o| o.expect("an outcome"))
        .collect();
    let a = batch[0].0.id.clone();
    let expected = [
        Inserted::Created,
        Inserted::Replay {
            id: a.clone(),
            same_request: false,
        },
        Inserted::Created,
        Inserted::Replay {
            id: earlier.0.id.clone(),
            same_request: true,
        },
        Inserted::Replay {
            id: a.clone(),
            same_request: true,
        },
    ];
    assert_eq!(outcomes, expected);

    // Each stored job has its own tags and its own task; the replays stored nothing.
    for (i, name) in [(0, "a"), (2, "c")] {
        let id = &batch[i].0.id;
        assert_eq!(
            stored_tags(&client, id).await,
            Some(vec!["shared".to_string(), name.to_string()])
        );
        let job = store::load_job(&client, id)
            .await
            .expect("load")
            .expect("stored");
        assert_eq!(job.job.tasks.len(), 1);
        assert_eq!(job.job.tasks[0].task_id, name);
    }
    for i in [1, 3, 4] {
        assert_eq!(stored_tags(&client, &batch[i].0.id).await, None);
    }
}

#[tokio::test]
async fn a_batch_with_one_refused_row_stores_none_of_it() {
    let client = migrated_database().await;

    let stored = new_row(None, "h0", "x");
    store::insert_job(&client, &stored.0, &stored.1)
        .await
        .expect("stored");
    let good = new_row(None, "h1", "y");
    // The same id again: the database refuses that row.
    let again = new_row(None, "h2", "z");
    let again = (
        NewJobRow {
            id: stored.0.id.clone(),
            ..again.0
        },
        again.1,
    );
    let refs = [(&good.0, &good.1), (&again.0, &again.1)];
    assert!(store::insert_many(&client, &refs).await.is_err());
    assert_eq!(stored_tags(&client, &good.0.id).await, None);
    // The job already stored under that id is untouched.
    assert_eq!(
        stored_tags(&client, &stored.0.id).await,
        Some(vec!["shared".to_string(), "x".to_string()])
    );
}
