//! `outpost tail APP --pop URL`: follows an app's console lines and request summaries on one
//! node, through its admin listener's `/tail`.

use anyhow::{bail, Context};
use futures::StreamExt;

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The app to follow.
    pub app: String,
    /// The node's admin listener (http://HOST:PORT, its `--admin` address).
    #[arg(long, env = "OUTPOST_POP")]
    pub pop: String,
    /// Console lines of this level and above: debug, info, warn, error.
    #[arg(long)]
    pub level: Option<String>,
    /// Request summaries of this status class only: 2xx, 3xx, 4xx, 5xx.
    #[arg(long)]
    pub status: Option<String>,
    /// `human` lines, or the node's `json` objects as they come.
    #[arg(long, value_enum, default_value = "human")]
    pub format: TailFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TailFormat {
    Human,
    Json,
}

pub fn main(args: TailArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(follow(args))
}

async fn follow(args: TailArgs) -> anyhow::Result<()> {
    let mut url = reqwest::Url::parse(&args.pop)
        .with_context(|| format!("--pop {:?} is not a URL", args.pop))?
        .join("/tail")?;
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("app", &args.app);
        if let Some(level) = &args.level {
            query.append_pair("level", level);
        }
        if let Some(status) = &args.status {
            query.append_pair("status", status);
        }
    }
    let response = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()?
        .get(url.clone())
        .send()
        .await
        .with_context(|| {
            format!(
                "the node's admin listener at {} cannot be reached",
                args.pop
            )
        })?;
    if !response.status().is_success() {
        let status = response.status();
        bail!(
            "{url}: {status}: {}",
            response.text().await.unwrap_or_default().trim()
        );
    }
    eprintln!(
        "outpost tail: following {} on {} (Ctrl-C to stop)",
        args.app, args.pop
    );
    let mut stream = response.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk.context("the stream broke")?);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            show(&line, args.format)?;
        }
    }
    bail!("the node closed the stream")
}

/// Prints one event; an event saying this follower was dropped ends the command.
fn show(line: &str, format: TailFormat) -> anyhow::Result<()> {
    let event: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    if event["type"] == "dropped" {
        bail!(
            "the node dropped this tail: {}",
            event["reason"].as_str().unwrap_or("it fell behind")
        );
    }
    if format == TailFormat::Json {
        println!("{line}");
        return Ok(());
    }
    let app = event["app"].as_str().unwrap_or("?");
    let id = event["request_id"].as_str().unwrap_or("");
    match event["type"].as_str() {
        Some("console") => {
            let level = event["level"].as_str().unwrap_or("log");
            let message = event["message"].as_str().unwrap_or("");
            if id.is_empty() {
                println!("[{app}] {level:5} {message}");
            } else {
                println!("[{app} req={id}] {level:5} {message}");
            }
        }
        Some("request") => println!(
            "[{app} req={id}] {} {} {} {:.1} ms",
            event["method"].as_str().unwrap_or("?"),
            event["path"].as_str().unwrap_or("?"),
            event["status"],
            event["ms"].as_f64().unwrap_or(0.0)
        ),
        _ => println!("{line}"),
    }
    Ok(())
}
