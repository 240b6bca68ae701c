//! What the library does around a service's own code, with services written for the case.

use serde_json::{Value, json};
use tcc_participant::{
    Config, Participant, Refusal, Release, Reservation, Service, Transaction, TryCall, TryRequest,
};

use crate::common::fresh_database;

/// A service that writes a note, then tries a statement the database rejects, and refuses: its
/// transaction is in error when it answers, as a service that catches a failed insert would be.
struct RefusesAfterAFailedStatement;

impl Service for RefusesAfterAFailedStatement {
    async fn reserve(&self, tx: &Transaction<'_>, request: &TryRequest) -> Result<Value, Refusal> {
        tx.execute(
            "INSERT INTO notes (request_id) VALUES ($1)",
            &[&request.request_id],
        )
        .await?;
        match tx
            .execute("INSERT INTO notes (request_id) VALUES (NULL)", &[])
            .await
        {
            Ok(_) => Ok(json!({})),
            Err(e) => Err(Refusal::Refused(format!(
                "the note was refused: {}",
                e.as_db_error().map(|d| d.message()).unwrap_or("no reason")
            ))),
        }
    }

    async fn confirm(
        &self,
        _: &Transaction<'_>,
        _: &Reservation,
    ) -> Result<(), tokio_postgres::Error> {
        Ok(())
    }

    async fn release(
        &self,
        _: &Transaction<'_>,
        _: &Reservation,
        _: Release,
    ) -> Result<(), tokio_postgres::Error> {
        Ok(())
    }
}

#[tokio::test]
async fn a_refusal_after_a_failed_statement_is_kept_and_undoes_the_services_writes() {
    let db = fresh_database().await;
    let pool = tcc_participant::pool(&db, 4).expect("a pool");
    tcc_participant::migrate(&pool)
        .await
        .expect("the migration");
    let client = pool.get().await.expect("a connection");
    client
        .batch_execute("CREATE TABLE notes (request_id text NOT NULL)")
        .await
        .expect("the service's table");
    let p = Participant::new(
        pool.clone(),
        RefusesAfterAFailedStatement,
        Config::new("http://127.0.0.1:9"),
    );
    let call = || TryCall {
        correlation_id: Some("order-1"),
        request_id: Some("note"),
        deadline: None,
        subject: "notes",
        body: b"{}",
    };
    let first = p.reserve(call()).await;
    assert_eq!(first.status, 409, "{:?}", first.body);
    let detail = first
        .body
        .as_ref()
        .and_then(|b| b["detail"].as_str())
        .unwrap_or_default()
        .to_string();
    assert!(detail.contains("the note was refused"), "{detail}");
    // The refusal is kept: a repeat replays it, and the service is not called again.
    let again = p.reserve(call()).await;
    assert_eq!(
        (
            again.status,
            again.body.as_ref().map(|b| b["detail"].clone())
        ),
        (409, Some(Value::from(detail)))
    );
    // What the service wrote before it refused is undone.
    let notes: i64 = client
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .expect("the notes")
        .get(0);
    assert_eq!(notes, 0);
    let state: String = client
        .query_one(
            "SELECT state FROM tcc_reservations WHERE request_id = 'note'",
            &[],
        )
        .await
        .expect("the reservation's row")
        .get(0);
    assert_eq!(state, "refused");
}
