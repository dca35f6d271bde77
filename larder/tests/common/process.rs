//! A `larder` child process for integration tests, and a bounded wait on a condition. Included with
//! `#[path = "common/process.rs"] mod process;` (not from `common/mod.rs`, which `node_link`'s unit tests
//! include too, where `CARGO_BIN_EXE_larder` does not exist).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
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

/// A `larder` child process, killed if the test fails before it is stopped.
pub struct Process {
    child: Option<Child>,
    stdout: BufReader<ChildStdout>,
}

impl Process {
    /// Starts `larder ARGS` with its log at `warn` (the log goes to stdout, with the start-up lines).
    pub fn spawn(args: &[&str]) -> Process {
        Process::spawn_with_log_level(args, "warn")
    }

    pub fn spawn_with_log_level(args: &[&str], log_level: &str) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_larder"))
            .args(args)
            .env("RUST_LOG", log_level)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("larder starts");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Process {
            child: Some(child),
            stdout,
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

    /// Reads stdout until a line contains `needle` (at most 1,000 lines); panics if the process ends first.
    pub fn wait_for_line(&mut self, needle: &str) {
        for _ in 0..1000 {
            let mut line = String::new();
            let read = self.stdout.read_line(&mut line).expect("read stdout");
            assert!(read > 0, "larder exited before printing {needle:?}");
            if line.contains(needle) {
                return;
            }
        }
        panic!("no line with {needle:?} in 1,000 lines");
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(self) -> i32 {
        self.terminate_with_output().0
    }

    /// SIGTERM, then the exit code and everything it printed on stdout after what was already read.
    pub fn terminate_with_output(mut self) -> (i32, String) {
        use std::io::Read;
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        let result = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(result, 0, "kill");
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("read stdout");
        let code = child.wait().expect("wait").code().expect("exit code");
        (code, rest)
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
