//! A `larder` child process for integration tests, and a bounded wait on a condition. Included with
//! `#[path = "common/process.rs"] mod process;` (not from `common/mod.rs`, which `node_link`'s unit tests
//! include too, where `CARGO_BIN_EXE_larder` does not exist).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A bounded wait: `condition` is tried every 20 ms for at most 30 s.
pub const WAIT_ATTEMPTS_MAX: u32 = 1500;
pub const WAIT_PAUSE: Duration = Duration::from_millis(20);

pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..WAIT_ATTEMPTS_MAX {
        if condition() {
            return;
        }
        std::thread::sleep(WAIT_PAUSE);
    }
    panic!("timed out waiting for: {what}");
}

/// `larder ARGS` run to its end (a command that exits by itself: `ctl`, `serve --check-config`): its exit code,
/// stdout and stderr.
pub fn run_to_end(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(args)
        .output()
        .expect("larder runs");
    (
        output.status.code().expect("exit code"),
        String::from_utf8(output.stdout).expect("utf-8 stdout"),
        String::from_utf8(output.stderr).expect("utf-8 stderr"),
    )
}

/// A `larder` child process, killed if the test fails before it is stopped.
pub struct Process {
    child: Option<Child>,
    stdout: BufReader<ChildStdout>,
    /// The log's lines, read by a thread, when started with [`Process::spawn_with_log_level`] (else the log goes
    /// to the test's stderr). The thread ends at the process's end (EOF).
    log: Option<mpsc::Receiver<String>>,
}

impl Process {
    /// Starts `larder ARGS` with its log (stderr) at `warn`, passed through to the test's stderr.
    pub fn spawn(args: &[&str]) -> Process {
        Process::start(args, "warn", false)
    }

    /// Starts `larder ARGS` with its log at `log_level`, kept for [`Process::wait_for_log_line`] and
    /// [`Process::terminate_with_log`].
    pub fn spawn_with_log_level(args: &[&str], log_level: &str) -> Process {
        Process::start(args, log_level, true)
    }

    fn start(args: &[&str], log_level: &str, keep_log: bool) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_larder"))
            .args(args)
            .env("RUST_LOG", log_level)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(if keep_log {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .expect("larder starts");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let log = child.stderr.take().map(|stderr| {
            let (lines_tx, lines) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if lines_tx.send(line).is_err() {
                        break;
                    }
                }
            });
            lines
        });
        Process {
            child: Some(child),
            stdout,
            log,
        }
    }

    /// The first word after `prefix` on the next stdout line that has it (at most 10 lines read).
    pub fn word_after(&mut self, prefix: &str) -> String {
        for _ in 0..10 {
            let mut line = String::new();
            let read = self.stdout.read_line(&mut line).expect("read stdout");
            assert!(read > 0, "larder exited before printing {prefix:?}");
            if let Some(at) = line.find(prefix) {
                let rest = &line[at + prefix.len()..];
                return rest.split_whitespace().next().unwrap_or("").to_string();
            }
        }
        panic!("no line with {prefix:?}");
    }

    /// Reads the kept log until a line contains `needle` and returns that line; panics after 30 s or if the
    /// process ends first.
    pub fn wait_for_log_line(&mut self, needle: &str) -> String {
        let log = self
            .log
            .as_ref()
            .expect("started with spawn_with_log_level");
        let deadline = std::time::Instant::now() + WAIT_PAUSE * WAIT_ATTEMPTS_MAX;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for a log line with {needle:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("larder exited before logging {needle:?}")
                }
            }
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the running process.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        let result = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(result, 0, "kill({signal})");
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(self) -> i32 {
        self.terminate_with_log().0
    }

    /// SIGTERM, then the exit code and the kept log's lines not read yet (empty without a kept log).
    pub fn terminate_with_log(mut self) -> (i32, String) {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("running");
        let code = child.wait().expect("wait").code().expect("exit code");
        (code, self.rest_of_log())
    }

    /// Waits (at most 30 s) for the process to exit by itself; its exit code and the kept log's lines not read
    /// yet (empty without a kept log).
    pub fn wait_exit(mut self) -> (i32, String) {
        // The child stays in `self` while waiting, so a timeout's panic still kills it (Drop).
        let mut status = None;
        wait_for("the process to exit", || {
            let child = self.child.as_mut().expect("running");
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        self.child = None;
        let code = status.and_then(|status| status.code()).expect("exit code");
        (code, self.rest_of_log())
    }

    /// The kept log's lines not read yet, once the process has exited (the reader thread reaches EOF and hangs
    /// up after the last line); empty without a kept log.
    fn rest_of_log(&mut self) -> String {
        let rest: Vec<String> = self
            .log
            .take()
            .map(|log| log.iter().collect())
            .unwrap_or_default();
        rest.join("\n")
    }

    /// SIGKILL (no shutdown at all), then wait for the process to be gone.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
