//! `outpost tail APP --pop URL`: follows an app's console lines and request summaries on one
//! node, through its admin listener's `/tail`; `--origin URL` follows them on every PoP the
//! origin has seen following its feed (`GET /v1/pops`), merged, each line naming its PoP.

use anyhow::{bail, Context};
use futures::StreamExt;

#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// The app to follow.
    pub app: String,
    /// One node's admin listener (http://HOST:PORT, its `--admin` address).
    #[arg(long, env = "OUTPOST_POP", required_unless_present = "origin")]
    pub pop: Option<String>,
    /// An origin: follow the app on every PoP that follows it.
    #[arg(long, conflicts_with = "pop")]
    pub origin: Option<String>,
    /// The token for --origin (else $OUTPOST_TOKEN).
    #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
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
    if let Some(origin) = &args.origin {
        return follow_all(&args, origin).await;
    }
    let pop = args.pop.clone().unwrap_or_default();
    follow_one(&args, &pop, None).await
}

/// Follows every PoP the origin lists, each in its own task, printing lines as they come.
async fn follow_all(args: &TailArgs, origin: &str) -> anyhow::Result<()> {
    let url = format!("{}/v1/pops", origin.trim_end_matches('/'));
    let mut request = reqwest::Client::new().get(&url);
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("the origin at {origin} cannot be reached"))?;
    if !response.status().is_success() {
        bail!("{url}: {}", response.status());
    }
    let pops: Vec<serde_json::Value> = response.json().await?;
    if pops.is_empty() {
        bail!("no PoP follows {origin} with an admin listener (start them with --admin)");
    }
    let mut tasks = tokio::task::JoinSet::new();
    for pop in pops {
        let (Some(name), Some(admin)) = (pop["name"].as_str(), pop["admin"].as_str()) else {
            continue;
        };
        let (args, name, admin) = (args.clone(), name.to_string(), admin.to_string());
        tasks.spawn(async move {
            if let Err(e) = follow_one(&args, &admin, Some(&name)).await {
                eprintln!("outpost tail: {name}: {e:#}");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    bail!("every PoP's stream ended")
}

/// Follows one node's admin listener at `admin`; `pop` names it on each line.
async fn follow_one(args: &TailArgs, admin: &str, pop: Option<&str>) -> anyhow::Result<()> {
    let mut url = reqwest::Url::parse(admin)
        .with_context(|| format!("{admin:?} is not a URL"))?
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
        .with_context(|| format!("the node's admin listener at {admin} cannot be reached"))?;
    if !response.status().is_success() {
        let status = response.status();
        bail!(
            "{url}: {status}: {}",
            response.text().await.unwrap_or_default().trim()
        );
    }
    eprintln!(
        "outpost tail: following {} on {admin} (Ctrl-C to stop)",
        args.app
    );
    let mut stream = response.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk.context("the stream broke")?);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            show(&line, args.format, pop)?;
        }
    }
    bail!("the node closed the stream")
}

/// Prints one event (of PoP `pop`, when following several); an event saying this follower
/// was dropped ends the command.
fn show(line: &str, format: TailFormat, pop: Option<&str>) -> anyhow::Result<()> {
    let mut event: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    if event["type"] == "dropped" {
        bail!(
            "the node dropped this tail: {}",
            event["reason"].as_str().unwrap_or("it fell behind")
        );
    }
    if format == TailFormat::Json {
        match pop {
            Some(pop) => {
                event["pop"] = serde_json::Value::from(pop);
                println!("{event}");
            }
            None => println!("{line}"),
        }
        return Ok(());
    }
    if let Some(pop) = pop {
        print!("{pop} ");
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
