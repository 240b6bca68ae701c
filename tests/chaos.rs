//! A short run of every chaos scenario against the real coordinator binary: no invariant
//! violation is allowed. The long soak is `cargo run --release --bin tcc-chaos -- --soak 30`.

#[path = "../chaos/mod.rs"]
#[allow(dead_code)]
mod chaos;

use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_keeps_the_promise() {
    let seed = std::env::var("TCC_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..1_000_000_000));
    println!("chaos seed {seed} (replay with TCC_CHAOS_SEED={seed})");
    let mut opts = chaos::short_options(PathBuf::from(env!("CARGO_BIN_EXE_tcc-coordinator")));
    // The sdk-participant scenario runs the participant library's `inventory` example, which
    // `cargo test` at the root builds (the library is a default member); `cargo test --test
    // chaos` alone does not: then it is skipped, except under CI.
    let mut scenarios = chaos::Scenario::ALL.to_vec();
    match chaos::find_inventory() {
        Ok(path) => opts.inventory = Some(path),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "sdk-participant cannot run under CI: {e}"
            );
            eprintln!("skipped sdk-participant: {e}");
            scenarios.retain(|s| !s.needs_inventory());
        }
    }
    let dir = chaos::scratch_dir("test");
    let reports = chaos::run_all(&dir, &scenarios, seed, &opts)
        .await
        .expect("the chaos suite ran");
    let _ = std::fs::remove_dir_all(&dir);
    let mut failures = Vec::new();
    for r in &reports {
        assert!(r.accepted > 0, "{}: no job accepted", r.scenario);
        for v in &r.violations {
            failures.push(format!("{} (seed {}): {v}", r.scenario, r.seed));
        }
    }
    assert!(
        failures.is_empty(),
        "invariant violations:\n{}",
        failures.join("\n")
    );
}

/// A primary and a synchronous standby; the primary dies under a coordinator that names both
/// (`DATABASE_URL=postgres://h1,h2/db?target_session_attrs=read-write`). While no server can
/// take a durable commit, requests are answered 503 within `TCC_DB_TIMEOUT` and readiness says
/// 503; once the standby is promoted the same coordinator process accepts jobs again within
/// 10 s, with no restart; twice over (the old primary rebuilt as the new standby in between),
/// and every job answered 202 ends completed with each participant confirmed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_synchronous_standby() {
    use chaos::participant::ParticipantService;
    use chaos::procs::Instance;
    use chaos::replication::Pair;
    use chaos::rules::ResState;
    use serde_json::{Value, json};
    use std::time::{Duration, Instant};

    let dir = chaos::scratch_dir("failover");
    let d = dir.clone();
    let mut pair = tokio::task::spawn_blocking(move || Pair::start(&d))
        .await
        .expect("joined")
        .expect("a primary and a synchronous standby");
    tcc_coordinator::embedded_pg::create_database(&pair.primary_config("postgres"), "tcc")
        .await
        .expect("database created");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let try_url = format!("http://{}/try/item", listener.local_addr().expect("addr"));
    let (participant, _served) =
        ParticipantService::serve(listener, None, 7, false).expect("participant");

    let env: Vec<(String, String)> = [
        ("DATABASE_URL", pair.url("tcc").as_str()),
        ("TCC_DB_TIMEOUT", "2s"),
        ("TCC_SCAN_INTERVAL", "100ms"),
        ("TCC_SHUTDOWN_GRACE", "1s"),
        ("RUST_LOG", "error"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut coordinator = Instance::new(
        "failover-0",
        PathBuf::from(env!("CARGO_BIN_EXE_tcc-coordinator")),
        env,
    )
    .expect("instance");
    coordinator.start().expect("started");
    let base = coordinator.addr.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");

    let ready = || async {
        http.get(format!("{base}/health/ready"))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    let until = |limit: u64| Instant::now() + Duration::from_secs(limit);
    let deadline = until(60);
    while ready().await != 200 {
        assert!(
            Instant::now() < deadline,
            "the coordinator never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut n = 0;
    let mut submit = || {
        n += 1;
        let correlation_id = format!("failover-{n}");
        let doc = json!({
            "correlationID": correlation_id,
            "autoConfirm": true,
            "tasks": [
                {"taskID": "a", "taskURL": try_url},
                {"taskID": "b", "taskURL": try_url},
            ],
        });
        let (http, base) = (http.clone(), base.clone());
        async move {
            let started = Instant::now();
            let r = http
                .post(format!("{base}/jobs"))
                .json(&doc)
                .send()
                .await
                .expect("an answer, never a hang past the client's 30 s");
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or_default();
            let accepted = body["jobID"]
                .as_str()
                .map(|id| (id.to_string(), correlation_id));
            (status, accepted, started.elapsed())
        }
    };
    let mut accepted = Vec::new();
    for _ in 0..5 {
        let (status, id, _) = submit().await;
        assert_eq!(status, 202);
        accepted.push(id.expect("jobID"));
    }

    for round in 1..=2 {
        let p = &pair;
        tokio::task::block_in_place(|| p.kill_primary()).expect("primary killed");
        // No server takes writes: not ready, and a new job is refused in bounded time.
        let deadline = until(30);
        while ready().await != 503 {
            assert!(
                Instant::now() < deadline,
                "round {round}: still ready with the primary dead"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, _, took) = submit().await;
        assert_eq!(status, 503, "round {round}: a job with no primary");
        assert!(
            took < Duration::from_secs(20),
            "round {round}: took {took:?}"
        );

        if round == 1 {
            // Promoted, but still waiting for a synchronous standby: nothing can be committed
            // durably, so not ready, and a new job is answered 503 within TCC_DB_TIMEOUT.
            tokio::task::block_in_place(|| pair.promote_waiting()).expect("standby promoted");
            let deadline = until(30);
            while ready().await != 503 {
                assert!(
                    Instant::now() < deadline,
                    "ready while no commit can be durable"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (status, _, took) = submit().await;
            assert_eq!(status, 503, "a job while no commit can be durable");
            assert!(took < Duration::from_secs(20), "took {took:?}");
            // Readiness says why in its own words (here: the identity cannot be taken anew,
            // since that too is a commit), never the database's.
            let r = http
                .get(format!("{base}/health/ready"))
                .send()
                .await
                .expect("ready");
            assert_eq!(r.status(), 503);
            let problem: Value = r.json().await.expect("problem");
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(
                (detail.contains("identity") || detail.contains("durable commit"))
                    && !detail.contains("db error"),
                "{problem}"
            );
        }
        let promoted = tokio::task::block_in_place(|| {
            if round == 1 {
                pair.commit_alone()?;
            } else {
                pair.promote()?;
            }
            Ok::<Instant, String>(Instant::now())
        })
        .expect("the new primary commits");
        let first = loop {
            let (status, id, _) = submit().await;
            if status == 202 {
                accepted.push(id.expect("jobID"));
                break promoted.elapsed();
            }
            assert!(
                promoted.elapsed() < Duration::from_secs(30),
                "round {round}: no job accepted 30 s after the promotion (last answer {status})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!(
            "round {round}: first job accepted {:.2}s after the promotion",
            first.as_secs_f64()
        );
        assert!(
            first <= Duration::from_secs(10),
            "round {round}: the first job was accepted {first:?} after the promotion"
        );
        for _ in 0..5 {
            let (status, id, _) = submit().await;
            assert_eq!(status, 202, "round {round}: after the failover");
            accepted.push(id.expect("jobID"));
        }
        while ready().await != 200 {
            assert!(
                promoted.elapsed() < Duration::from_secs(10),
                "round {round}: not ready 10 s after the promotion"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "round {round}: ready {:.2}s after the promotion",
            promoted.elapsed().as_secs_f64()
        );
        if round == 1 {
            let p = &pair;
            tokio::task::block_in_place(|| p.rebuild_standby()).expect("standby rebuilt");
        }
    }

    // Every job answered 202 exists and completes; each reservation confirmed exactly once.
    for (id, correlation_id) in &accepted {
        let deadline = until(60);
        loop {
            let r = http
                .get(format!("{base}/jobs/{id}"))
                .send()
                .await
                .expect("answer");
            assert_eq!(r.status(), 200, "job {id} was answered 202 and is gone");
            let v: Value = r.json().await.expect("json");
            if v["jobStatus"] == "completed" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} is still {} (tasks {})",
                v["jobStatus"],
                v["tasks"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let held = participant.reservations_of(correlation_id);
        for task in ["a", "b"] {
            let confirmed: Vec<_> = held
                .iter()
                .filter(|r| r.task_id == task && r.state == ResState::Confirmed)
                .collect();
            assert_eq!(
                confirmed.len(),
                1,
                "job {id}: task {task} confirmed at {confirmed:?}"
            );
            assert_eq!(confirmed[0].confirms_applied, 1, "job {id}: task {task}");
        }
    }
    assert!(participant.overlaps().is_empty());
    assert_eq!(coordinator.terminate(), Some(0));
    let p = &pair;
    tokio::task::block_in_place(|| p.stop());
    let _ = std::fs::remove_dir_all(&dir);
}
