//! The embedded PostgreSQL default: a private cluster under `TCC_DATA_DIR`, started from the
//! server binaries installed on the machine, reachable only through a Unix socket in that
//! directory. Its data survives restarts. When the coordinator runs as root, the cluster runs as
//! the `postgres` system user (PostgreSQL refuses to run as root).
//!
//! This module never downloads anything; with no binaries it says how to get out.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PORT: u16 = 5432;
const DATABASE: &str = "tcc";
/// Unix socket paths are limited to 107 bytes; `/.s.PGSQL.5432` takes 15 of them.
const MAX_SOCKET_DIR: usize = 107 - 15;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb, pg_ctl and postgres on PATH, in `pg_config --bindir` and in /usr/lib/postgresql/*/bin). Either install the PostgreSQL server (for example `apt-get install postgresql`), or set DATABASE_URL to a PostgreSQL you already run"
    )]
    NoBinaries,
    #[error(
        "running as root, but there is no `postgres` system user to run the embedded PostgreSQL as (PostgreSQL refuses to run as root). Create one (`useradd --system postgres`), run as another user, or set DATABASE_URL"
    )]
    NoPostgresUser,
    #[error(
        "TCC_DATA_DIR {0:?} is too long for a Unix socket path ({1} bytes, at most {MAX_SOCKET_DIR}); choose a shorter directory"
    )]
    PathTooLong(PathBuf, usize),
    #[error(
        "TCC_DATA_DIR {0:?} cannot be reached by the postgres user that runs the embedded PostgreSQL: {1:?} is not searchable by it. Choose a directory it can reach (for example under /var/lib or /tmp), or set DATABASE_URL"
    )]
    Unreachable(PathBuf, PathBuf),
    #[error("TCC_DATA_DIR {0:?}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
}

/// A running private cluster.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    tools: ServerTools,
    base: PathBuf,
}

fn has_server(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

/// Where the server binaries are: PATH, then `pg_config --bindir`, then the newest
/// /usr/lib/postgresql/*/bin.
pub fn find_bindir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                // Follow symlinks to where postgres itself lives (Debian links only some).
                let real = std::fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf));
                if let Some(real) = real.filter(|r| has_server(r)) {
                    return Some(real);
                }
                if has_server(&dir) {
                    return Some(dir);
                }
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// The uid and gid of the `postgres` user, read from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != "postgres" {
            return None;
        }
        let _pw = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// The first parent directory of `path` that user `uid` (group `gid`) cannot search.
fn first_unsearchable(path: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    path.ancestors().skip(1).find_map(|dir| {
        let m = std::fs::metadata(dir).ok()?;
        let mode = m.mode();
        let searchable = if m.uid() == uid {
            mode & 0o100 != 0
        } else if m.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        (!searchable).then(|| dir.to_path_buf())
    })
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The server binaries and the user they run as, for clusters other than the embedded one (the
/// chaos suite's replicated pair): commands run as the `postgres` system user when this process
/// is root, as the embedded cluster does.
#[derive(Debug, Clone)]
pub struct ServerTools {
    pub bindir: PathBuf,
    run_as: Option<(u32, u32)>,
}

impl ServerTools {
    pub fn find() -> Result<Self, EmbeddedError> {
        let bindir = find_bindir().ok_or(EmbeddedError::NoBinaries)?;
        let run_as = if running_as_root() {
            Some(postgres_user().ok_or(EmbeddedError::NoPostgresUser)?)
        } else {
            None
        };
        Ok(ServerTools { bindir, run_as })
    }

    /// `program` from the server binaries, run as the cluster's user.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Make `dir` (created if missing) the cluster user's own, mode 0700.
    pub fn own_dir(&self, dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
}

impl EmbeddedPostgres {
    /// Initialise the cluster if needed and start it (or adopt one already running there).
    /// Blocking: call from `spawn_blocking` in async code.
    pub fn start(base: &Path) -> Result<Self, EmbeddedError> {
        let tools = ServerTools::find()?;
        std::fs::create_dir_all(base).map_err(|e| EmbeddedError::DataDir(base.into(), e))?;
        let base =
            std::fs::canonicalize(base).map_err(|e| EmbeddedError::DataDir(base.into(), e))?;
        let len = base.as_os_str().len();
        if len > MAX_SOCKET_DIR {
            return Err(EmbeddedError::PathTooLong(base, len));
        }
        let pg = EmbeddedPostgres { tools, base };
        let data = pg.data_dir();
        if let Some((uid, gid)) = pg.tools.run_as {
            if let Some(blocked) = first_unsearchable(&pg.base, uid, gid) {
                return Err(EmbeddedError::Unreachable(pg.base.clone(), blocked));
            }
            std::os::unix::fs::chown(&pg.base, Some(uid), Some(gid))
                .map_err(|e| EmbeddedError::DataDir(pg.base.clone(), e))?;
        }
        if !data.join("PG_VERSION").is_file() {
            let data_arg = data.to_string_lossy().into_owned();
            pg.run(
                "initdb",
                &[
                    "-D",
                    &data_arg,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ],
            )?;
        }
        if !pg.is_running() {
            let log = pg.base.join("postgres.log").to_string_lossy().into_owned();
            let options = pg.server_options();
            let data_arg = data.to_string_lossy().into_owned();
            pg.run(
                "pg_ctl",
                &[
                    "start", "-D", &data_arg, "-l", &log, "-w", "-t", "120", "-o", &options,
                ],
            )?;
        }
        Ok(pg)
    }

    /// Listen on the Unix socket in the base directory only.
    fn server_options(&self) -> String {
        format!(
            "-c listen_addresses='' -k {} -p {PORT} -c unix_socket_permissions=0700",
            self.base.display()
        )
    }

    fn data_dir(&self) -> PathBuf {
        self.base.join("pgdata")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = self.tools.command(program);
        cmd.current_dir(&self.base);
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, EmbeddedError> {
        let out =
            self.command(program)
                .args(args)
                .output()
                .map_err(|e| EmbeddedError::Command {
                    command: program.into(),
                    detail: e.to_string(),
                })?;
        if !out.status.success() {
            let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if detail.is_empty() {
                detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
            }
            if program == "pg_ctl" {
                detail.push_str(&format!(
                    " (see {})",
                    self.base.join("postgres.log").display()
                ));
            }
            return Err(EmbeddedError::Command {
                command: format!("{program} {}", args.first().copied().unwrap_or_default()),
                detail,
            });
        }
        Ok(out)
    }

    fn is_running(&self) -> bool {
        let data = self.data_dir().to_string_lossy().into_owned();
        self.command("pg_ctl")
            .args(["status", "-D", &data])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Create the coordinator's database if it does not exist yet.
    pub async fn ensure_database(&self) -> Result<(), EmbeddedError> {
        create_database(&self.config_for("postgres"), DATABASE)
            .await
            .map_err(|e| EmbeddedError::Command {
                command: format!("CREATE DATABASE {DATABASE}"),
                detail: e.to_string(),
            })
    }

    /// The connection string of the coordinator's database in the cluster under `base` (for
    /// other processes: `DATABASE_URL`).
    pub fn connection_string(base: &Path) -> String {
        format!(
            "host={} port={PORT} user=postgres dbname={DATABASE}",
            base.display()
        )
    }

    /// Connection settings for the coordinator's database in this cluster.
    pub fn config(&self) -> tokio_postgres::Config {
        self.config_for(DATABASE)
    }

    /// Connection settings for any database in this cluster.
    pub fn config_for(&self, dbname: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.base)
            .port(PORT)
            .user("postgres")
            .dbname(dbname)
            .application_name("tcc-coordinator");
        c
    }

    /// The socket directory (the data directory's base).
    pub fn socket_dir(&self) -> &Path {
        &self.base
    }

    /// Restart the cluster: `immediate` is a crash (no checkpoint, recovery at start), otherwise
    /// a fast shutdown. Blocking.
    pub fn restart(&self, immediate: bool) -> Result<(), EmbeddedError> {
        let data = self.data_dir().to_string_lossy().into_owned();
        let mode = if immediate { "immediate" } else { "fast" };
        let log = self
            .base
            .join("postgres.log")
            .to_string_lossy()
            .into_owned();
        let options = self.server_options();
        self.run(
            "pg_ctl",
            &[
                "restart", "-D", &data, "-m", mode, "-l", &log, "-w", "-t", "120", "-o", &options,
            ],
        )
        .map(|_| ())
    }

    /// The postmaster's process id, from its pid file.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Stop the cluster (fast shutdown: sessions end, data is flushed). Blocking.
    pub fn stop(&self) -> Result<(), EmbeddedError> {
        let data = self.data_dir().to_string_lossy().into_owned();
        self.run(
            "pg_ctl",
            &["stop", "-D", &data, "-m", "fast", "-w", "-t", "60"],
        )
        .map(|_| ())
    }
}

/// Create database `name` through the server at `admin` unless it exists.
pub async fn create_database(
    admin: &tokio_postgres::Config,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = admin.connect(tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let quoted = name.replace('"', "\"\"");
        client
            .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
            .await?;
    }
    drop(client);
    let _ = conn.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsearchable_parents_are_found() {
        let dir = std::env::temp_dir().join(format!("tcc-perm-{}", std::process::id()));
        let inner = dir.join("a").join("b");
        std::fs::create_dir_all(&inner).expect("mkdir");
        let set = |p: &Path, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        set(&dir, 0o700);
        // Somebody else (uid and gid nobody has) cannot pass the 0700 directory.
        assert_eq!(
            first_unsearchable(&inner, 4_000_000, 4_000_000),
            Some(dir.clone())
        );
        set(&dir, 0o755);
        assert_eq!(first_unsearchable(&inner, 4_000_000, 4_000_000), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
