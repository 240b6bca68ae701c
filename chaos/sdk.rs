//! The `sdk-participant` scenario: the participants are replicas of `inventory`, the example
//! service of the tcc-participant library, on a real PostgreSQL database of their own, behind a
//! balancer (links name the balancer, so any replica settles any reservation) that holds each
//! request 20–200 ms, so that jobs are in flight when something dies. Replicas are SIGKILLed
//! and started again under load while coordinator instances are killed too.
//!
//! At the end the stock ledger is checked against every job's outcome: for each SKU, the
//! initial stock is `available + held + sold`; once every hold has lapsed or been settled,
//! `held` is 0 and `sold` is the sum of the quantities of the tasks of completed jobs (a failed
//! or canceled job's holds are all returned; a heuristic job, itself a violation, counts with
//! the holds the inventory says it sold). Each task's reservation must agree with its job
//! (confirmed for a completed job, never for a failed or canceled one); a heuristic outcome is
//! a violation here: nothing in this scenario loses an answer for good.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tcc_coordinator::domain::{JobId, JobStatus, TaskStatus};
use tcc_coordinator::embedded_pg::create_database;
use tcc_coordinator::store;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::procs::{Replica, free_port};
use super::proxy::{Mode, Proxy, Target};
use super::scenario::{self, Accepted, ClientPlan, Document, Options, Report, Scenario, World};

/// Replicas of `inventory` on the one database.
const REPLICAS: usize = 3;
/// How long a hold lasts before it lapses (`inventory --hold`): long beside a takeover (about
/// 1.5 s), so that a hold lapses only when its job gave it up or never heard of it.
const HOLD: Duration = Duration::from_secs(10);
/// How long the balancer holds each request on its way to a replica.
const LATENCY: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(200));
/// SKUs with stock for every job (`sku-0` …); one more, [`SCARCE`], runs out.
const PLENTIFUL: usize = 6;
/// The SKU one task in twenty asks for, stocked for about a third of its demand: its holds are
/// often refused (409), failing their jobs, and what those return is held again.
const SCARCE: &str = "scarce";
/// How long, past the hold, the holds of jobs that ended may take to be returned (the sweeper
/// runs every second).
const LAPSE_MARGIN: Duration = Duration::from_secs(30);

/// One task's hold, as its job's document asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hold {
    task: String,
    sku: String,
    quantity: i64,
}

/// A SKU's row as `GET /items/{sku}` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item {
    available: i64,
    held: i64,
    sold: i64,
}

/// The job's document: 1–5 tasks, each holding 1–3 units of a SKU through the balancer.
fn job_document(
    rng: &mut fastrand::Rng,
    balancer: &str,
    correlation_id: &str,
    plan: ClientPlan,
) -> Value {
    let n = rng.usize(1..=5);
    let tasks: Vec<Value> = (0..n)
        .map(|t| {
            let sku = if rng.u8(..20) == 0 {
                SCARCE.to_string()
            } else {
                format!("sku-{}", rng.usize(..PLENTIFUL))
            };
            json!({
                "taskID": format!("t{t}"),
                "taskURL": format!("{balancer}/items/{sku}/holds"),
                "body": {"quantity": rng.i64(1..=3)},
                "taskMaxTTL": 2,
                "outputMapping": {format!("/links/t{t}"): "/participantLink/uri"}
            })
        })
        .collect();
    json!({
        "correlationID": correlation_id,
        "jobMaxTTL": 20,
        "autoConfirm": plan == ClientPlan::AutoConfirm,
        "retryPolicy": {"maxAttempts": 4, "initialDelay": 0.05, "maxDelay": 1},
        "tasks": tasks,
    })
}

/// The holds a job's document asks for, read back from it.
fn holds_of(document: &Value) -> Vec<Hold> {
    let tasks = document["tasks"].as_array().cloned().unwrap_or_default();
    tasks
        .iter()
        .map(|t| {
            let url = t["taskURL"].as_str().unwrap_or_default();
            let sku = url
                .trim_end_matches("/holds")
                .rsplit('/')
                .next()
                .unwrap_or_default();
            Hold {
                task: t["taskID"].as_str().unwrap_or_default().to_string(),
                sku: sku.to_string(),
                quantity: t["body"]["quantity"].as_i64().unwrap_or(0),
            }
        })
        .collect()
}

/// The stock each SKU starts with, for a run of `jobs` jobs: twice the expected demand of a
/// plentiful SKU (jobs × 3 tasks × 2 units, spread over them), a third of the scarce one's.
fn initial_stock(jobs: usize) -> BTreeMap<String, i64> {
    let jobs = jobs as i64;
    let mut stock: BTreeMap<String, i64> = (0..PLENTIFUL)
        .map(|i| (format!("sku-{i}"), 2 * jobs + 20))
        .collect();
    stock.insert(SCARCE.to_string(), jobs / 10 + 2);
    stock
}

/// `n` distinct free loopback addresses.
fn free_addrs(n: usize) -> std::io::Result<Vec<std::net::SocketAddr>> {
    let mut addrs: Vec<std::net::SocketAddr> = Vec::new();
    while addrs.len() < n {
        let a = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    Ok(addrs)
}

/// Wait until every replica answers HTTP (any status: `GET /items/…` of no item is 404).
async fn wait_serving(http: &reqwest::Client, replicas: &mut [Replica]) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(60);
    for r in replicas.iter_mut() {
        loop {
            let url = format!("http://{}/items/none", r.addr);
            if http.get(&url).send().await.is_ok() {
                break;
            }
            if Instant::now() >= until || !r.alive() {
                return Err(format!(
                    "inventory replica {} never served on {}; its log ends:\n{}",
                    r.name,
                    r.addr,
                    r.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// `GET /items/{sku}` of every SKU through the balancer.
async fn read_items(
    http: &reqwest::Client,
    base: &str,
    skus: impl Iterator<Item = &String>,
) -> Result<BTreeMap<String, Item>, String> {
    let mut items = BTreeMap::new();
    for sku in skus {
        let url = format!("{base}/items/{sku}");
        let resp = http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("{url} answered {status}: {e}"))?;
        let body: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{url} answered {status}, not JSON ({e}): {text}"))?;
        let field = |name: &str| {
            body[name]
                .as_i64()
                .ok_or_else(|| format!("{url} answered {status} without {name}: {body}"))
        };
        items.insert(
            sku.clone(),
            Item {
                available: field("available")?,
                held: field("held")?,
                sold: field("sold")?,
            },
        );
    }
    Ok(items)
}

/// Every 0.3–1.5 s until the load is done: an inventory replica killed, a coordinator instance
/// killed (as in `three-instances`), or both. Neither is ever left with nothing running: were
/// every coordinator down for longer than a hold, a job whose confirm may have been applied
/// would rightly end heuristic when its other holds lapse (the first soak did just that).
async fn inject(
    seed: u64,
    instances: Arc<Mutex<Vec<super::procs::Instance>>>,
    replicas: Arc<Mutex<Vec<Replica>>>,
    done: CancellationToken,
) {
    let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(17));
    loop {
        let pause = Duration::from_millis(rng.u64(300..1500));
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let what = rng.u8(..4);
        if what != 2 {
            kill_a_replica(&replicas, &mut rng).await;
        }
        if what >= 2 {
            scenario::kill_a_coordinator(&instances, &mut rng).await;
            let mut list = instances.lock().await;
            if !list.iter_mut().any(|i| i.alive())
                && let Some(first) = list.first_mut()
            {
                let _ = first.revive();
            }
        }
    }
}

/// A random replica SIGKILLed, started again now or later (now when no other is up: the
/// service as a whole stays reachable); each replica that is down is started again with a
/// chance of one in three.
async fn kill_a_replica(replicas: &Mutex<Vec<Replica>>, rng: &mut fastrand::Rng) {
    let mut list = replicas.lock().await;
    let victim = rng.usize(..list.len());
    list[victim].kill();
    let now = rng.bool();
    let others_up = list
        .iter_mut()
        .enumerate()
        .any(|(i, r)| i != victim && r.alive());
    if now || !others_up {
        let _ = list[victim].start();
    }
    for r in list.iter_mut() {
        if rng.u8(..3) == 0 {
            let _ = r.revive();
        }
    }
}

/// The states of a job's reservations at the inventory, by request id (the task id).
async fn reservations_of(
    ledger: &tokio_postgres::Client,
    correlation_id: &str,
) -> Result<HashMap<String, String>, String> {
    let rows = ledger
        .query(
            "SELECT request_id, state FROM tcc_reservations WHERE correlation_id = $1",
            &[&correlation_id],
        )
        .await
        .map_err(|e| format!("reading the reservations of {correlation_id}: {e}"))?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(|e| format!("reading the reservations of {correlation_id}: {e}"))
}

/// Run the scenario (see the module's documentation).
pub(super) async fn run(
    world: &World,
    seed: u64,
    opts: &Options,
    report: &mut Report,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let inventory: PathBuf = opts.inventory.clone().ok_or_else(|| {
        format!(
            "no inventory binary was given: build it with `{}`",
            super::INVENTORY_BUILD
        )
    })?;
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    let scenario = Scenario::SdkParticipant;
    let db = format!("chaos_sdk_participant_{seed}");
    let inventory_db = format!("chaos_inventory_{seed}");
    for name in [&db, &inventory_db] {
        create_database(&world.pg.config_for("postgres"), name)
            .await
            .map_err(|e| err(&e))?;
    }
    let socket_dir = world.pg.socket_dir().to_path_buf();
    let url = |name: &str| {
        format!(
            "host={} port=5432 user=postgres dbname={name} connect_timeout=5",
            socket_dir.display()
        )
    };

    // The replicas, behind a balancer that every Try URL and every link names.
    let addrs = free_addrs(REPLICAS).map_err(|e| err(&e))?;
    let (balancer, _balancer_task) = Proxy::start(Target::Any(addrs.clone()), stop.clone())
        .await
        .map_err(|e| err(&e))?;
    balancer.set(Mode::Slow(LATENCY.0, LATENCY.1));
    let base = format!("http://{}", balancer.addr);
    let mut replicas = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let args: [&str; 8] = [
            "--listen",
            &addr.to_string(),
            "--database-url",
            &url(&inventory_db),
            "--hold",
            &HOLD.as_secs_f64().to_string(),
            "--public-url",
            &base,
        ];
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut r = Replica::new(
            &format!("inventory-{seed}-{i}"),
            inventory.clone(),
            *addr,
            args,
            &socket_dir,
        );
        r.start()
            .map_err(|e| format!("cannot start {}: {e}", inventory.display()))?;
        replicas.push(r);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| err(&e))?;
    wait_serving(&http, &mut replicas).await?;
    let stock = initial_stock(opts.jobs);
    for (sku, n) in &stock {
        let resp = http
            .put(format!("{base}/items/{sku}"))
            .header("content-type", "application/json")
            .body(json!({"available": n}).to_string())
            .send()
            .await
            .map_err(|e| format!("stocking {sku}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("stocking {sku} answered {}", resp.status()));
        }
    }

    let instances = scenario::start_instances(scenario, opts, &url(&db), None)?;
    let coordinators: Vec<String> = instances.iter().map(|i| i.addr.clone()).collect();
    scenario::wait_ready(&http, &coordinators).await?;

    let instances = Arc::new(Mutex::new(instances));
    let replicas = Arc::new(Mutex::new(replicas));
    let load_done = CancellationToken::new();
    let faults = tokio::spawn(inject(
        seed,
        instances.clone(),
        replicas.clone(),
        load_done.clone(),
    ));
    let accepted = Arc::new(Mutex::new(Vec::<Accepted>::new()));
    let document: Document = {
        let base = base.clone();
        Arc::new(move |rng, correlation_id, plan| job_document(rng, &base, correlation_id, plan))
    };
    scenario::load(
        scenario,
        seed,
        opts,
        &http,
        &coordinators,
        document,
        &accepted,
        None,
    )
    .await;
    load_done.cancel();
    if let Err(e) = faults.await {
        report
            .violations
            .push(format!("the fault injector failed: {e}"));
    }

    // Heal: every process up again; let every accepted job end.
    for inst in instances.lock().await.iter_mut() {
        inst.revive().map_err(|e| err(&e))?;
    }
    for r in replicas.lock().await.iter_mut() {
        r.revive().map_err(|e| err(&e))?;
    }
    let accepted = std::mem::take(&mut *accepted.lock().await);
    report.accepted = accepted.len();
    let checker = store::pool(world.pg.config_for(&db), 2).map_err(|e| err(&e))?;
    scenario::wait_terminal(&checker, opts.settle).await?;

    // Every job against its reservations; what the completed ones sold.
    let ledger = store::pool(world.pg.config_for(&inventory_db), 2).map_err(|e| err(&e))?;
    let client = checker.get().await.map_err(|e| err(&e))?;
    let books = ledger.get().await.map_err(|e| err(&e))?;
    let mut sold: BTreeMap<String, i64> = stock.keys().map(|k| (k.clone(), 0)).collect();
    for a in &accepted {
        let Some(record) = store::load_job(&client, &JobId::parse(&a.id).map_err(|e| err(&e))?)
            .await
            .map_err(|e| err(&e))?
        else {
            report
                .violations
                .push(format!("{}: accepted but not stored", a.id));
            continue;
        };
        let found = scenario::own_rows(&record, report);
        report.violations.extend(found);
        let job = &record.job;
        let holds = holds_of(&a.document);
        let states = reservations_of(&books, &a.correlation_id).await?;
        let state_of = |task: &str| states.get(task).map(String::as_str);
        let confirmed: Vec<&Hold> = holds
            .iter()
            .filter(|h| state_of(&h.task) == Some("confirmed"))
            .collect();
        match job.status() {
            JobStatus::Completed => {
                report.completed += 1;
                for h in &holds {
                    *sold.entry(h.sku.clone()).or_default() += h.quantity;
                    if state_of(&h.task) != Some("confirmed") {
                        report.violations.push(format!(
                            "{}: completed, but task {} ({} × {}) is {:?} at the inventory",
                            job.id,
                            h.task,
                            h.quantity,
                            h.sku,
                            state_of(&h.task)
                        ));
                    }
                }
            }
            JobStatus::Failed | JobStatus::Canceled => {
                if job.status() == JobStatus::Failed {
                    report.failed += 1;
                } else {
                    report.canceled += 1;
                }
                for h in &confirmed {
                    report.violations.push(format!(
                        "{}: {}, but task {} ({} × {}) was sold",
                        job.id,
                        job.status(),
                        h.task,
                        h.quantity,
                        h.sku
                    ));
                }
            }
            JobStatus::Heuristic => {
                report.heuristic += 1;
                // Already a violation; what it sold is not the ledger's fault.
                for h in &confirmed {
                    *sold.entry(h.sku.clone()).or_default() += h.quantity;
                }
                if confirmed.is_empty() || confirmed.len() == holds.len() {
                    report.heuristic_unknown += 1;
                }
                report.violations.push(format!(
                    "{}: heuristic ({}), with the inventory {}",
                    job.id,
                    job.tasks
                        .iter()
                        .map(|t| format!("{} {}", t.task_id, t.status))
                        .collect::<Vec<_>>()
                        .join(", "),
                    holds
                        .iter()
                        .map(|h| format!("{} {:?}", h.task, state_of(&h.task)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            other => report
                .violations
                .push(format!("{}: still {other} after the settle time", job.id)),
        }
        // What the coordinator says of each task must not contradict the inventory.
        for t in &job.tasks {
            let state = state_of(t.task_id.as_str());
            let contradiction = match t.status {
                TaskStatus::Confirmed => state != Some("confirmed"),
                TaskStatus::Canceled | TaskStatus::Failed | TaskStatus::Expired => {
                    state == Some("confirmed")
                }
                _ => false,
            };
            if contradiction {
                report.violations.push(format!(
                    "{}: task {} is {} but its reservation at the inventory is {state:?}",
                    job.id, t.task_id, t.status
                ));
            }
        }
    }

    // The ledger, once every hold has been settled or has lapsed.
    let until = Instant::now() + HOLD + LAPSE_MARGIN;
    let items = loop {
        let read = read_items(&http, &base, stock.keys()).await;
        let settled = read
            .as_ref()
            .is_ok_and(|items| items.values().all(|i| i.held == 0));
        if settled || Instant::now() >= until {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    match items {
        Err(e) => report
            .violations
            .push(format!("the stock could not be read: {e}")),
        Ok(items) => {
            for (sku, initial) in &stock {
                let Some(i) = items.get(sku) else { continue };
                let expected = sold.get(sku).copied().unwrap_or(0);
                if i.available + i.held + i.sold != *initial {
                    report.violations.push(format!(
                        "{sku}: {} available + {} held + {} sold is not the {initial} stocked",
                        i.available, i.held, i.sold
                    ));
                }
                if i.held != 0 {
                    report.violations.push(format!(
                        "{sku}: {} still held {:.0} s after the jobs ended",
                        i.held,
                        (HOLD + LAPSE_MARGIN).as_secs_f64()
                    ));
                }
                if i.sold != expected {
                    report.violations.push(format!(
                        "{sku}: {} sold, but the completed jobs' tasks (and the confirmed tasks of heuristic jobs) hold {expected}",
                        i.sold
                    ));
                }
            }
        }
    }
    let reserved: i64 = books
        .query_one(
            "SELECT count(*) FROM tcc_reservations WHERE state = 'reserved'",
            &[],
        )
        .await
        .map_err(|e| err(&e))?
        .get(0);
    if reserved > 0 {
        report.violations.push(format!(
            "{reserved} reservations are still reserved after every hold lapsed"
        ));
    }

    scenario::terminate(&instances, report).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_documents_holds_are_read_back() {
        let mut rng = fastrand::Rng::with_seed(7);
        let doc = job_document(&mut rng, "http://b:1", "c", ClientPlan::AutoConfirm);
        let holds = holds_of(&doc);
        assert_eq!(holds.len(), doc["tasks"].as_array().map_or(0, Vec::len));
        for (h, t) in holds
            .iter()
            .zip(doc["tasks"].as_array().into_iter().flatten())
        {
            assert_eq!(t["taskURL"], format!("http://b:1/items/{}/holds", h.sku));
            assert!((1..=3).contains(&h.quantity));
        }
    }
}
