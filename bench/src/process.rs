//! Starting an `outpost` role for a benchmark and reading the addresses it prints.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A running `outpost` process; killed when dropped.
pub struct Process {
    pub child: Child,
}

impl Process {
    /// Runs `command` and waits until its stdout has, for each of `needles`, a line with the
    /// needle and an `http://ADDR/` after it; returns the process and those addresses.
    pub fn start(
        mut command: Command,
        needles: &[&str],
    ) -> anyhow::Result<(Process, Vec<SocketAddr>)> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting outpost")?;
        let stdout = child.stdout.take().context("stdout")?;
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut lines) = sink.lock() {
                    lines.push(line);
                }
            }
        });
        let find = |needle: &str| -> Option<SocketAddr> {
            let lines = lines.lock().ok()?;
            let line = lines.iter().find(|l| l.contains(needle))?;
            let rest = line.split(needle).nth(1)?.split("http://").nth(1)?;
            rest.trim().trim_end_matches('/').parse().ok()
        };
        let process = Process { child };
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let found: Option<Vec<SocketAddr>> = needles.iter().map(|n| find(n)).collect();
            if let Some(addresses) = found {
                return Ok((process, addresses));
            }
            if Instant::now() > deadline {
                bail!("outpost did not print {needles:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
