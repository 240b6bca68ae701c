//! Process control: coordinator instances (the real binary) and service replicas (the
//! `inventory` example) that can be SIGKILLed and started again, and PostgreSQL paused
//! (SIGSTOP/SIGCONT) or restarted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Send `signal` (`-KILL`, `-STOP`, `-CONT`, `-TERM`) to `pid`.
pub fn signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The direct children of `pid`, read from /proc.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Stop or continue the postmaster and every backend.
pub fn pause_postgres(postmaster: u32, pause: bool) {
    let sig = if pause { "-STOP" } else { "-CONT" };
    let mut pids = vec![postmaster];
    pids.extend(children(postmaster));
    for pid in pids {
        signal(pid, sig);
    }
}

/// SIGKILL the process in `slot`, if any, and reap it.
fn kill_child(slot: &mut Option<Child>) {
    if let Some(mut c) = slot.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Whether the process in `slot` is running.
fn running(slot: &mut Option<Child>) -> bool {
    match slot {
        Some(c) => matches!(c.try_wait(), Ok(None)),
        None => false,
    }
}

/// One coordinator instance.
pub struct Instance {
    pub name: String,
    pub addr: String,
    port: u16,
    binary: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Instance {
    pub fn new(
        name: &str,
        binary: PathBuf,
        env: Vec<(String, String)>,
    ) -> std::io::Result<Instance> {
        let port = free_port()?;
        Ok(Instance {
            name: name.to_string(),
            addr: format!("http://127.0.0.1:{port}"),
            port,
            binary,
            env,
            child: None,
        })
    }

    pub fn start(&mut self) -> std::io::Result<()> {
        let child = Command::new(&self.binary)
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("TCC_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("TCC_INSTANCE_ID", &self.name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown, leases left to lapse.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// SIGTERM and wait for the exit; returns its code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        signal(c.id(), "-TERM");
        c.wait().ok()?.code()
    }

    /// Running (it may exit by itself, for example when the database is down at start-up).
    pub fn alive(&mut self) -> bool {
        running(&mut self.child)
    }

    /// Start again if it died by itself.
    pub fn revive(&mut self) -> std::io::Result<()> {
        if !self.alive() {
            self.kill();
            self.start()?;
        }
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A service process run with fixed arguments, always on the same loopback port: one replica
/// of the `inventory` example. Its standard error goes to a log file, appended to across
/// restarts.
pub struct Replica {
    pub name: String,
    pub addr: std::net::SocketAddr,
    binary: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    /// A replica of `binary` run with `args`, which make it listen on `addr`; its log is
    /// `{log_dir}/{name}.log`. Not started.
    pub fn new(
        name: &str,
        binary: PathBuf,
        addr: std::net::SocketAddr,
        args: Vec<String>,
        log_dir: &Path,
    ) -> Replica {
        Replica {
            name: name.to_string(),
            addr,
            binary,
            args,
            log: log_dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Start the process (again), its standard error appended to its log.
    pub fn start(&mut self) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: whatever it was doing is cut off, its transactions rolled back.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Running (it may also have exited by itself).
    pub fn alive(&mut self) -> bool {
        running(&mut self.child)
    }

    /// Start again if it is not running.
    pub fn revive(&mut self) -> std::io::Result<()> {
        if !self.alive() {
            self.kill();
            self.start()?;
        }
        Ok(())
    }

    /// The end of its log, for a report when it would not serve.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}
