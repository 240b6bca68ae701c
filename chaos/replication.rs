//! A primary and a synchronous standby on loopback, started from the PostgreSQL server binaries,
//! and the failover a failover manager (Patroni, pg_auto_failover) would do: promote the standby,
//! let it commit alone until a standby is back, rebuild the old primary as the new standby
//! from a fresh base backup, and make that standby synchronous again.
//!
//! Every method blocks (server commands, and polling with psql): call them from
//! `spawn_blocking` in async code.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tcc_coordinator::embedded_pg::ServerTools;

/// One server of the pair.
#[derive(Debug)]
struct Node {
    port: u16,
    data: PathBuf,
    log: PathBuf,
}

/// Two servers; `primary` indexes the one that takes writes.
#[derive(Debug)]
pub struct Pair {
    tools: ServerTools,
    base: PathBuf,
    nodes: [Node; 2],
    primary: usize,
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn run(mut cmd: Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// Poll `check` every 50 ms until it holds or `limit` passes.
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Result<(), String> {
    let until = Instant::now() + limit;
    while !check() {
        if Instant::now() >= until {
            return Err(format!("{what}: not within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

impl Pair {
    /// Initialise the primary under `base`, start it, and make the other server its synchronous
    /// standby.
    pub fn start(base: &Path) -> Result<Pair, String> {
        let tools = ServerTools::find().map_err(|e| e.to_string())?;
        tools.own_dir(base).map_err(|e| e.to_string())?;
        let node = |i: usize| -> Result<Node, String> {
            Ok(Node {
                port: free_port()?,
                data: base.join(format!("n{i}")),
                log: base.join(format!("n{i}.log")),
            })
        };
        let pair = Pair {
            tools,
            base: base.to_path_buf(),
            nodes: [node(0)?, node(1)?],
            primary: 0,
        };
        let data = pair.nodes[0].data.clone();
        pair.tools.own_dir(&data).map_err(|e| e.to_string())?;
        let mut initdb = pair.tools.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]);
        run(initdb, "initdb")?;
        let conf = format!(
            "listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             wal_level = replica\n\
             max_wal_senders = 5\n\
             hot_standby = on\n\
             fsync = on\n",
            base.display()
        );
        append(&data.join("postgresql.conf"), &conf)?;
        append(
            &data.join("pg_hba.conf"),
            "host replication postgres 127.0.0.1/32 trust\n",
        )?;
        pair.start_node(0)?;
        pair.rebuild_standby()?;
        Ok(pair)
    }

    fn standby(&self) -> usize {
        1 - self.primary
    }

    /// A `DATABASE_URL` naming both servers; only the primary takes the session.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{db}?target_session_attrs=read-write",
            self.nodes[0].port, self.nodes[1].port
        )
    }

    /// Connection settings for `db` on the current primary.
    pub fn primary_config(&self, db: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.nodes[self.primary].port)
            .user("postgres")
            .dbname(db);
        c
    }

    fn start_node(&self, i: usize) -> Result<(), String> {
        let n = &self.nodes[i];
        let mut cmd = self.tools.command("pg_ctl");
        cmd.current_dir(&self.base)
            .arg("start")
            .arg("-D")
            .arg(&n.data)
            .arg("-l")
            .arg(&n.log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", n.port));
        run(cmd, "pg_ctl start").map(|_| ())
    }

    /// `sql` on server `i` through psql; its output.
    fn psql(&self, i: usize, sql: &str) -> Result<String, String> {
        let mut cmd = self.tools.command("psql");
        cmd.current_dir(&self.base)
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-U", "postgres", "-d"])
            .arg("postgres")
            .arg("-p")
            .arg(self.nodes[i].port.to_string())
            .arg("-c")
            .arg(sql);
        run(cmd, "psql")
    }

    /// Commits on the primary wait for the standby (`*`), or not (empty); in effect on return.
    /// A reload alone is not: the checkpointer publishes the setting to the backends, and in the
    /// middle of a spread checkpoint (one follows every promotion) it may not look for half a
    /// minute. A `CHECKPOINT` returns only after a checkpoint that began after it was asked for,
    /// and the checkpointer takes the reload before beginning one.
    fn set_synchronous(&self, names: &str) -> Result<(), String> {
        self.psql(
            self.primary,
            &format!("ALTER SYSTEM SET synchronous_standby_names = '{names}'"),
        )?;
        self.psql(self.primary, "SELECT pg_reload_conf()")?;
        self.psql(self.primary, "CHECKPOINT").map(|_| ())
    }

    /// The primary dies at once (`pg_ctl stop -m immediate`: no checkpoint, sessions cut).
    pub fn kill_primary(&self) -> Result<(), String> {
        let mut cmd = self.tools.command("pg_ctl");
        cmd.current_dir(&self.base)
            .arg("stop")
            .arg("-D")
            .arg(&self.nodes[self.primary].data)
            .args(["-m", "immediate", "-w", "-t", "60"]);
        run(cmd, "pg_ctl stop").map(|_| ())
    }

    /// Promote the standby, and let it commit alone until a standby is back, as a failover
    /// manager does; returns when it takes writes.
    pub fn promote(&mut self) -> Result<(), String> {
        self.promote_waiting()?;
        self.commit_alone()
    }

    /// Promote the standby but leave it waiting for a synchronous standby it does not have:
    /// every commit waits (until `commit_alone`), as with a failover manager that is slow or
    /// strict about synchronous replication.
    pub fn promote_waiting(&mut self) -> Result<(), String> {
        let standby = self.standby();
        let mut cmd = self.tools.command("pg_ctl");
        cmd.current_dir(&self.base)
            .arg("promote")
            .arg("-D")
            .arg(&self.nodes[standby].data)
            .args(["-w", "-t", "60"]);
        run(cmd, "pg_ctl promote")?;
        self.primary = standby;
        self.set_synchronous("*")
    }

    /// The primary commits without waiting for a standby; returns when it takes writes.
    pub fn commit_alone(&self) -> Result<(), String> {
        self.set_synchronous("")?;
        wait_for(
            "the promoted server takes writes",
            Duration::from_secs(30),
            || {
                self.psql(self.primary, "SELECT pg_is_in_recovery()")
                    .is_ok_and(|o| o == "f")
            },
        )
    }

    /// Make the server that is not the primary a fresh standby of it (its data replaced by a
    /// base backup), wait until it streams, and make it synchronous.
    pub fn rebuild_standby(&self) -> Result<(), String> {
        let s = self.standby();
        let data = &self.nodes[s].data;
        let _ = std::fs::remove_dir_all(data);
        self.tools.own_dir(data).map_err(|e| e.to_string())?;
        let mut backup = self.tools.command("pg_basebackup");
        backup
            .current_dir(&self.base)
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.nodes[self.primary].port.to_string())
            .arg("-D")
            .arg(data)
            .args(["-R", "-X", "stream", "-c", "fast"]);
        run(backup, "pg_basebackup")?;
        self.start_node(s)?;
        wait_for("the standby streams", Duration::from_secs(60), || {
            self.psql(
                self.primary,
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .is_ok_and(|o| o == "1")
        })?;
        self.set_synchronous("*")?;
        wait_for(
            "the standby is synchronous",
            Duration::from_secs(30),
            || {
                self.psql(
                    self.primary,
                    "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
                )
                .is_ok_and(|o| o == "1")
            },
        )
    }

    /// Stop both servers (fast); a server already stopped is fine.
    pub fn stop(&self) {
        for n in &self.nodes {
            let mut cmd = self.tools.command("pg_ctl");
            cmd.current_dir(&self.base)
                .arg("stop")
                .arg("-D")
                .arg(&n.data)
                .args(["-m", "fast", "-w", "-t", "60"]);
            let _ = run(cmd, "pg_ctl stop");
        }
    }
}

/// A pair never outlives its owner, even one that panicked: both servers are stopped.
impl Drop for Pair {
    fn drop(&mut self) {
        self.stop();
    }
}

fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}
