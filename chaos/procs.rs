//! Process control: coordinator instances (the real binary) that can be SIGKILLed and started
//! again, and PostgreSQL paused (SIGSTOP/SIGCONT) or restarted.

use std::path::PathBuf;
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

/// One coordinator instance.
pub struct Instance {
    pub name: String,
    pub addr: String,
    port: u16,
    binary: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

fn free_port() -> std::io::Result<u16> {
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit; returns its code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        signal(c.id(), "-TERM");
        c.wait().ok()?.code()
    }

    /// Running (it may exit by itself, for example when the database is down at start-up).
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
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
