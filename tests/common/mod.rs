//! Helpers shared by the integration tests: a real `outpost dev` process on 127.0.0.1:0 and
//! real HTTP clients. Every test starts its own node; nothing is shared between tests.
#![allow(dead_code)]

pub mod services;

/// The deploy and PoP tokens the tests' origins accept.
pub const DEPLOY: &str = "deploy-secret";
pub const POP: &str = "pop-secret";

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a node may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `outpost dev` process; killed when dropped.
pub struct Node {
    child: Child,
    pub url: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Directories that must live as long as the node.
    kept: Vec<tempfile::TempDir>,
}

/// The repository's examples directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn collect(stream: impl std::io::Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().push(line);
        }
    });
}

impl Node {
    /// Starts `outpost dev PATH --listen 127.0.0.1:0 ARGS...` and waits for its address.
    pub fn start(path: &Path, args: &[&str]) -> Node {
        let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
        command.arg("dev").arg(path).args(args);
        Node::spawn(command)
    }

    /// Starts `outpost origin --data DATA --listen 127.0.0.1:0 ARGS...` with `env` and waits
    /// for its address.
    pub fn origin(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Node {
        let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
        command.arg("origin").arg("--data").arg(data).args(args);
        command.env_remove("OUTPOST_DEPLOY_TOKEN");
        command.env_remove("OUTPOST_POP_TOKEN");
        command.envs(env.iter().copied());
        Node::spawn(command)
    }

    /// `outpost origin` accepting the tokens [`DEPLOY`] and [`POP`], with `args`.
    pub fn origin_with_tokens(data: &Path, args: &[&str]) -> Node {
        Node::origin(
            data,
            args,
            &[("OUTPOST_DEPLOY_TOKEN", DEPLOY), ("OUTPOST_POP_TOKEN", POP)],
        )
    }

    /// Runs `command` (an `outpost` role) with `--listen 127.0.0.1:0` and waits until it
    /// prints the address it listens on.
    pub fn spawn(command: Command) -> Node {
        Node::spawn_on(command, "127.0.0.1:0")
    }

    /// [`Node::spawn`] listening on `listen`.
    pub fn spawn_on(mut command: Command, listen: &str) -> Node {
        command.args(["--listen", listen]);
        let mut node = Node::spawn_plain(command);
        let line = node.wait_for_stdout("listening on http://", START_TIMEOUT);
        let url = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .trim_end_matches('/');
        node.url = url.to_string();
        node
    }

    /// Runs `command` (any `outpost` command) collecting its output, without waiting for
    /// anything; killed when dropped.
    pub fn spawn_plain(mut command: Command) -> Node {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning outpost");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        Node {
            child,
            url: String::new(),
            stdout,
            stderr,
            kept: Vec::new(),
        }
    }

    /// Starts `outpost pop --origin ORIGIN --name NAME --data DATA ARGS…` with `token` as
    /// OUTPOST_TOKEN, listening on 127.0.0.1:0.
    pub fn pop(origin_url: &str, data: &Path, name: &str, token: &str, args: &[&str]) -> Node {
        let mut command = Command::new(env!("CARGO_BIN_EXE_outpost"));
        command
            .args(["pop", "--origin", origin_url, "--name", name, "--data"])
            .arg(data)
            .args(args)
            .env("OUTPOST_TOKEN", token);
        Node::spawn(command)
    }

    /// The HTTPS listener's address, once the node printed it (start it with `--https`).
    pub fn https_addr(&mut self) -> std::net::SocketAddr {
        let line = self.wait_for_stdout("listening on https://", START_TIMEOUT);
        line.split("https://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// Starts a node for one of the repository's examples.
    pub fn example(name: &str) -> Node {
        Node::start(&examples().join(name), &[])
    }

    /// Keeps `dir` until the node is dropped.
    pub fn keep(&mut self, dir: tempfile::TempDir) {
        self.kept.push(dir);
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; its status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "outpost still runs {timeout:?} after SIGTERM\nstdout: {:#?}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_for(
        &mut self,
        which: &Arc<Mutex<Vec<String>>>,
        needle: &str,
        timeout: Duration,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = which.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "outpost exited ({status}) before printing {needle:?}\nstdout: {:#?}\nstderr: {:#?}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "no line with {needle:?} within {timeout:?}\nstdout: {:#?}\nstderr: {:#?}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin listener's URL, once the node printed it (start it with `--admin`).
    pub fn admin_url(&mut self) -> String {
        let line = self.wait_for_stdout("admin on http://", START_TIMEOUT);
        line.split("admin on ")
            .nth(1)
            .unwrap()
            .trim()
            .trim_end_matches('/')
            .to_string()
    }

    /// Waits until stdout has a line containing `needle`, and returns that line.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        let which = self.stdout.clone();
        self.wait_for(&which, needle, timeout)
    }

    /// Waits until stderr has a line containing `needle`, and returns that line.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let which = self.stderr.clone();
        self.wait_for(&which, needle, timeout)
    }

    /// All of stderr from the first line containing `needle` on, once there is one.
    pub fn stderr_from(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_stderr(needle, timeout);
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.stderr();
        let start = lines.iter().position(|l| l.contains(needle)).unwrap();
        lines[start..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: what the process said is the first clue.
            let status = self.child.try_wait().ok().flatten();
            eprintln!(
                "outpost {} (exit status: {status:?})\nstdout: {:#?}\nstderr: {:#?}",
                self.url,
                self.stdout(),
                self.stderr()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 client.
pub fn http1() -> reqwest::Client {
    reqwest::Client::builder()
        .http1_only()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A cleartext HTTP/2 client (prior knowledge).
pub fn http2() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Writes `files` (path, contents) into a fresh temporary directory.
pub fn app_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, contents) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    dir
}

/// An app `big` of 120 text modules of 40–120 KB beside its handler (which answers `big`):
/// a deploy of it takes long enough to be interrupted.
pub fn big_app() -> tempfile::TempDir {
    let mut files = vec![("outpost.toml".to_string(), "name = \"big\"\n".to_string())];
    files.push((
        "src/index.js".to_string(),
        "export default { fetch() { return new Response('big'); } };\n".to_string(),
    ));
    for i in 0..120 {
        files.push((format!("src/data/{i}.txt"), format!("{i}").repeat(40_000)));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    app_dir(&refs)
}

/// An app directory with one handler module at src/index.js.
pub fn app(name: &str, index_js: &str) -> tempfile::TempDir {
    app_dir(&[
        ("outpost.toml", &format!("name = \"{name}\"\n")),
        ("src/index.js", index_js),
    ])
}

/// GETs `path` over HTTP/1.1 and returns the status and body text.
pub async fn get(node: &Node, path: &str) -> (u16, String) {
    let res = http1().get(node.url(path)).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

/// GETs `path` over HTTP/1.1 and parses the body as JSON.
pub async fn get_json(node: &Node, path: &str) -> serde_json::Value {
    let res = http1().get(node.url(path)).send().await.unwrap();
    res.json().await.unwrap()
}

/// The node's scheduler, from its admin listener (`admin` as [`Node::admin_url`] gives it).
pub async fn isolates(admin: &str) -> serde_json::Value {
    http1()
        .get(format!("{admin}/isolates"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Runs `outpost ARGS...` with `token` as OUTPOST_TOKEN; returns success, stdout, stderr.
pub fn outpost(args: &[&str], token: Option<&str>) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"));
    command
        .args(args)
        .env_remove("OUTPOST_TOKEN")
        .env_remove("OUTPOST_ORIGIN");
    if let Some(token) = token {
        command.env("OUTPOST_TOKEN", token);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
