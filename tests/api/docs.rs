//! The documentation's examples work: the minimal participant of docs/participant.md, run as it
//! is written, takes part in jobs that complete and jobs that are canceled.

use serde_json::json;

use crate::helpers::*;

/// The Python participant of docs/participant.md, on `port` instead of 9001.
fn documented_participant(port: u16) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/participant.md"))
        .expect("docs/participant.md");
    let start = doc.find("```python\n").expect("a python block") + "```python\n".len();
    let len = doc[start..].find("```").expect("the end of the block");
    doc[start..start + len].replace("9001", &port.to_string())
}

/// Wait until something listens on `port`.
async fn listening(port: u16, what: &str) {
    let up = eventually(|| async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "{what} never listened");
}

/// The Python participant of docs/participant.md, running on a port of its own.
async fn start_documented_participant() -> (Daemon, u16) {
    let port = free_port();
    let file = std::env::temp_dir().join(format!("seats-{port}.py"));
    std::fs::write(&file, documented_participant(port)).expect("write the participant");
    let seats = Daemon(
        std::process::Command::new("python3")
            .arg(&file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3"),
    );
    listening(port, "the documented participant").await;
    (seats, port)
}

#[tokio::test]
async fn the_minimal_participant_of_the_docs_completes_and_cancels() {
    let (_seats, port) = start_documented_participant().await;
    let app = spawn_app().await;
    let task_url = format!("http://127.0.0.1:{port}/reservations");
    let done = app
        .submit(
            &json!({"tasks": [{"taskID": "seat", "taskURL": task_url, "body": {"seat": "12A"}}]}),
        )
        .await;
    let job = app.wait_status(&done, "completed").await;
    assert_eq!(task(&job, "seat")["taskStatus"], "confirmed", "{job}");
    // Reserved, then canceled by the client: the participant answers the cancel.
    let open = app
        .submit(&json!({"autoConfirm": false, "tasks": [{"taskID": "seat", "taskURL": task_url}]}))
        .await;
    app.wait_status(&open, "reserved").await;
    let r = app.delete(&format!("/jobs/{open}")).await;
    assert_eq!(r.status(), 202);
    let job = app.wait_status(&open, "canceled").await;
    assert_eq!(task(&job, "seat")["taskStatus"], "canceled", "{job}");
    app.stop().await;
}

/// The minimal participant of the docs keeps every rule the checker knows (it holds for five
/// minutes, so the expiry rule is skipped), as the page says.
#[tokio::test]
async fn the_minimal_participant_of_the_docs_keeps_the_checkers_rules() {
    use tcc_coordinator::check::{CheckOptions, Outcome, check};
    let (_seats, port) = start_documented_participant().await;
    let mut options = CheckOptions::new(format!("http://127.0.0.1:{port}/reservations"));
    options.body = json!({"seat": "12A"});
    let report = check(&options).await.expect("the check runs");
    for finding in &report.findings {
        let expected = if finding.rule == "confirm-after-expiry-404" {
            Outcome::Skipped
        } else {
            Outcome::Pass
        };
        assert_eq!(
            finding.outcome, expected,
            "{}: {}",
            finding.rule, finding.detail
        );
    }
    assert!(report.unreleased.is_empty(), "{:?}", report.unreleased);
}

/// The documents whose shell examples talk to the coordinator.
const DOCUMENTS: [&str; 5] = [
    "README.md",
    "docs/api.md",
    "docs/operations.md",
    "docs/participant.md",
    "docs/runbook.md",
];

/// What the line before a ```sh block says the tests do with it:
/// `<!-- doc-test: run; expect: TEXT; until: TEXT; given: SITUATION -->` or
/// `<!-- doc-test: skip: WHY -->`.
#[derive(Debug, Default)]
struct Directive {
    skip: Option<String>,
    /// Each must appear in what the block prints.
    expect: Vec<String>,
    /// Run the block again (it only reads, or repeats what it did) until it prints this.
    until: Option<String>,
    /// A situation the harness sets up first (its job becomes `{jobID}`).
    given: Option<String>,
}

struct Example {
    at: String,
    directive: Option<Directive>,
    script: String,
}

fn parse_directive(line: &str) -> Option<Directive> {
    let inner = line
        .trim()
        .strip_prefix("<!-- doc-test:")?
        .strip_suffix("-->")?;
    let mut d = Directive::default();
    for item in inner.split("; ").map(str::trim) {
        if let Some(why) = item.strip_prefix("skip:") {
            d.skip = Some(why.trim().to_string());
        } else if let Some(text) = item.strip_prefix("expect:") {
            d.expect.push(text.trim().to_string());
        } else if let Some(text) = item.strip_prefix("until:") {
            d.until = Some(text.trim().to_string());
        } else if let Some(text) = item.strip_prefix("given:") {
            d.given = Some(text.trim().to_string());
        } else {
            assert_eq!(item, "run", "unknown doc-test directive {item:?} in {line}");
        }
    }
    Some(d)
}

/// Every ```sh block of `file`, in order, with the directive on the line before it.
fn examples(file: &str) -> Vec<Example> {
    let text = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_end() == "```sh" {
            let before = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
            let end = (i + 1..lines.len())
                .find(|&j| lines[j].trim_end() == "```")
                .unwrap_or_else(|| panic!("{file}:{}: the block never ends", i + 1));
            out.push(Example {
                at: format!("{file}:{}", i + 1),
                directive: before.and_then(|l| parse_directive(l)),
                script: lines[i + 1..end].join("\n"),
            });
            i = end;
        }
        i += 1;
    }
    out
}

/// A command line's words as the shell splits them (single and double quotes, no escapes).
fn words(line: &str) -> Vec<String> {
    let (mut out, mut word, mut quote, mut started) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, c) if c.is_whitespace() => {
                if started || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                started = false;
            }
            (None, c) => word.push(c),
        }
    }
    if started || !word.is_empty() {
        out.push(word);
    }
    out
}

/// A demo participant (`tcc-chaos participant`) as a doc starts it, on a port of its own.
fn demo_participant(flags: &[&str]) -> (Daemon, u16) {
    let port = free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tcc-chaos"))
        .arg("participant")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(flags)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the demo participant");
    (Daemon(child), port)
}

/// The word after `flag` in a command line's `words`.
fn flag_value<'w>(words: &[&'w str], flag: &str) -> Option<&'w str> {
    let at = words.iter().position(|w| *w == flag)?;
    words.get(at + 1).copied()
}

/// The example service `inventory`, as `cargo test` at the workspace's root builds it (next to
/// this test's own binary: `target/{profile}/examples/inventory`).
fn inventory_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("inventory"))
        .filter(|bin| bin.exists());
    bin.unwrap_or_else(|| {
        panic!(
            "the docs start inventory, which is not built: run `cargo test` at the workspace's root, or `cargo build -p tcc-participant --example inventory` first"
        )
    })
}

/// One document's run: a coordinator on a fresh database, the participants the document
/// starts, and what earlier examples printed that later ones use.
struct Session {
    db: String,
    http: reqwest::Client,
    coordinator: Option<Process>,
    /// The address a document names → the one the harness listens on.
    addresses: Vec<(String, String)>,
    participants: Vec<Daemon>,
    /// Participants the harness scripts (a confirm that keeps failing).
    doubles: Vec<crate::participant::Participant>,
    /// The placeholders: `{jobID}`, `{ETag}`, `{link1}`, `{link2}`…
    filled: Vec<(String, String)>,
}

impl Session {
    async fn new() -> Session {
        let mut s = Session {
            db: fresh_database().await,
            http: reqwest::Client::new(),
            coordinator: None,
            addresses: Vec::new(),
            participants: Vec::new(),
            doubles: Vec::new(),
            filled: Vec::new(),
        };
        let soon = chrono::Utc::now() + chrono::Duration::minutes(10);
        s.fill(
            "{in ten minutes}",
            soon.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        s.serve(&[]).await;
        s
    }

    fn base(&self) -> String {
        self.coordinator
            .as_ref()
            .map(|c| c.addr.clone())
            .unwrap_or_default()
    }

    /// (Re)start the coordinator with the settings a document gives it.
    async fn serve(&mut self, env: &[(String, String)]) {
        self.coordinator = None;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let c = start_process_with(&self.db, "docs", &env);
        c.wait_ready(&self.http).await;
        let addr = c.addr.trim_start_matches("http://").to_string();
        self.addresses
            .retain(|(doc, _)| doc != "localhost:8080" && doc != "127.0.0.1:8080");
        self.addresses.push(("localhost:8080".into(), addr.clone()));
        self.addresses.push(("127.0.0.1:8080".into(), addr));
        self.coordinator = Some(c);
    }

    async fn participant(&mut self, listen: &str, flags: &[&str]) {
        let (daemon, port) = demo_participant(flags);
        listening(port, "the demo participant").await;
        self.participants.push(daemon);
        let real = format!("127.0.0.1:{port}");
        let port_of = listen.rsplit(':').next().unwrap_or_default();
        self.addresses.push((listen.to_string(), real.clone()));
        self.addresses.push((format!("localhost:{port_of}"), real));
    }

    /// `inventory` as a document starts it, on a port of its own and the session's database
    /// (whatever database the document names).
    async fn inventory(&mut self, listen: &str, flags: &[&str]) {
        let port = free_port();
        let real = format!("127.0.0.1:{port}");
        let child = std::process::Command::new(inventory_binary())
            .args(["--listen", &real, "--database-url", &self.db])
            .args(flags)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("inventory");
        self.participants.push(Daemon(child));
        listening(port, "inventory").await;
        let port_of = listen.rsplit(':').next().unwrap_or_default();
        self.addresses.push((listen.to_string(), real.clone()));
        self.addresses.push((format!("localhost:{port_of}"), real));
    }

    /// What a placeholder stands for now (empty before anything filled it).
    fn filled(&self, name: &str) -> String {
        self.filled
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// The address the harness listens on for one a document names.
    fn address(&self, doc: &str) -> String {
        self.addresses
            .iter()
            .find(|(d, _)| d == doc)
            .map(|(_, real)| real.clone())
            .unwrap_or_default()
    }

    fn fill(&mut self, name: &str, value: String) {
        self.filled.retain(|(n, _)| n != name);
        self.filled.push((name.to_string(), value));
    }

    /// A situation an example starts from; its job becomes `{jobID}`.
    async fn given(&mut self, what: &str) {
        if what == "the participant above" {
            let (seats, port) = start_documented_participant().await;
            self.participants.push(seats);
            self.addresses
                .push(("127.0.0.1:9001".into(), format!("127.0.0.1:{port}")));
            return;
        }
        if self.address("127.0.0.1:9000").is_empty() {
            self.participant("127.0.0.1:9000", &[]).await;
        }
        let base = self.base();
        let ok = self.address("127.0.0.1:9000");
        let (job, end) = match what {
            "the demo participant" => return,
            "an open job" => (json!({"autoConfirm": false, "tasks": []}), "pending"),
            "a confirming job" => {
                use crate::participant::{Op, Participant, Reply};
                let p = Participant::start().await;
                p.set_default(Op::Confirm, "pay", Reply::Status(503));
                let job = json!({"tasks": [{"taskID": "pay", "taskURL": p.url("pay")}]});
                self.doubles.push(p);
                (job, "confirming")
            }
            "a heuristic job" => {
                if self.address("127.0.0.1:9002").is_empty() {
                    self.participant("127.0.0.1:9002", &["--refuse-confirms"])
                        .await;
                }
                let refusing = self.address("127.0.0.1:9002");
                (
                    json!({
                        "contact": {"person": "on call", "webhook": "http://127.0.0.1:9/hook"},
                        "tasks": [
                            {"taskID": "seat", "taskURL": format!("http://{ok}/try/seat")},
                            {"taskID": "payment", "taskURL": format!("http://{refusing}/try/payment")}]}),
                    "heuristic",
                )
            }
            "a failed job" => (
                // Nobody confirms it before its deadline.
                json!({"jobMaxTTL": 1, "autoConfirm": false, "tasks": [
                    {"taskID": "seat", "taskURL": format!("http://{ok}/try/seat")}]}),
                "failed",
            ),
            other => panic!("no situation {other:?} to set up"),
        };
        let id = submit_to(&self.http, &base, &job).await;
        let done = wait_for_status(&self.http, &base, &id, end).await;
        assert_eq!(done["jobStatus"], end);
        self.fill("{jobID}", id);
    }

    /// Run one example: its coordinator and participant lines start processes, the rest runs
    /// in bash with the placeholders filled.
    async fn run(&mut self, example: &Example, d: &Directive) -> String {
        if let Some(what) = &d.given {
            self.given(what).await;
        }
        let joined = example.script.replace("\\\n", " ");
        let mut script = Vec::new();
        for line in joined.lines() {
            let command = line.split(" #").next().unwrap_or_default().trim();
            if let Some(env) = command.strip_suffix("cargo run --release -- serve") {
                let env = words(env)
                    .into_iter()
                    .filter_map(|kv| {
                        kv.split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
                    .collect::<Vec<_>>();
                self.serve(&env).await;
            } else if let Some(rest) = command
                .strip_prefix("cargo run --release -p tcc-participant --example inventory --")
            {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let listen = flag_value(&words, "--listen").unwrap_or("127.0.0.1:8081");
                let hold: Vec<&str> = words
                    .iter()
                    .position(|w| *w == "--hold")
                    .and_then(|i| words.get(i..i + 2))
                    .map(<[&str]>::to_vec)
                    .unwrap_or_default();
                self.inventory(listen, &hold).await;
            } else if let Some(rest) =
                command.strip_prefix("cargo run --release --bin tcc-chaos -- participant")
            {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let listen = flag_value(&words, "--listen").unwrap_or("127.0.0.1:9000");
                let flags: Vec<&str> = words
                    .iter()
                    .copied()
                    .filter(|w| *w != "--listen" && *w != listen)
                    .collect();
                self.participant(listen, &flags).await;
            } else {
                script.push(line.to_string());
            }
        }
        let mut script = script.join("\n");
        for (doc, real) in &self.addresses {
            script = script.replace(doc.as_str(), real);
        }
        for (name, value) in &self.filled {
            script = script.replace(name.as_str(), value);
        }
        let (id, etag) = (self.filled("{jobID}"), self.filled("{ETag}"));
        let base = self.base();
        let run = || {
            let out = std::process::Command::new("bash")
                .args(["-c", &format!("set -e -o pipefail\n{script}")])
                .env("TCC", &base)
                .env("ID", &id)
                .env("ETAG", &etag)
                .output()
                .expect("bash");
            (out.status.success(), printed(&out))
        };
        // An example that waits for something runs again (a fifth of a second apart: each run is
        // a shell) until it prints it.
        let outcome = match &d.until {
            None => run(),
            Some(until) => {
                let every = std::time::Duration::from_millis(200);
                let printed_it = poll_within(PATIENCE, every, || {
                    let outcome = run();
                    async move { outcome.1.contains(until.as_str()).then_some(outcome) }
                })
                .await;
                printed_it.unwrap_or_else(|| {
                    panic!(
                        "{}: never printed {until:?}\n--- ran:\n{script}\n--- printed:\n{}",
                        example.at,
                        run().1
                    )
                })
            }
        };
        let (ok, printed) = outcome;
        assert!(
            ok,
            "{}: failed\n--- ran:\n{script}\n--- printed:\n{printed}",
            example.at
        );
        for want in &d.expect {
            assert!(
                printed.contains(want.as_str()),
                "{}: {want:?} not printed\n--- ran:\n{script}\n--- printed:\n{printed}",
                example.at
            );
        }
        self.learn(&printed);
        printed
    }

    /// What later examples take from this one's output: the job it made, the ETag it was
    /// given, the participant links it was handed.
    fn learn(&mut self, printed: &str) {
        let id = printed
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                l.to_ascii_lowercase()
                    .starts_with("location:")
                    .then(|| l.rsplit("/jobs/").next().map(|s| s.trim().to_string()))
                    .flatten()
            })
            .next_back()
            .or_else(|| {
                // A job's own document (not a list that names many).
                printed
                    .trim_start()
                    .strip_prefix("{\"jobID\":\"")
                    .and_then(|rest| rest.split('"').next())
                    .map(String::from)
            });
        if let Some(id) = id.filter(|id| tcc_coordinator::domain::JobId::parse(id).is_ok()) {
            self.fill("{jobID}", id);
        }
        if let Some(etag) = printed
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("etag")
                    .then(|| v.trim().to_string())
            })
            .next_back()
        {
            self.fill("{ETag}", etag);
        }
        let links: Vec<String> = printed
            .split("\"participantLink\":")
            .skip(1)
            .filter_map(|rest| rest.find('}').map(|end| rest[..=end].to_string()))
            .collect();
        for (i, link) in links.into_iter().enumerate() {
            self.fill(&format!("{{link{}}}", i + 1), link);
        }
    }
}

/// Every shell example in the README and docs/ is run, in the order written, against a fresh
/// coordinator and the participants the document starts, and prints what the text says it
/// does; or is marked as not run, with why. A new example without a mark fails here.
#[tokio::test]
async fn every_shell_example_in_the_docs_runs_as_written() {
    for tool in ["bash", "curl", "jq"] {
        let found = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok();
        if !found {
            assert!(std::env::var("CI").is_err(), "{tool} is not installed");
            eprintln!("skipped: {tool} is not installed");
            return;
        }
    }
    let mut unmarked = Vec::new();
    let mut ran = 0;
    for file in DOCUMENTS {
        let mut session: Option<Session> = None;
        for example in examples(file) {
            let Some(d) = &example.directive else {
                unmarked.push(example.at.clone());
                continue;
            };
            if d.skip.is_some() {
                continue;
            }
            if session.is_none() {
                session = Some(Session::new().await);
            }
            if let Some(s) = session.as_mut() {
                s.run(&example, d).await;
                ran += 1;
            }
        }
    }
    assert!(
        unmarked.is_empty(),
        "shell examples neither run nor marked <!-- doc-test: skip: why -->: {unmarked:?}"
    );
    assert!(ran >= 15, "only {ran} examples ran");
}
