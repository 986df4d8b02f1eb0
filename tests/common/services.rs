//! Real servers a test starts for itself: PostgreSQL (Debian's, initdb into a temporary
//! directory, run as an unprivileged user when the tests run as root) and an S3-compatible
//! server (moto's, from PyPI). Each is stopped when dropped. A missing server panics with
//! how to install it: these tests never skip.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL server on 127.0.0.1 with a trusted superuser `outpost`.
pub struct Postgres {
    child: Option<Child>,
    /// `postgres://outpost@127.0.0.1:PORT/postgres`
    pub url: String,
    port: u16,
    user: Option<(u32, u32)>,
    dir: tempfile::TempDir,
}

/// The directory of PostgreSQL's server programs: `$OUTPOST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `pg_config --bindir`.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("OUTPOST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    found.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    if let Some(bin) = found.pop() {
        return bin;
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    match from_pg_config {
        Some(bin) if bin.join("postgres").exists() => bin,
        _ => panic!(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/postgres): \
             apt-get install postgresql, as .ci/run does, or set OUTPOST_PG_BIN"
        ),
    }
}

/// The uid and gid to run PostgreSQL as: none when not root (run as ourselves), `nobody`'s
/// when root (PostgreSQL refuses to run as root).
fn unprivileged_user() -> Option<(u32, u32)> {
    let me = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    if me != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    let nobody = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("tests run as root need the user nobody to run PostgreSQL as");
    let fields: Vec<&str> = nobody.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

fn as_user(command: &mut Command, user: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Postgres {
    /// initdb into a new temporary directory and start the server on a free loopback port.
    pub fn start() -> Postgres {
        let bin = pg_bin();
        let user = unprivileged_user();
        let dir = tempfile::tempdir().unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let out = as_user(&mut Command::new(bin.join("initdb")), user)
            .arg("-D")
            .arg(&data)
            .args(["-U", "outpost", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .current_dir(dir.path())
            .output()
            .expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut postgres = Postgres {
            child: None,
            url: String::new(),
            port: 0,
            user,
            dir,
        };
        // The port is picked free and then taken by the server: retry if another process
        // took it in between.
        for _ in 0..5 {
            postgres.port = free_port();
            if postgres.run() {
                postgres.url = format!("postgres://outpost@127.0.0.1:{}/postgres", postgres.port);
                return postgres;
            }
        }
        panic!(
            "PostgreSQL did not start:\n{}",
            std::fs::read_to_string(postgres.dir.path().join("postgres.log")).unwrap_or_default()
        );
    }

    /// Starts the server on the data directory and port; whether it accepts connections.
    fn run(&mut self) -> bool {
        let bin = pg_bin();
        let log_path = self.dir.path().join("postgres.log");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid)).unwrap();
        }
        let mut child = as_user(&mut Command::new(bin.join("postgres")), self.user)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting postgres");
        let up = wait_for_postgres(&bin, self.port, &mut child);
        if up {
            self.child = Some(child);
        } else {
            let _ = child.kill();
            let _ = child.wait();
        }
        up
    }

    /// Stops the server as a crash would: an immediate shutdown (SIGQUIT), which drops
    /// every connection at once and skips the shutdown checkpoint, so the next start
    /// recovers from the WAL. Unlike a SIGKILL it also ends the server's own children, which
    /// would otherwise keep the port and shared memory for a while.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed server again, on the same port with the same data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.run() {
            assert!(Instant::now() < deadline, "PostgreSQL did not restart");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `sql` with psql and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(pg_bin().join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
                &self.url,
            ])
            .output()
            .expect("running psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Whether the server on `port` accepts connections; false if it exited first.
fn wait_for_postgres(bin: &Path, port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let ready = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An S3-compatible server (moto's) on a free loopback port, accepting any credentials.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

/// The credentials every process talking to [`S3Server`] uses.
pub const S3_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "outpost-test"),
    ("AWS_SECRET_ACCESS_KEY", "outpost-test-secret"),
    ("AWS_REGION", "us-east-1"),
];

impl S3Server {
    /// Starts `python3 -m moto.server` on 127.0.0.1:0 and waits for its address.
    pub fn start() -> S3Server {
        let python = std::env::var("OUTPOST_PYTHON").unwrap_or_else(|_| "python3".into());
        let installed = Command::new(&python)
            .args(["-c", "import moto.server, flask"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed,
            "moto's S3 server is not installed for {python}: pip install 'moto[server]', as \
             .ci/run does"
        );
        let mut child = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting moto's server");
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.split("Running on ").nth(1) {
                    let _ = tx.send(at.trim().to_string());
                }
                // Keep draining so the server never blocks on a full pipe.
            }
        });
        let endpoint = rx
            .recv_timeout(START_TIMEOUT)
            .expect("moto's server did not print its address");
        S3Server { child, endpoint }
    }

    /// Creates `bucket`.
    pub async fn create_bucket(&self, bucket: &str) {
        let res = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(
            res.status().is_success(),
            "creating bucket {bucket}: {res:?}"
        );
    }

    /// `s3://BUCKET?endpoint=…` for `--blobs`.
    pub fn url(&self, bucket: &str) -> String {
        format!("s3://{bucket}?endpoint={}", self.endpoint)
    }

    /// The keys stored in `bucket`, from the server's own listing.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let body = reqwest::Client::new()
            .get(format!("{}/{bucket}?list-type=2", self.endpoint))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
