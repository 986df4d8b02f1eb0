//! `outpost origin`: the control plane's HTTP API over a data directory.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use outpost_gateway::origin::{serve_origin, Origin, Tokens};
use outpost_store::{Locations, OriginStore};
use tokio::net::TcpListener;

use crate::OriginArgs;

pub fn main(args: OriginArgs) -> anyhow::Result<()> {
    let tokens = Tokens {
        deploy: token(args.deploy_token_file.as_deref(), "OUTPOST_DEPLOY_TOKEN")?,
        pop: token(args.pop_token_file.as_deref(), "OUTPOST_POP_TOKEN")?,
    };
    if tokens.deploy.is_none() && !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} without a deploy token: set OUTPOST_DEPLOY_TOKEN (and \
             OUTPOST_POP_TOKEN), or listen on a loopback address",
            args.listen
        );
    }
    let locations = Locations {
        data: args.data,
        database: args.database,
        blobs: args.blobs,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let store = OriginStore::open(&locations)
            .await
            .context("opening the origin's store")?;
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        println!("outpost origin: {}", store.description());
        println!(
            "outpost origin: listening on http://{}/",
            listener.local_addr()?
        );
        let origin = Arc::new(Origin::new(store, tokens));
        if let Some(admin_addr) = args.admin {
            let admin = TcpListener::bind(admin_addr)
                .await
                .with_context(|| format!("listening on {admin_addr} (admin)"))?;
            println!("outpost origin: admin on http://{}/", admin.local_addr()?);
            let origin = origin.clone();
            tokio::spawn(outpost_gateway::endpoints::serve_endpoints(
                admin,
                move |request| {
                    let origin = origin.clone();
                    async move { origin.admin(request).await }
                },
            ));
        }
        tokio::select! {
            () = serve_origin(listener, origin) => {}
            _ = tokio::signal::ctrl_c() => println!("outpost origin: stopping"),
        }
        anyhow::Ok(())
    })
}

/// A token from `file` (trimmed), else from the environment variable `var`; none if
/// neither is set (an empty value counts as unset).
fn token(file: Option<&Path>, var: &str) -> anyhow::Result<Option<String>> {
    let value = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {}", path.display()))?,
        None => std::env::var(var).unwrap_or_default(),
    };
    let value = value.trim().to_string();
    Ok((!value.is_empty()).then_some(value))
}
