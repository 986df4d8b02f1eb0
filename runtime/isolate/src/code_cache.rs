//! Compiled code shared by every isolate of one app version in the process: V8's code cache
//! of each JavaScript module (made by the first isolate that compiles it, consumed by the
//! next ones) and each compiled WebAssembly module (instantiated again without recompiling).
//! One per bundle in memory, so a new version never sees another's code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};

use deno_core::v8;
use outpost_bundle::Bundle;

/// The compiled code of one app version.
#[derive(Default)]
pub struct VersionCache {
    js: RwLock<HashMap<String, Arc<[u8]>>>,
    wasm: RwLock<HashMap<String, Arc<v8::CompiledWasmModule>>>,
}

impl VersionCache {
    /// The cache of `bundle`'s version: one per bundle in memory, kept as long as the bundle
    /// is (its deployment lives), whether or not an isolate of it does.
    pub fn of(bundle: &Arc<Bundle>) -> Arc<VersionCache> {
        type Entries = Vec<(Weak<Bundle>, Arc<VersionCache>)>;
        static VERSIONS: Mutex<Entries> = Mutex::new(Vec::new());
        let Ok(mut versions) = VERSIONS.lock() else {
            return Arc::default();
        };
        versions.retain(|(bundle, _)| bundle.strong_count() > 0);
        let weak = Arc::downgrade(bundle);
        if let Some((_, cache)) = versions.iter().find(|(b, _)| b.ptr_eq(&weak)) {
            return cache.clone();
        }
        let cache = Arc::new(VersionCache::default());
        versions.push((weak, cache.clone()));
        cache
    }

    /// V8's code cache for the JavaScript module `specifier`, if one was made.
    pub fn js(&self, specifier: &str) -> Option<Arc<[u8]>> {
        self.js.read().ok()?.get(specifier).cloned()
    }

    /// Keeps V8's code cache for `specifier` (replacing one V8 rejected).
    pub fn set_js(&self, specifier: &str, data: &[u8]) {
        if let Ok(mut js) = self.js.write() {
            js.insert(specifier.to_string(), data.into());
        }
    }

    /// The compiled WebAssembly module `specifier`, if one was compiled.
    pub fn wasm(&self, specifier: &str) -> Option<Arc<v8::CompiledWasmModule>> {
        self.wasm.read().ok()?.get(specifier).cloned()
    }

    pub fn set_wasm(&self, specifier: &str, module: v8::CompiledWasmModule) {
        if let Ok(mut wasm) = self.wasm.write() {
            wasm.insert(specifier.to_string(), Arc::new(module));
        }
    }
}
