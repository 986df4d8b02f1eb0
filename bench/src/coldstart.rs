//! Measures process start → first 200 response: spawns `outpost dev APP --listen
//! 127.0.0.1:0`, reads the address it prints, polls `/` until it answers 200, kills it.
//! Repeats `--runs` times and prints the percentiles.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The outpost binary.
    #[arg(long, default_value = "target/release/outpost")]
    outpost: String,
    /// The app to serve.
    #[arg(default_value = "examples/hello")]
    app: String,
    /// How many starts to measure.
    #[arg(long, default_value_t = 10)]
    runs: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut times = Vec::new();
    for _ in 0..args.runs {
        times.push(one(&args)?);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "start → first 200: runs {}  min {:.1} ms  p50 {:.1} ms  max {:.1} ms",
        times.len(),
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
    Ok(())
}

fn one(args: &Args) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut child = Command::new(&args.outpost)
        .args(["dev", &args.app, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args.outpost))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let Some(line) = lines.next() else {
            bail!("outpost exited before listening")
        };
        let line = line?;
        if let Some(url) = line.split("listening on http://").nth(1) {
            break url.trim().trim_end_matches('/').to_string();
        }
    };
    let result = loop {
        if start.elapsed() > Duration::from_secs(30) {
            break Err(anyhow::anyhow!("no 200 within 30 s"));
        }
        if let Ok(mut stream) = std::net::TcpStream::connect(&addr) {
            use std::io::{Read, Write};
            stream.write_all(
                format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
            )?;
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response);
            if response.starts_with("HTTP/1.1 200") {
                break Ok(start.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}
