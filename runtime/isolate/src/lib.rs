//! Outpost's isolates: V8 (through deno_core) with the Web APIs of Deno's extension crates,
//! running Workers-style handlers from a [`Bundle`]. This is the only crate that links V8.
//!
//! [`IsolateEngine`] implements the pool's [`Engine`]: each instance is one isolate, created
//! from a startup snapshot (made by `build.rs` from `js/`), serving its deployment's requests
//! concurrently on one worker thread.

mod body;
mod extensions;
mod instance;
mod loader;

use std::io::Write;
use std::rc::Rc;
use std::sync::{Arc, Once};

use outpost_bundle::Bundle;
use outpost_pool::{Engine, Job, LoadError, LocalFuture};
use tokio::sync::mpsc;

pub use extensions::ConsoleSink;
pub use instance::{Instance, ServeEnd};

/// Runs bundles in V8 isolates.
pub struct IsolateEngine {
    _private: (),
}

impl IsolateEngine {
    /// Initializes V8 for the process. Call it on the main thread, before any worker thread
    /// starts isolates (V8's platform must be set up by a common parent thread).
    pub fn new() -> IsolateEngine {
        static INIT: Once = Once::new();
        INIT.call_once(|| deno_core::JsRuntime::init_platform(None));
        IsolateEngine { _private: () }
    }
}

impl Default for IsolateEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine for IsolateEngine {
    fn instantiate(
        &self,
        bundle: Arc<Bundle>,
        mut jobs: mpsc::Receiver<Job>,
    ) -> LocalFuture<Result<LocalFuture<()>, LoadError>> {
        Box::pin(async move {
            let console = terminal_console(&bundle.manifest.name);
            let instance = Instance::start(bundle.clone(), console.clone()).await?;
            let serve: LocalFuture<()> = Box::pin(async move {
                let mut instance = instance;
                loop {
                    match instance.serve(&mut jobs).await {
                        ServeEnd::Closed => return,
                        ServeEnd::Failed(message) => {
                            console(
                                3,
                                &format!("the isolate failed and is replaced: {message}\n"),
                            );
                        }
                    }
                    drop(instance);
                    instance = match Instance::start(bundle.clone(), console.clone()).await {
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
