//! The embedded PostgreSQL's data directory: one coordinator owns the cluster it started; a
//! second one on the same directory refuses, saying how to share it, and the first serves on.

use crate::helpers::*;

/// The coordinator binary on the embedded default under `dir`, listening on `port`.
fn embedded(dir: &std::path::Path, port: u16, env: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tcc-coordinator"));
    cmd.arg("serve")
        .env_remove("DATABASE_URL")
        .env("TCC_DATA_DIR", dir)
        .env("TCC_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Stops the cluster under a data directory and removes it when the test ends, however it ends
/// (a coordinator killed by a failing test leaves its cluster running).
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(tools) = tcc_coordinator::embedded_pg::ServerTools::find() {
            let _ = tools
                .command("pg_ctl")
                .args(["stop", "-m", "immediate", "-D"])
                .arg(self.0.join("pgdata"))
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The coordinator as `embedded` makes it, running, its output dropped.
fn start(dir: &std::path::Path, port: u16, env: &[(&str, &str)]) -> Daemon {
    Daemon(
        embedded(dir, port, env)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("a coordinator"),
    )
}

async fn ready(http: &reqwest::Client, port: u16) -> bool {
    http.get(format!("http://127.0.0.1:{port}/health/ready"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn a_second_coordinator_on_one_data_dir_refuses_and_the_first_serves_on() {
    if tcc_coordinator::embedded_pg::find_bindir().is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "the PostgreSQL server binaries are missing"
        );
        eprintln!("skipped: no PostgreSQL server binaries for an embedded cluster");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tcc-shared-{}", uuid::Uuid::new_v4().simple()));
    let _cleanup = Cleanup(dir.clone());
    let http = reqwest::Client::new();
    let first_port = free_port();
    let mut first = start(&dir, first_port, &[("TCC_INSTANCE_ID", "first")]);
    assert!(
        eventually(|| ready(&http, first_port)).await,
        "the first coordinator never became ready"
    );

    // It must end by itself (a coordinator that adopted the cluster would serve on).
    let second = embedded(&dir, free_port(), &[("TCC_INSTANCE_ID", "second")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the second coordinator");
    let mut second = Daemon(second);
    let ended = eventually(|| {
        let done = second.0.try_wait().ok().flatten().is_some();
        async move { done }
    })
    .await;
    assert!(ended, "the second coordinator started instead of refusing");
    let out = std::mem::replace(
        &mut second.0,
        std::process::Command::new("true").spawn().expect("true"),
    )
    .wait_with_output()
    .expect("its output");
    let said = printed(&out);
    assert!(!out.status.success(), "the second one refused: {said}");
    assert!(
        said.contains("is in use") && said.contains("DATABASE_URL="),
        "it says why and how to share: {said}"
    );
    assert!(ready(&http, first_port).await, "the first serves on");

    // What it says works: a second instance on the first's cluster.
    let url = said
        .split("DATABASE_URL='")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("a DATABASE_URL in the message")
        .to_string();
    let second_port = free_port();
    let _second = start(
        &dir,
        second_port,
        &[("TCC_INSTANCE_ID", "second"), ("DATABASE_URL", &url)],
    );
    assert!(
        eventually(|| ready(&http, second_port)).await,
        "a second instance on the shared cluster becomes ready"
    );
    let job = serde_json::json!({"autoConfirm": false, "tasks": []});
    let id = submit_to(&http, &format!("http://127.0.0.1:{second_port}"), &job).await;
    let seen = get_json(&http, &format!("http://127.0.0.1:{first_port}/jobs/{id}")).await;
    assert_eq!(seen["jobID"], id.as_str(), "both serve one database");

    // The owner stops the cluster it started when it ends.
    let pid = first.0.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = first.0.wait();
}
