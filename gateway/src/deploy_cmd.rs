//! `outpost deploy`, `outpost rollback`, `outpost versions`: the client side of the origin
//! API. A deploy uploads only the blobs the origin lacks, creates the version, and
//! activates it.

use std::path::PathBuf;

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Where the origin is and how to authenticate.
#[derive(Debug, clap::Args)]
pub struct OriginClientArgs {
    /// The origin's URL (http://HOST:PORT).
    #[arg(long, env = "OUTPOST_ORIGIN")]
    pub origin: String,
    /// The deploy token (else $OUTPOST_TOKEN).
    #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The app: a directory with outpost.toml, or a single .js/.mjs file.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    #[command(flatten)]
    pub origin: OriginClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The app's name.
    pub app: String,
    /// The version to make active (default: the one before the current).
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub origin: OriginClientArgs,
}

/// `outpost purge`: exactly one of what to purge.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["url", "tag", "prefix", "all"])))]
pub struct PurgeArgs {
    /// The app's name.
    pub app: String,
    /// The responses of this URL (every variant; http: and https: alike).
    #[arg(long)]
    pub url: Option<String>,
    /// The responses whose `Cache-Tag` lists this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// The responses of URLs starting with this (`https://example.com/blog/`).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Everything the app's cache holds, its Cache API entries included.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub origin: OriginClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct VersionsArgs {
    /// The app's name.
    pub app: String,
    #[command(flatten)]
    pub origin: OriginClientArgs,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// How many times a request the origin answers `503` is sent.
const ATTEMPTS: u32 = 3;

impl Client {
    fn new(args: &OriginClientArgs) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            // A stalled origin fails the command; a large upload that makes progress does not.
            .read_timeout(std::time::Duration::from_secs(60))
            .build()?;
        Ok(Client {
            http,
            base: args.origin.trim_end_matches('/').to_string(),
            token: args.token.clone(),
        })
    }

    /// Sends a request; returns the status and the body as JSON (or as a JSON string). A
    /// `503` (the origin's database or blob storage did not answer) is tried again, after
    /// the `Retry-After` it names, up to [`ATTEMPTS`] times in all.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut attempt = 1;
        let response = loop {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .body(body.clone());
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let response = request
                .send()
                .await
                .with_context(|| format!("the origin at {} cannot be reached", self.base))?;
            if response.status() != StatusCode::SERVICE_UNAVAILABLE || attempt == ATTEMPTS {
                break response;
            }
            let wait = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1)
                .min(5);
            tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
            attempt += 1;
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            bail!(
                "the origin refused the token ({status}): pass a deploy token with --token or \
                 OUTPOST_TOKEN"
            );
        }
        Ok((status, value))
    }

    /// Like [`Client::call`], failing with the origin's reason unless the status is a success.
    async fn expect(&self, method: Method, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        let (status, value) = self.call(method, path, body).await?;
        if !status.is_success() {
            let reason = value["error"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            bail!("the origin answered {status}: {reason}");
        }
        Ok(value)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let bundle = crate::load_in_an_isolate(outpost_bundle::load_app(&args.path)?)?;
    let client = Client::new(&args.origin)?;
    runtime()?.block_on(async move {
        let name = bundle.manifest.name.clone();
        let total = bundle.modules.len();
        let mut uploaded = 0;
        for (index, (path, module)) in bundle.modules.iter().enumerate() {
            let blob = format!("/v1/blobs/{}", module.sha256);
            let (status, _) = client.call(Method::HEAD, &blob, Vec::new()).await?;
            if status == StatusCode::OK {
                continue;
            }
            eprintln!(
                "outpost deploy: [{}/{total}] uploading {path} ({} bytes)",
                index + 1,
                module.bytes.len()
            );
            client
                .expect(Method::PUT, &blob, module.bytes.to_vec())
                .await?;
            uploaded += 1;
        }
        let created = client
            .expect(Method::POST, "/v1/versions", bundle.lock().to_bytes())
            .await?;
        let id = created["id"].as_str().unwrap_or_default().to_string();
        let body = serde_json::to_vec(&json!({ "version": id }))?;
        let change = client
            .expect(Method::PUT, &format!("/v1/apps/{name}/active"), body)
            .await?;
        eprintln!(
            "outpost deploy: {uploaded} of {total} modules uploaded, the rest were on the origin"
        );
        println!(
            "deployed {name}@{} (version {id}, change {})",
            &id[..8.min(id.len())],
            change["seq"]
        );
        anyhow::Ok(())
    })
}

pub fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.origin)?;
    runtime()?.block_on(async move {
        let body = match &args.to {
            Some(to) => serde_json::to_vec(&json!({ "to": to }))?,
            None => Vec::new(),
        };
        let change = client
            .expect(
                Method::POST,
                &format!("/v1/apps/{}/rollback", args.app),
                body,
            )
            .await?;
        println!(
            "{} now runs version {} (change {})",
            args.app,
            change["version"].as_str().unwrap_or("?"),
            change["seq"]
        );
        anyhow::Ok(())
    })
}

/// Purges an app's cache on every PoP: the origin appends the purge to its change feed.
pub fn purge(args: PurgeArgs) -> anyhow::Result<()> {
    use outpost_cache::Purge;
    let purge = match (&args.url, &args.tag, &args.prefix) {
        (Some(url), _, _) => Purge::Url(url.clone()),
        (_, Some(tag), _) => Purge::Tag(tag.clone()),
        (_, _, Some(prefix)) => Purge::Prefix(prefix.clone()),
        _ => Purge::All,
    };
    let client = Client::new(&args.origin)?;
    runtime()?.block_on(async move {
        let change = client
            .expect(
                Method::POST,
                &format!("/v1/apps/{}/purge", args.app),
                serde_json::to_vec(&purge)?,
            )
            .await?;
        println!(
            "purge of {} sent to every PoP (change {})",
            args.app, change["seq"]
        );
        anyhow::Ok(())
    })
}

pub fn versions(args: VersionsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.origin)?;
    runtime()?.block_on(async move {
        let versions = client
            .expect(
                Method::GET,
                &format!("/v1/apps/{}/versions", args.app),
                Vec::new(),
            )
            .await?;
        for version in versions.as_array().into_iter().flatten() {
            println!(
                "{} {} {}",
                if version["active"] == json!(true) {
                    "*"
                } else {
                    " "
                },
                version["id"].as_str().unwrap_or("?"),
                version["created_ms"]
            );
        }
        anyhow::Ok(())
    })
}
