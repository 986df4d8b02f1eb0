//! Runtimes made from the startup snapshot before any app is known, and each worker's
//! stock of them: an app's cold start takes a ready runtime and pays only for its own
//! modules; the stock is refilled off the request path.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use deno_core::{v8, JsRuntime, RuntimeOptions};
use outpost_pool::LoadError;

use crate::allocator::{self, Budget};
use crate::enter::drop_runtime;
use crate::extensions;
use crate::loader::{self, BundleLoader};

/// The startup snapshot made by build.rs.
static SNAPSHOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/SNAPSHOT.bin"));

/// A runtime from the snapshot, with no app loaded and no tenant state yet. Not entered.
pub struct Blank {
    runtime: Option<JsRuntime>,
    raw: v8::UnsafeRawIsolatePtr,
    pub loader: Rc<BundleLoader>,
    pub budget: Arc<Budget>,
    /// V8's heap limit, fixed at creation.
    pub heap_limit: u64,
}

impl Blank {
    /// Creates a runtime whose V8 heap may grow to `memory_limit`. Must run inside a tokio
    /// runtime (V8 posts delayed tasks to it), on the thread that will use the runtime.
    pub fn new(memory_limit: u64) -> Result<Blank, LoadError> {
        let loader = Rc::new(BundleLoader::default());
        let budget = Budget::new(memory_limit);
        let params = v8::CreateParams::default()
            .heap_limits(0, usize::try_from(memory_limit).unwrap_or(usize::MAX))
            .array_buffer_allocator(allocator::allocator(budget.clone()));
        let mut runtime = JsRuntime::try_new(RuntimeOptions {
            extensions: extensions::extensions(),
            startup_snapshot: Some(SNAPSHOT),
            module_loader: Some(loader.clone()),
            custom_module_evaluation_cb: Some(Box::new(loader::evaluate_custom_module)),
            create_params: Some(params),
            // Each runtime its own (never shared between tenants): what structuredClone and
            // MessagePort move through when they transfer an ArrayBuffer or clone a
            // SharedArrayBuffer or a WebAssembly.Module. Without them transfers copy.
            shared_array_buffer_store: Some(deno_core::SharedArrayBufferStore::default()),
            compiled_wasm_module_store: Some(deno_core::CompiledWasmModuleStore::default()),
            ..Default::default()
        })
        .map_err(|e| LoadError::new(format!("creating the isolate failed: {e}")))?;
        // SAFETY: the runtime was just created on this thread and is owned here.
        let raw = unsafe { runtime.v8_isolate().as_raw_isolate_ptr() };
        // A new isolate is entered; leave it so that others on this thread can run.
        // SAFETY: balances the enter done by isolate creation.
        unsafe { runtime.v8_isolate().exit() };
        Ok(Blank {
            runtime: Some(runtime),
            raw,
            loader,
            budget,
            heap_limit: memory_limit,
        })
    }

    /// The isolate, for [`EnterGuard`](crate::enter::EnterGuard).
    pub fn raw(&self) -> v8::UnsafeRawIsolatePtr {
        self.raw
    }

    /// Takes the runtime out; the caller must enter it before dropping it.
    pub fn into_runtime(mut self) -> JsRuntime {
        self.runtime
            .take()
            .expect("a blank holds its runtime until taken")
    }
}

impl Drop for Blank {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            drop_runtime(self.raw, runtime);
        }
    }
}

thread_local! {
    /// This worker's ready runtimes.
    static STOCK: RefCell<Vec<Blank>> = const { RefCell::new(Vec::new()) };
}

/// Ready runtimes of every worker of the process, for the node's metrics.
static READY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Ready runtimes waiting for a cold app on every worker now.
pub fn spare_runtimes() -> usize {
    READY.load(std::sync::atomic::Ordering::Relaxed)
}

/// How a worker keeps its stock of ready runtimes.
#[derive(Debug, Clone, Copy)]
pub struct Stock {
    /// Runtimes kept ready.
    pub size: usize,
    /// Their memory limit: an app with this limit takes one; another makes its own.
    pub memory_limit: u64,
}

impl Stock {
    /// A runtime for an app with `memory_limit`: a ready one when it fits, else a new one.
    /// Taking a ready one schedules a refill after the current work.
    pub fn take(&self, memory_limit: u64) -> Result<Blank, LoadError> {
        if memory_limit == self.memory_limit && self.size > 0 {
            if let Some(blank) = STOCK.with(|stock| stock.borrow_mut().pop()) {
                READY.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                let stock = *self;
                tokio::task::spawn_local(async move {
                    // Let the request that took the runtime run first.
                    tokio::task::yield_now().await;
                    stock.refill();
                });
                return Ok(blank);
            }
        }
        Blank::new(memory_limit)
    }

    /// Fills the stock up to its size.
    pub fn refill(&self) {
        loop {
            let have = STOCK.with(|stock| stock.borrow().len());
            if have >= self.size {
                return;
            }
            match Blank::new(self.memory_limit) {
                Ok(blank) => {
                    STOCK.with(|stock| stock.borrow_mut().push(blank));
                    READY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!("could not make a spare runtime: {e}");
                    return;
                }
            }
        }
    }

    /// Keeps the stock filled on this worker: once at start, then after each take.
    pub async fn keep(self) {
        // Let the worker take its first commands before spending ~5 ms per runtime.
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.refill();
    }
}
