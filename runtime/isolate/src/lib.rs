//! Outpost's isolates: V8 (through deno_core) with the Web APIs of Deno's extension crates,
//! running Workers-style handlers from a [`Bundle`]. This is the only crate that links V8.
//!
//! [`IsolateEngine`] implements the pool's [`Engine`]: each instance is one isolate, created
//! from a startup snapshot (made by `build.rs` from `js/`), serving its deployment's requests
//! concurrently on one worker thread.

mod body;
mod extensions;
mod instance;
mod limits;
mod loader;

use std::io::Write;
use std::rc::Rc;
use std::sync::{Arc, Once};

use outpost_bundle::Bundle;
use outpost_pool::{Engine, Job, LoadError, LocalFuture};
use tokio::sync::mpsc;

pub use extensions::ConsoleSink;
pub use instance::{Instance, ServeEnd};
pub use limits::Limits;

/// Runs bundles in V8 isolates, each within [`Limits`].
pub struct IsolateEngine {
    limits: Limits,
}

impl IsolateEngine {
    /// Initializes V8 for the process. Call it on the main thread, before any worker thread
    /// starts isolates (V8's platform must be set up by a common parent thread).
    pub fn new(limits: Limits) -> IsolateEngine {
        static INIT: Once = Once::new();
        INIT.call_once(|| deno_core::JsRuntime::init_platform(None));
        IsolateEngine { limits }
    }
}

impl Engine for IsolateEngine {
    fn instantiate(
        &self,
        bundle: Arc<Bundle>,
        mut jobs: mpsc::Receiver<Job>,
    ) -> LocalFuture<Result<LocalFuture<()>, LoadError>> {
        let limits = self.limits.clone();
        Box::pin(async move {
            let console = terminal_console(&bundle.manifest.name);
            let instance = Instance::start(bundle.clone(), console.clone(), &limits).await?;
            let serve: LocalFuture<()> = Box::pin(async move {
                let mut instance = instance;
                loop {
                    match instance.serve(&mut jobs).await {
                        ServeEnd::Closed => return,
                        ServeEnd::Failed(message) => {
                            console(3, &format!("{message}; its isolate is replaced\n"));
                        }
                    }
                    drop(instance);
                    instance = match Instance::start(bundle.clone(), console.clone(), &limits).await
                    {
                        Ok(instance) => instance,
                        Err(e) => {
                            console(3, &format!("the isolate could not be restarted: {e}\n"));
                            return;
                        }
                    };
                }
            });
            Ok(serve)
        })
    }
}

/// Console output of an app on the node's terminal: each line prefixed with `[name]`;
/// `console.log`/`info`/`debug` to stdout, `warn`/`error` (and uncaught exceptions) to stderr.
pub fn terminal_console(name: &str) -> ConsoleSink {
    let prefix = format!("[{name}] ");
    Rc::new(move |level: u32, text: &str| {
        let text = text.strip_suffix('\n').unwrap_or(text);
        let mut out = String::with_capacity(text.len() + prefix.len() + 1);
        for line in text.split('\n') {
            out.push_str(&prefix);
            out.push_str(line);
            out.push('\n');
        }
        let _ = if level >= 2 {
            std::io::stderr().lock().write_all(out.as_bytes())
        } else {
            std::io::stdout().lock().write_all(out.as_bytes())
        };
    })
}
