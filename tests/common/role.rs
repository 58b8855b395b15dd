//! Single-role processes (`strata metadata`, `strata gateway`, ...) for tests of
//! groups of nodes: started on chosen loopback ports, killed or stopped at will.

use super::{stdout_lines, strata_bin, terminate};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// One running `strata <role>` process.
pub struct RoleProcess {
    child: Option<Child>,
    /// The address the process printed (`grpc://…` stripped).
    pub addr: String,
    log: PathBuf,
}

impl RoleProcess {
    /// Starts `strata <args>` with its log in `log`, and waits for it to print
    /// a line starting with `ready_prefix` followed by its address.
    pub fn start(args: &[String], log: &Path, ready_prefix: &str) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file opens");
        let mut child = Command::new(strata_bin())
            .args(args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("strata starts");
        let lines_rx = stdout_lines(&mut child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines_rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("strata {args:?} did not print its address"));
            if let Some(rest) = line.strip_prefix(ready_prefix) {
                break rest.trim().trim_start_matches("grpc://").to_string();
            }
        };
        std::thread::spawn(move || while lines_rx.recv().is_ok() {});
        Self {
            child: Some(child),
            addr,
            log: log.to_path_buf(),
        }
    }

    /// Kills the process with SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL delivered");
            child.wait().expect("killed child is reaped");
        }
    }

    /// Stops the process with SIGTERM and checks it exited cleanly.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = terminate(&mut child);
            assert!(status.success(), "clean exit on SIGTERM, got {status}");
        }
    }

    /// How the process ended, if it has (without waiting for it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
