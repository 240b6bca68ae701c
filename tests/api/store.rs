//! The store's batched writes on a real PostgreSQL: many new jobs in one statement, idempotency
//! keys taken earlier or inside the same batch, a batch that must fail as a whole, and the group
//! commit writing such a batch again write by write.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tcc_coordinator::domain::request::{Limits, parse_job};
use tcc_coordinator::domain::{Event, Job, JobId, JobSource, Submission, What};
use tcc_coordinator::engine::group_commit::GroupCommit;
use tcc_coordinator::store::{self, Fence, Inserted, JobRecord, NewJobRow, Save, Saved};

use crate::helpers::{eventually, fresh_database, job_of, spawn_app_with};

fn new_row(key: Option<&str>, hash: &str, task: &str) -> (NewJobRow, JobRecord) {
    let now = Utc::now();
    let doc = json!({
        "tags": ["shared", task],
        "tasks": [{"taskID": task, "taskURL": "http://127.0.0.1:9/try", "taskMaxTTL": 5}]
    });
    let job = parse_job(&doc, Limits { max_tasks: 10 }, now).expect("a valid document");
    let row = NewJobRow {
        submission: Submission {
            id: JobId::generate(),
            job,
            source: JobSource::Jcl,
            created_at: now,
            idempotency_key: key.map(str::to_string),
            request_hash: key.map(|_| hash.to_string()),
            key_holder: key.map(|_| "store-test".to_string()),
            traceparent: None,
        },
        owner: "store-test".into(),
        lease_ttl: Duration::from_secs(30),
        answered: Vec::new(),
    };
    let record = store::initial_record(&row);
    (row, record)
}

/// The same new job under another id (one already taken makes the database refuse the row).
fn with_id((row, record): (NewJobRow, JobRecord), id: &str) -> (NewJobRow, JobRecord) {
    let row = NewJobRow {
        submission: Submission {
            id: JobId::parse(id).expect("an id"),
            ..row.submission
        },
        ..row
    };
    (row, record)
}

async fn stored_tags(client: &deadpool_postgres::Client, id: &str) -> Option<Vec<String>> {
    client
        .query_opt("SELECT tags FROM jobs WHERE id = $1", &[&id])
        .await
        .expect("read tags")
        .map(|r| r.get(0))
}

/// A fresh database at schema `version` holding `rows`, stored as that version stored them,
/// then migrated to the latest: what an upgrade does to them.
async fn stored_at_version(version: i32, rows: &str) -> deadpool_postgres::Pool {
    let config: tokio_postgres::Config = fresh_database().await.parse().expect("a config");
    store::migrate_up_to(&config, version)
        .await
        .expect("migrate to the older version");
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    let conn = tokio::spawn(conn);
    client
        .batch_execute(rows)
        .await
        .expect("rows as the older version stored them");
    drop(client);
    let _ = conn.await;
    store::migrate(&config)
        .await
        .expect("migrate to the latest");
    store::pool(config, 1).expect("a pool")
}

/// A pool on a new database with the schema in place.
async fn migrated_pool() -> deadpool_postgres::Pool {
    let config: tokio_postgres::Config = fresh_database().await.parse().expect("a config");
    store::migrate(&config).await.expect("migrate");
    store::pool(config, 2).expect("a pool")
}

/// A connection to a new database with the schema in place.
async fn migrated_database() -> deadpool_postgres::Client {
    migrated_pool().await.get().await.expect("a connection")
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
    let a = batch[0].0.submission.id.clone();
    let expected = [
        Inserted::Created,
        Inserted::Replay {
            id: a.clone(),
            same_request: false,
            another_holder: false,
        },
        Inserted::Created,
        Inserted::Replay {
            id: earlier.0.submission.id.clone(),
            same_request: true,
            another_holder: false,
        },
        Inserted::Replay {
            id: a.clone(),
            same_request: true,
            another_holder: false,
        },
    ];
    assert_eq!(outcomes, expected);

    // Each stored job has its own tags and its own task; the replays stored nothing.
    for (i, name) in [(0, "a"), (2, "c")] {
        let id = &batch[i].0.submission.id;
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
        assert_eq!(stored_tags(&client, &batch[i].0.submission.id).await, None);
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
    let again = with_id(new_row(None, "h2", "z"), &stored.0.submission.id);
    let refs = [(&good.0, &good.1), (&again.0, &again.1)];
    assert!(store::insert_many(&client, &refs).await.is_err());
    assert_eq!(stored_tags(&client, &good.0.submission.id).await, None);
    // The job already stored under that id is untouched.
    assert_eq!(
        stored_tags(&client, &stored.0.submission.id).await,
        Some(vec!["shared".to_string(), "x".to_string()])
    );
}

/// A save of job `id` (as `new_row` stored it) whose one task now says `message`.
async fn save_saying(client: &deadpool_postgres::Client, id: &JobId, message: &str) -> Save {
    let record = store::load_job(client, id)
        .await
        .expect("load")
        .expect("stored");
    let mut task = record.job.tasks[0].clone();
    task.last_message = Some(message.to_string());
    Save {
        id: id.to_string(),
        state: record.job.state,
        fence: Fence {
            owner: "store-test".into(),
            generation: record.lease_generation,
        },
        tasks: vec![task],
        shared_state: None,
        state_guard: record.state_seq,
        guard_seq: None,
        lease: store::LeaseAfter::Keep,
        durable: true,
        lease_ttl: Duration::from_secs(30),
        events: Vec::new(),
        notifications: Vec::new(),
    }
}

/// Job `id` as stored now (it must be there).
async fn stored_job(client: &deadpool_postgres::Client, id: &JobId) -> Job {
    store::load_job(client, id)
        .await
        .expect("read")
        .expect("still there")
        .job
}

/// Register participant link `uri` (expiring in five minutes) on job `id` under `task_id`, with
/// `description`, as a participant's `POST /jobs/{id}/tasks` does.
async fn register_link(
    client: &mut deadpool_postgres::Client,
    id: &JobId,
    task_id: &str,
    uri: &str,
    description: Option<&str>,
) -> store::Registered {
    use tcc_coordinator::domain::request::{Hold, Registration};
    use tcc_coordinator::domain::{Link, TargetUrl, TaskId};
    let registration = Registration {
        task_id: Some(TaskId::try_from(task_id.to_string()).expect("an id")),
        description: description.map(str::to_string),
        hold: Hold::Link(Link {
            uri: TargetUrl::try_from(uri.to_string()).expect("a URL"),
            expires: Utc::now() + chrono::Duration::minutes(5),
        }),
    };
    store::register(
        client,
        store::JobRef::Id(id),
        &registration,
        10,
        "test",
        "me",
        false,
    )
    .await
    .expect("answered")
}

/// One batch of the group commit carrying two new jobs and two saves, one of each refused by the
/// database (a job id already taken; a NUL character in a shared state, which PostgreSQL
/// stores in no `jsonb`): both
/// statements fail, and the group commit writes their writes again one by one, so that only the
/// two bad ones fail.
// Single-threaded on purpose: the writer task cannot run before all four writes are queued.
#[tokio::test(flavor = "current_thread")]
async fn the_group_commit_fails_only_the_bad_writes_of_a_refused_batch() {
    let pool = migrated_pool().await;
    let client = pool.get().await.expect("a connection");
    let taken = new_row(None, "h0", "t");
    let saved_ok = new_row(None, "h1", "s");
    for (row, record) in [&taken, &saved_ok] {
        store::insert_job(&client, row, record)
            .await
            .expect("stored");
    }
    let good_new = new_row(None, "h2", "g");
    let bad_new = with_id(new_row(None, "h3", "b"), &taken.0.submission.id);
    let good_save = save_saying(&client, &saved_ok.0.submission.id, "noted").await;
    let mut bad_save = save_saying(&client, &taken.0.submission.id, "bad").await;
    bad_save.shared_state = Some(json!("bad \0 byte"));

    // On this test's single-threaded runtime, the first write starts the writer task and the
    // others queue before it runs: the four are one batch.
    let commits = Arc::new(GroupCommit::new(
        1,
        64,
        tokio_util::task::TaskTracker::new(),
    ));
    let (bad_insert, good_insert, bad_saved, good_saved) = tokio::join!(
        commits.insert(&pool, bad_new.0, bad_new.1),
        commits.insert(&pool, good_new.0.clone(), good_new.1),
        commits.save(&pool, bad_save),
        commits.save(&pool, good_save),
    );
    assert!(bad_insert.is_err(), "{bad_insert:?}");
    assert!(
        matches!(good_insert, Ok(Inserted::Created)),
        "{good_insert:?}"
    );
    assert!(bad_saved.is_err(), "{bad_saved:?}");
    assert!(matches!(good_saved, Ok(Saved::Ok { .. })), "{good_saved:?}");

    let load = |id: JobId| {
        let client = &client;
        async move {
            store::load_job(client, &id)
                .await
                .expect("load")
                .expect("stored")
        }
    };
    assert_eq!(
        load(good_new.0.submission.id.clone()).await.job.tasks[0].task_id,
        "g"
    );
    let said = |r: &JobRecord| r.job.tasks[0].last_message.clone();
    assert_eq!(
        said(&load(saved_ok.0.submission.id.clone()).await).as_deref(),
        Some("noted")
    );
    // The job whose id was taken is the one stored first, untouched by either bad write.
    let first = load(taken.0.submission.id.clone()).await;
    assert_eq!(first.job.tasks[0].task_id, "t");
    assert_eq!(said(&first), said(&taken.1));
}

/// A save that carries every one of its job's tasks replaces the stored states as they are
/// (migration V17); one that carries fewer than the job has now (a task registered since the
/// driver read the job) writes each of its tasks over its own key and leaves the registered one
/// as it is.
#[tokio::test]
async fn a_save_of_every_task_replaces_the_states_and_one_of_fewer_leaves_the_others() {
    let pool = migrated_pool().await;
    let mut client = pool.get().await.expect("a connection");
    let (row, record) = new_row(None, "h", "first");
    store::insert_job(&client, &row, &record)
        .await
        .expect("stored");
    let id = row.submission.id.clone();
    let save = save_saying(&client, &id, "every task").await;
    let saved = store::save(&client, &save).await;
    assert!(matches!(saved, Ok(Saved::Ok { .. })), "{saved:?}");
    let replaced = stored_job(&client, &id).await;
    assert_eq!(
        replaced
            .tasks
            .iter()
            .map(|t| t.last_message.as_deref())
            .collect::<Vec<_>>(),
        [Some("every task")]
    );
    // The driver's view: the one task; a participant registers a second before it saves.
    let stale = save_saying(&client, &id, "after the registration").await;
    let registered = register_link(
        &mut client,
        &id,
        "second",
        "http://127.0.0.1:9/r/second",
        None,
    )
    .await;
    assert!(
        matches!(registered, store::Registered::Created { .. }),
        "{registered:?}"
    );
    let saved = store::save(&client, &stale).await;
    assert!(matches!(saved, Ok(Saved::Ok { .. })), "{saved:?}");
    let job = stored_job(&client, &id).await;
    let tasks: Vec<(&str, Option<&str>, Option<&str>)> = job
        .tasks
        .iter()
        .map(|t| {
            (
                t.task_id.as_str(),
                t.last_message.as_deref(),
                t.link.as_ref().map(|l| l.uri.as_str()),
            )
        })
        .collect();
    assert_eq!(
        tasks,
        [
            ("first", Some("after the registration"), None),
            ("second", None, Some("http://127.0.0.1:9/r/second")),
        ]
    );
}

/// The fence: a claim skips a job whose lease is live, a claim of a free job bumps the
/// generation, and a write under a stale generation (or another owner) is `LeaseLost` and
/// writes nothing.
#[tokio::test]
async fn fencing_claims_skip_live_leases_bump_the_generation_and_refuse_stale_writes() {
    let client = migrated_database().await;
    let (row, record) = new_row(None, "h", "f");
    store::insert_job(&client, &row, &record)
        .await
        .expect("stored");
    let id = row.submission.id.clone();
    let ttl = Duration::from_secs(30);
    // Claims only look at due jobs; this one is due from its creation.
    let live = store::claim_one(&client, &id, "other", ttl)
        .await
        .expect("claim");
    assert_eq!(live, None, "a live lease is skipped");

    let ours = save_saying(&client, &id, "first owner").await;
    assert_eq!(ours.fence.generation, 1);
    assert!(matches!(
        store::save(&client, &ours).await,
        Ok(Saved::Ok { .. })
    ));

    store::release(&client, &id, &ours.fence)
        .await
        .expect("release");
    let claimed = store::claim_one(&client, &id, "other", ttl)
        .await
        .expect("claim")
        .expect("a free job is claimed");
    assert_eq!(claimed.generation, 2, "the claim bumps the generation");

    let mut stale = save_saying(&client, &id, "stale write").await;
    stale.fence = ours.fence.clone();
    assert_eq!(
        store::save(&client, &stale).await.ok(),
        Some(Saved::LeaseLost)
    );
    let mut wrong_owner = stale.clone();
    wrong_owner.fence = Fence {
        owner: "store-test".into(),
        generation: 2,
    };
    assert_eq!(
        store::save(&client, &wrong_owner).await.ok(),
        Some(Saved::LeaseLost)
    );
    let after = store::load_job(&client, &id)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(
        after.job.tasks[0].last_message.as_deref(),
        Some("first owner"),
        "the stale writes wrote nothing"
    );
    let mut current = stale;
    current.fence = Fence {
        owner: "other".into(),
        generation: 2,
    };
    assert!(matches!(
        store::save(&client, &current).await,
        Ok(Saved::Ok { .. })
    ));
}

/// Saves queued while the writer is busy go to PostgreSQL as one batch: one statement, so one
/// transaction, which every row it wrote names as its `xmin`.
// Single-threaded on purpose: the writer task cannot run before all the writes are queued.
#[tokio::test(flavor = "current_thread")]
async fn the_group_commit_writes_queued_saves_as_one_transaction() {
    let pool = migrated_pool().await;
    let client = pool.get().await.expect("a connection");
    let mut saves = Vec::new();
    let mut ids = Vec::new();
    for n in 0..6 {
        let (row, record) = new_row(None, "h", &format!("b{n}"));
        store::insert_job(&client, &row, &record)
            .await
            .expect("stored");
        saves.push(save_saying(&client, &row.submission.id, "batched").await);
        ids.push(row.submission.id.to_string());
    }
    let commits = Arc::new(GroupCommit::new(
        1,
        64,
        tokio_util::task::TaskTracker::new(),
    ));
    let results =
        futures::future::join_all(saves.into_iter().map(|s| commits.save(&pool, s))).await;
    assert!(
        results.iter().all(|r| matches!(r, Ok(Saved::Ok { .. }))),
        "{results:?}"
    );
    let rows = client
        .query(
            "SELECT DISTINCT xmin::text FROM jobs WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .expect("xmin");
    assert_eq!(rows.len(), 1, "the six saves were one transaction");
}

/// Every column a job and its tasks are stored in comes back as written: a document with every
/// field set, a task with a Try and one with a link, then a save that sets every task column to
/// a value other than its default.
#[tokio::test]
async fn every_column_round_trips() {
    use tcc_coordinator::domain::{ConfirmState, JobState, JobStatus, Link, TaskStatus};
    let client = migrated_database().await;
    // PostgreSQL keeps microseconds.
    let now = chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros())
        .expect("a timestamp");
    let doc = json!({
        "description": "every field",
        "correlationID": "round-trip",
        "jobMaxTTL": 120.5,
        "autoConfirm": false,
        "jobSuccessURL": "http://127.0.0.1:9/ok",
        "jobFailedURL": "http://127.0.0.1:9/failed",
        "contact": {"person": "P", "email": "p@example.org", "webhook": "http://127.0.0.1:9/hook"},
        "tags": ["a", "b"],
        "sharedState": {"customer": 42, "nested": {"list": [1, 2]}},
        "retryPolicy": {"maxAttempts": 7, "initialDelay": 0.2, "maxDelay": 3, "multiplier": 1.5},
        "tasks": [
            {
                "taskID": "tried",
                "taskDescription": "a Try",
                "taskURL": "http://127.0.0.1:9/try",
                "body": {"n": 1},
                "inputMapping": {"/customer": "/customer"},
                "outputMapping": {"/booking": "/participantLink/uri"},
                "taskMaxTTL": 4.5,
                "retryPolicy": {"maxAttempts": 2}
            },
            {
                "taskID": "linked",
                "participantLink": {"uri": "http://127.0.0.1:9/r/1", "expires": tcc_coordinator::domain::rfc3339(now + chrono::Duration::seconds(90))}
            }
        ]
    });
    let job = parse_job(&doc, Limits { max_tasks: 10 }, now).expect("a valid document");
    let row = NewJobRow {
        submission: Submission {
            id: JobId::generate(),
            job,
            source: JobSource::Jcl,
            created_at: now,
            idempotency_key: Some("rt-key".into()),
            request_hash: Some("rt-hash".into()),
            key_holder: Some("store-test".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        },
        owner: "store-test".into(),
        lease_ttl: Duration::from_secs(30),
        answered: Vec::new(),
    };
    let record = store::initial_record(&row);
    store::insert_job(&client, &row, &record)
        .await
        .expect("stored");
    let loaded = store::load_job(&client, &row.submission.id)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(loaded.job, record.job, "the new job as inserted");
    assert_eq!(loaded.fields, record.fields);
    assert_eq!(
        (loaded.job.attempt, loaded.wake_seq, loaded.lease_generation),
        (1, 0, 1)
    );
    assert_eq!(loaded.lease_owner.as_deref(), Some("store-test"));

    // Every task column set, then saved and read back.
    let mut expected = loaded.job.clone();
    expected.state = JobState::Confirming;
    expected.shared_state = json!({"customer": 42, "booking": "http://127.0.0.1:9/r/2"});
    let at = |s: i64| now + chrono::Duration::seconds(s);
    let t = &mut expected.tasks[0];
    t.status = TaskStatus::Confirming;
    t.link = Some(Link {
        uri: tcc_coordinator::domain::TargetUrl::parse("http://127.0.0.1:9/r/2").expect("a URL"),
        expires: at(60),
    });
    t.attempts = 3;
    t.next_attempt_at = Some(at(2));
    t.confirm = ConfirmState::Sent {
        maybe_applied: true,
    };
    t.start_time = Some(at(1));
    t.last_message = Some("503 from the participant".into());
    t.try_response = Some(Arc::new(
        json!({"participantLink": {"uri": "r/2"}, "extra": [true]}),
    ));
    let t = &mut expected.tasks[1];
    t.status = TaskStatus::Confirming;
    t.confirm = ConfirmState::Refused {
        maybe_applied: false,
    };
    t.end_time = Some(at(3));
    // A kept answer of JSON null is one, not none.
    t.try_response = Some(Arc::new(serde_json::Value::Null));
    let save = Save {
        id: row.submission.id.to_string(),
        state: expected.state,
        fence: Fence {
            owner: "store-test".into(),
            generation: 1,
        },
        tasks: expected.tasks.clone(),
        shared_state: Some(expected.shared_state.clone()),
        state_guard: loaded.state_seq,
        guard_seq: None,
        lease: store::LeaseAfter::Keep,
        durable: true,
        lease_ttl: Duration::from_secs(30),
        events: vec![
            Event {
                at: at(2),
                what: What::Call {
                    task_id: "a".into(),
                    op: tcc_coordinator::domain::Op::Confirm,
                    attempt: 3,
                    http_status: Some(503),
                    duration_ms: 12,
                    status: TaskStatus::Confirming,
                    message: Some("503 from the participant".into()),
                },
            },
            Event::job_status(at(2), JobStatus::Confirming, None),
        ],
        notifications: Vec::new(),
    };
    assert!(matches!(
        store::save(&client, &save).await,
        Ok(Saved::Ok { .. })
    ));
    let again = store::load_job(&client, &row.submission.id)
        .await
        .expect("load")
        .expect("stored");
    assert_eq!(again.job, expected, "every column as saved");

    // The events written with the save follow the job's first (accepted), every field kept.
    let (status, log) = store::list_events(&client, &row.submission.id, 0, 100)
        .await
        .expect("events")
        .expect("the job");
    assert_eq!(status, JobStatus::Confirming);
    let seqs: Vec<i64> = log.iter().map(|e| e.seq).collect();
    let first = log.len() - save.events.len();
    assert_eq!(seqs, (1..=log.len() as i64).collect::<Vec<_>>());
    assert_eq!(
        log[0].event.what,
        What::Status {
            status: JobStatus::Pending,
            reason: None
        }
    );
    let written: Vec<Event> = log[first..].iter().map(|e| e.event.clone()).collect();
    assert_eq!(written, save.events);
}

/// A job stored before V15, its tasks' state in their own rows, reads back the same after it:
/// the migration moves each task's state into its job's row, and the task rows keep the rest.
#[tokio::test]
async fn task_states_stored_in_task_rows_before_v15_read_back_the_same_after_it() {
    use tcc_coordinator::domain::{ConfirmState, TaskStatus};
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("a time")
            .with_timezone(&Utc)
    };
    let pool = stored_at_version(
        14,
                "INSERT INTO jobs (id, status, fields, correlation_id, auto_confirm, created_at,
                                   updated_at, deadline, decided_at, task_count, event_seq)
                 VALUES ('v14-job', 'confirming', '{\"jobMaxTTL\": 60, \"autoConfirm\": true, \"tags\": []}', 'v14', true,
                         '2026-12-04T10:00:00Z', '2026-12-04T10:00:01Z', '2026-12-04T10:01:00Z',
                         '2026-12-04T10:00:01Z', 3, 1);
                 INSERT INTO jobs (id, status, fields, correlation_id, auto_confirm, created_at,
                                   updated_at, deadline, task_count, event_seq)
                 VALUES ('v14-empty', 'pending', '{\"jobMaxTTL\": 60, \"autoConfirm\": false, \"tags\": []}', 'v14e', false,
                         '2026-12-04T10:00:00Z', '2026-12-04T10:00:00Z', '2026-12-04T10:01:00Z', 0, 1);
                 INSERT INTO tasks (job_id, idx, task_id, description, try_spec, status, link_uri,
                                    link_expires, attempts, next_attempt_at, refused,
                                    confirm_pending, confirm_unknown, start_time, end_time,
                                    last_message, try_response)
                 VALUES ('v14-job', 0, 'tried', 'a Try',
                         '{\"taskURL\": \"http://127.0.0.1:9/try\", \"taskMaxTTL\": 5}',
                         'confirming', 'http://127.0.0.1:9/r/1', '2026-12-04T10:02:00.123456Z', 3,
                         '2026-12-04T10:00:05Z', false, true, true, '2026-12-04T10:00:00.5Z', NULL,
                         'confirm answered 503', '{\"participantLink\": {\"uri\": \"http://127.0.0.1:9/r/1\"}}'),
                        ('v14-job', 1, 'linked', NULL, NULL, 'confirmed', 'http://127.0.0.1:9/r/2',
                         '2026-12-04T10:03:00Z', 1, NULL, false, false, false,
                         '2026-12-04T10:00:00Z', '2026-12-04T10:00:02Z', 'confirmed', 'null');
                 INSERT INTO tasks (job_id, idx, task_id, status, attempts, callbacks,
                                    callbacks_until)
                 VALUES ('v14-job', 2, 'own', 'confirming', 2,
                         '{\"confirmURL\": \"http://127.0.0.1:9/c\", \"cancelURL\": \"http://127.0.0.1:9/x\"}',
                         '2026-12-04T11:00:00Z');",
    )
    .await;
    let client = pool.get().await.expect("a connection");
    let job = stored_job(&client, &JobId::parse("v14-job").expect("an id")).await;
    assert_eq!(job.tasks.len(), 3);
    let (tried, linked, own) = (&job.tasks[0], &job.tasks[1], &job.tasks[2]);
    assert_eq!(
        (tried.task_id.as_str(), tried.description.as_deref()),
        ("tried", Some("a Try"))
    );
    assert!(tried.try_spec.is_some());
    assert_eq!(tried.status, TaskStatus::Confirming);
    let link = tried.link.as_ref().expect("its link");
    assert_eq!(
        (link.uri.as_str(), link.expires),
        ("http://127.0.0.1:9/r/1", at("2026-12-04T10:02:00.123456Z"))
    );
    assert_eq!(tried.attempts, 3);
    assert_eq!(tried.next_attempt_at, Some(at("2026-12-04T10:00:05Z")));
    assert_eq!(
        tried.confirm,
        ConfirmState::from_flags(false, true, true).expect("flags")
    );
    assert_eq!(
        (tried.start_time, tried.end_time),
        (Some(at("2026-12-04T10:00:00.5Z")), None)
    );
    assert_eq!(tried.last_message.as_deref(), Some("confirm answered 503"));
    assert_eq!(
        tried.try_response.as_deref(),
        Some(&json!({"participantLink": {"uri": "http://127.0.0.1:9/r/1"}}))
    );
    assert_eq!(linked.status, TaskStatus::Confirmed);
    assert!(linked.try_spec.is_none());
    // A kept answer of JSON null is one; the task with its own URLs has none.
    assert_eq!(
        linked.try_response.as_deref(),
        Some(&serde_json::Value::Null)
    );
    assert!(own.try_response.is_none());
    assert_eq!(
        linked.link.as_ref().map(|l| (l.uri.as_str(), l.expires)),
        Some(("http://127.0.0.1:9/r/2", at("2026-12-04T10:03:00Z")))
    );
    assert_eq!(linked.end_time, Some(at("2026-12-04T10:00:02Z")));
    assert_eq!(own.status, TaskStatus::Confirming);
    assert!(own.callbacks.is_some() && own.link.is_none());
    assert_eq!(own.callbacks_until, Some(at("2026-12-04T11:00:00Z")));
    assert_eq!(own.attempts, 2);
    // A job without tasks has an empty state.
    let empty = stored_job(&client, &JobId::parse("v14-empty").expect("an id")).await;
    assert!(empty.tasks.is_empty());
}

/// A job stored before V17 (its tasks and its event log as `jsonb`) reads back the same after
/// it, a Try answer's own null kept; its driver's save (every task: the replacing path) and a
/// registration (merged over the stored states) both work on it, and its event log goes on from
/// where it was.
#[tokio::test]
async fn tasks_and_events_stored_as_jsonb_before_v17_read_back_the_same_after_it() {
    let pool = stored_at_version(
        16,
        r#"INSERT INTO jobs (id, status, fields, correlation_id, auto_confirm, created_at,
                              updated_at, deadline, task_count, event_seq, task_state, task_specs,
                              lease_owner, lease_generation, lease_expires)
           VALUES ('v16-job', 'reserved', '{"jobMaxTTL": 60, "autoConfirm": false, "tags": []}',
                   'v16', false, '2026-12-04T10:00:00Z', '2026-12-04T10:00:01Z',
                   '2026-12-04T10:01:00Z', 1, 3,
                   '{"0": {"status": "reserved", "link_uri": "http://127.0.0.1:9/r/1",
                           "link_expires": "2026-12-04T10:02:00Z", "attempts": 1,
                           "try_response": {"participantLink": {"uri": "http://127.0.0.1:9/r/1",
                               "expires": "2026-12-04T10:02:00Z"}, "note": null}}}',
                   '{"0": {"task_id": "tried", "try_spec": {"taskURL": "http://127.0.0.1:9/try",
                           "taskMaxTTL": 5}}}',
                   'store-test', 1, now() + interval '1 hour');
           INSERT INTO job_events (job_id, last_seq, events)
           VALUES ('v16-job', 3, '[
               {"at": "2026-12-04T10:00:00+00:00", "type": "status", "status": "pending",
                "message": "accepted"},
               {"at": "2026-12-04T10:00:00+00:00", "type": "status", "status": "trying"},
               {"at": "2026-12-04T10:00:00.5Z", "op": "try", "type": "call",
                "status": "reserved", "taskID": "tried", "attempt": 1, "message": "reserved",
                "durationMs": 5, "httpStatus": 201}]');"#,
    )
    .await;
    let mut client = pool.get().await.expect("a connection");
    let id = JobId::parse("v16-job").expect("an id");
    let job = stored_job(&client, &id).await;
    let tried = &job.tasks[0];
    assert_eq!(
        (
            tried.task_id.as_str(),
            tried.link.as_ref().map(|l| l.uri.as_str())
        ),
        ("tried", Some("http://127.0.0.1:9/r/1"))
    );
    assert_eq!(
        tried.try_response.as_deref(),
        Some(&json!({"participantLink": {"uri": "http://127.0.0.1:9/r/1",
            "expires": "2026-12-04T10:02:00Z"}, "note": null}))
    );
    let statuses = |events: &[store::StoredEvent]| -> Vec<(i64, String)> {
        events
            .iter()
            .map(|e| {
                let what = match &e.event.what {
                    What::Status { status, .. } => status.as_str().to_string(),
                    What::Call { status, .. } => status.as_str().to_string(),
                    other => format!("{other:?}"),
                };
                (e.seq, what)
            })
            .collect()
    };
    let (_, events) = store::list_events(&client, &id, 0, 10)
        .await
        .expect("read")
        .expect("the job");
    assert_eq!(
        statuses(&events),
        [
            (1, "pending".to_string()),
            (2, "trying".to_string()),
            (3, "reserved".to_string())
        ]
    );

    let mut save = save_saying(&client, &id, "saved after V17").await;
    save.events = vec![Event {
        at: Utc::now(),
        what: What::Status {
            status: tcc_coordinator::domain::JobStatus::Reserved,
            reason: None,
        },
    }];
    let saved = store::save(&client, &save).await;
    assert!(matches!(saved, Ok(Saved::Ok { .. })), "{saved:?}");
    let registered = register_link(&mut client, &id, "later", "http://127.0.0.1:9/r/2", None).await;
    assert!(
        matches!(registered, store::Registered::Created { .. }),
        "{registered:?}"
    );
    let job = stored_job(&client, &id).await;
    let tasks: Vec<(&str, Option<&str>)> = job
        .tasks
        .iter()
        .map(|t| (t.task_id.as_str(), t.last_message.as_deref()))
        .collect();
    assert_eq!(tasks, [("tried", Some("saved after V17")), ("later", None)]);
    assert_eq!(
        job.tasks[0].try_response.as_deref(),
        tried.try_response.as_deref()
    );
    let (_, events) = store::list_events(&client, &id, 2, 10)
        .await
        .expect("read")
        .expect("the job");
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [3, 4, 5], "{:?}", statuses(&events));
}

/// A job stored before V16, its tasks' specifications in their own rows, reads back the same
/// after it: the migration moves them into the job's row, absent what a task has not got, with a
/// Try body's own nulls kept; a task registered afterwards joins them, and a second one under
/// the same task id is refused.
#[tokio::test]
async fn task_specs_stored_in_task_rows_before_v16_read_back_the_same_after_it() {
    let pool = stored_at_version(
        15,
                "INSERT INTO jobs (id, status, fields, correlation_id, auto_confirm, created_at,
                                   updated_at, deadline, task_count, event_seq, task_state)
                 VALUES ('v15-job', 'reserved', '{\"jobMaxTTL\": 60, \"autoConfirm\": false, \"tags\": []}', 'v15', false,
                         '2026-12-04T10:00:00Z', '2026-12-04T10:00:01Z', '2026-12-04T10:01:00Z', 2, 1,
                         '{\"0\": {\"status\": \"reserved\", \"link_uri\": \"http://127.0.0.1:9/r/1\", \"link_expires\": \"2026-12-04T10:02:00Z\", \"attempts\": 1},
                           \"1\": {\"status\": \"reserved\", \"attempts\": 1, \"callbacks_until\": \"2026-12-04T11:00:00Z\"}}');
                 INSERT INTO tasks (job_id, idx, task_id, description, try_spec)
                 VALUES ('v15-job', 0, 'tried', 'a Try',
                         '{\"taskURL\": \"http://127.0.0.1:9/try\", \"taskMaxTTL\": 5, \"body\": {\"note\": null}}');
                 INSERT INTO tasks (job_id, idx, task_id, callbacks)
                 VALUES ('v15-job', 1, 'own',
                         '{\"confirmURL\": \"http://127.0.0.1:9/c\", \"cancelURL\": \"http://127.0.0.1:9/x\"}');",
    )
    .await;
    let mut client = pool.get().await.expect("a connection");
    let id = JobId::parse("v15-job").expect("an id");
    let job = stored_job(&client, &id).await;
    assert_eq!(job.tasks.len(), 2);
    let (tried, own) = (&job.tasks[0], &job.tasks[1]);
    assert_eq!(
        (
            tried.idx,
            tried.task_id.as_str(),
            tried.description.as_deref()
        ),
        (0, "tried", Some("a Try"))
    );
    let spec = serde_json::to_value(tried.try_spec.as_deref().expect("its Try")).expect("json");
    assert_eq!(spec["taskURL"], json!("http://127.0.0.1:9/try"));
    assert_eq!(spec["body"], json!({"note": null}));
    assert!(tried.callbacks.is_none());
    assert_eq!(
        tried.link.as_ref().map(|l| l.uri.as_str()),
        Some("http://127.0.0.1:9/r/1")
    );
    assert_eq!(
        (own.idx, own.task_id.as_str(), own.description.as_deref()),
        (1, "own", None)
    );
    assert!(own.try_spec.is_none() && own.link.is_none());
    let callbacks =
        serde_json::to_value(own.callbacks.as_deref().expect("its URLs")).expect("json");
    assert_eq!(callbacks["confirmURL"], json!("http://127.0.0.1:9/c"));
    assert_eq!(callbacks["cancelURL"], json!("http://127.0.0.1:9/x"));

    // The migrated task's link registered again is that task; a new one is a third task.
    let mut outcomes = Vec::new();
    for (n, task_id) in [(1, "again"), (3, "later"), (4, "later")] {
        let uri = format!("http://127.0.0.1:9/r/{n}");
        outcomes.push(register_link(&mut client, &id, task_id, &uri, Some("registered")).await);
    }
    let [again, added, taken] = <[_; 3]>::try_from(outcomes).expect("three answers");
    assert!(
        matches!(&again, store::Registered::Existing(t) if t.task_id == "tried"),
        "{again:?}"
    );
    assert!(
        matches!(added, store::Registered::Created { .. }),
        "{added:?}"
    );
    assert!(
        matches!(taken, store::Registered::TaskIdTaken(_)),
        "{taken:?}"
    );
    let job = stored_job(&client, &id).await;
    let ids: Vec<(i32, &str)> = job
        .tasks
        .iter()
        .map(|t| (t.idx, t.task_id.as_str()))
        .collect();
    assert_eq!(ids, [(0, "tried"), (1, "own"), (2, "later")]);
    assert_eq!(job.tasks[2].description.as_deref(), Some("registered"));
}

/// The retention purge deletes finished jobs (resolved heuristic ones too) with their tasks (in
/// their rows) and their event log, a batch at a time, and keeps unresolved heuristic jobs,
/// active jobs and jobs still inside the retention.
#[tokio::test]
async fn the_purge_takes_finished_jobs_with_their_events_a_batch_at_a_time_and_keeps_unresolved_heuristic_and_active_ones()
 {
    let pool = migrated_pool().await;
    let client = pool.get().await.expect("a connection");
    let mut ids = Vec::new();
    for (task, status) in [
        ("old", "completed"),
        ("hurt", "heuristic"),
        ("young", "completed"),
        ("settled", "heuristic"),
        ("older", "failed"),
        ("busy", "confirming"),
    ] {
        let (row, record) = new_row(None, "", task);
        store::insert_job(&client, &row, &record)
            .await
            .expect("stored");
        let age = if task == "young" {
            "1 minute"
        } else {
            "10 days"
        };
        client
            .execute(
                &format!(
                    "UPDATE jobs SET status = $2::text, finished_at = now() - interval '{age}',
                        failure_reason = CASE WHEN $2::text = 'failed' THEN 'try-failed' END
                     WHERE id = $1"
                ),
                &[&row.submission.id.as_str(), &status],
            )
            .await
            .expect("age the job");
        if task == "settled" {
            client
                .execute(
                    "UPDATE jobs SET resolution = '{\"note\": \"fixed\"}'::jsonb WHERE id = $1",
                    &[&row.submission.id.as_str()],
                )
                .await
                .expect("resolve");
        }

        ids.push(row.submission.id.clone());
    }
    let events = |id: JobId| {
        let client = &client;
        async move {
            store::list_events(client, &id, 0, 100)
                .await
                .expect("events")
                .map(|(_, e)| e.len())
        }
    };
    assert_eq!(events(ids[0].clone()).await, Some(1));
    let week = Duration::from_secs(7 * 24 * 3600);
    // A batch at a time: two, then the third, then none.
    let purged = store::purge_finished(&client, week, 2)
        .await
        .expect("purge");
    assert_eq!(purged, 2);
    let purged = store::purge_finished(&client, week, 2)
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    let purged = store::purge_finished(&client, week, 2)
        .await
        .expect("purge");
    assert_eq!(purged, 0);
    assert_eq!(
        events(ids[3].clone()).await,
        None,
        "resolved heuristic: gone"
    );
    assert_eq!(events(ids[4].clone()).await, None, "failed: gone");
    assert_eq!(events(ids[5].clone()).await, Some(1), "active: kept");
    assert_eq!(events(ids[0].clone()).await, None, "the job is gone");
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM job_events WHERE job_id = $1",
            &[&ids[0].as_str()],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "its events went with it");
    // A job's tasks are in its row (V16): they go with it, and stay with a kept one.
    let kept = store::load_job(&client, &ids[1])
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(kept.job.tasks.len(), 1, "a kept job keeps its task");
    assert_eq!(events(ids[1].clone()).await, Some(1), "heuristic: kept");
    assert_eq!(
        events(ids[2].clone()).await,
        Some(1),
        "inside the retention: kept"
    );
}

/// The sweeper, running in a coordinator with `TCC_RETENTION=1s`: a finished job disappears by
/// itself; a job waiting for its client and an unresolved heuristic job stay.
#[tokio::test]
async fn the_sweeper_deletes_finished_jobs_past_the_retention_and_nothing_else() {
    use crate::participant::Participant;
    let app = spawn_app_with(&["--retention", "1s"]).await;
    let p = Participant::start().await;
    let done = app.submit(&job_of(&[("t", p.url("done"))])).await;
    app.wait_status(&done, "completed").await;
    let mut waiting = job_of(&[("t", p.url("waiting"))]);
    waiting["autoConfirm"] = serde_json::json!(false);
    let waiting = app.submit(&waiting).await;
    app.wait_status(&waiting, "reserved").await;
    let hurt = crate::operator::heuristic_job(&app.addr, &app.http, &p, "sweep").await;
    app.wait_status(&hurt, "heuristic").await;
    let gone =
        eventually(|| async { app.get(&format!("/jobs/{done}")).await.status() == 404 }).await;
    assert!(gone, "the completed job was never swept");
    assert_eq!(app.get(&format!("/jobs/{waiting}")).await.status(), 200);
    assert_eq!(app.get(&format!("/jobs/{hurt}")).await.status(), 200);
    app.stop().await;
}
