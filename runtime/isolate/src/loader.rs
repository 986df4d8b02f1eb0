//! Module loading from a [`Bundle`]: only the bundle's modules can be imported, under
//! `file:///<path>` specifiers, so stack traces show the app's own paths
//! (`file:///src/index.js:3:9`). Non-JavaScript modules follow the Workers module rules:
//! `.wasm` → `WebAssembly.Module`, `.json` → value, text files → string, `.bin` → ArrayBuffer.

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use deno_core::{
    v8, CustomModuleEvaluationKind, FastString, JsRuntime, ModuleLoadOptions, ModuleLoadReferrer,
    ModuleLoadResponse, ModuleLoader, ModuleResolveResponse, ModuleSource, ModuleSourceCode,
    ModuleSpecifier, ModuleType, RequestedModuleType, ResolutionKind, SourceCodeCacheInfo,
};
use deno_error::JsErrorBox;
use outpost_bundle::{Bundle, ModuleKind};

use crate::code_cache::VersionCache;

/// The scheme and root of every module specifier.
pub const MODULE_ROOT: &str = "file:///";

const WASM_MODULE: &str = "outpost-wasm";
const DATA_MODULE: &str = "outpost-data";

/// The specifier of a bundle path.
pub fn specifier_of(path: &str) -> Result<ModuleSpecifier, JsErrorBox> {
    ModuleSpecifier::parse(&format!("{MODULE_ROOT}{path}"))
        .map_err(|e| JsErrorBox::type_error(format!("invalid module path {path:?}: {e}")))
}

/// Serves imports from one bundle, once it is given one (a spare runtime is made with a
/// loader that has none yet, and refuses every import until then).
#[derive(Default)]
pub struct BundleLoader {
    bundle: RefCell<Option<Arc<Bundle>>>,
    cache: RefCell<Option<Arc<VersionCache>>>,
}

impl BundleLoader {
    /// Gives the loader the bundle it serves from now on, and its version's compiled code.
    pub fn assign(&self, bundle: Arc<Bundle>, cache: Arc<VersionCache>) {
        *self.bundle.borrow_mut() = Some(bundle);
        *self.cache.borrow_mut() = Some(cache);
    }
}

impl ModuleLoader for BundleLoader {
    fn resolve(
        &self,
        specifier: &str,
        referrer: &str,
        _kind: ResolutionKind,
    ) -> ModuleResolveResponse {
        let resolved = if specifier.starts_with("./")
            || specifier.starts_with("../")
            || specifier.starts_with('/')
            || specifier.starts_with(MODULE_ROOT)
        {
            let base =
                ModuleSpecifier::parse(referrer).or_else(|_| ModuleSpecifier::parse(MODULE_ROOT));
            base.and_then(|base| base.join(specifier)).map_err(|e| {
                JsErrorBox::type_error(format!("cannot resolve {specifier:?} from {referrer}: {e}"))
            })
        } else {
            Err(JsErrorBox::type_error(format!(
                "cannot import {specifier:?} from {referrer}: only relative imports of the app's own \
                 modules (\"./file.js\") are supported; bundle packages into the app first"
            )))
        };
        resolved
    }

    fn load(
        &self,
        specifier: &ModuleSpecifier,
        _referrer: Option<&ModuleLoadReferrer>,
        options: ModuleLoadOptions,
    ) -> ModuleLoadResponse {
        ModuleLoadResponse::Sync(self.source_of(specifier, &options.requested_module_type))
    }

    fn code_cache_ready(
        &self,
        specifier: ModuleSpecifier,
        _hash: u64,
        code_cache: &[u8],
    ) -> Pin<Box<dyn Future<Output = ()>>> {
        if let Some(cache) = self.cache.borrow().as_ref() {
            cache.set_js(specifier.as_str(), code_cache);
        }
        Box::pin(std::future::ready(()))
    }
}

impl BundleLoader {
    fn source_of(
        &self,
        specifier: &ModuleSpecifier,
        requested: &RequestedModuleType,
    ) -> Result<ModuleSource, JsErrorBox> {
        let path = specifier
            .as_str()
            .strip_prefix(MODULE_ROOT)
            .filter(|_| specifier.scheme() == "file")
            .ok_or_else(|| {
                JsErrorBox::type_error(format!("module {specifier} is not part of the app"))
            })?;
        let path = percent_decode(path);
        let bundle = self
            .bundle
            .borrow()
            .clone()
            .ok_or_else(|| JsErrorBox::type_error("no app is loaded in this isolate"))?;
        let module = bundle.modules.get(path.as_str()).ok_or_else(|| {
            JsErrorBox::type_error(format!(
                "module {path:?} was not found in the app (imported as {specifier})"
            ))
        })?;
        if module.kind == ModuleKind::Certificate {
            // It holds a private key: the node serves it, the app's code never sees it.
            return Err(JsErrorBox::type_error(format!(
                "{path:?} is one of the app's TLS certificates, which cannot be imported"
            )));
        }
        let bytes = || ModuleSourceCode::Bytes(module.bytes.to_vec().into_boxed_slice().into());
        let text = || -> Result<ModuleSourceCode, JsErrorBox> {
            let text = std::str::from_utf8(&module.bytes).map_err(|_| {
                JsErrorBox::type_error(format!("module {path:?} is not valid UTF-8"))
            })?;
            Ok(ModuleSourceCode::String(text.to_string().into()))
        };
        // An import attribute (`with { type: "json" }`) takes precedence over the file kind.
        let (module_type, code) = match (requested, module.kind) {
            (RequestedModuleType::Json, _) | (RequestedModuleType::None, ModuleKind::Json) => {
                (ModuleType::Json, text()?)
            }
            (RequestedModuleType::Text, _) | (RequestedModuleType::None, ModuleKind::Text) => {
                (ModuleType::Text, text()?)
            }
            (RequestedModuleType::Bytes, _) => (ModuleType::Bytes, bytes()),
            (RequestedModuleType::None, ModuleKind::JavaScript) => {
                (ModuleType::JavaScript, text()?)
            }
            // A plain `import m from "./x.wasm"` asks for a JavaScript module: give it one that
            // re-exports the synthetic module holding the compiled value.
            (RequestedModuleType::None, ModuleKind::Wasm) => {
                (ModuleType::JavaScript, reexport(specifier, WASM_MODULE))
            }
            (RequestedModuleType::None, ModuleKind::Data) => {
                (ModuleType::JavaScript, reexport(specifier, DATA_MODULE))
            }
            (RequestedModuleType::Other(other), ModuleKind::Wasm) if other == WASM_MODULE => {
                (ModuleType::Other(WASM_MODULE.into()), bytes())
            }
            (RequestedModuleType::Other(other), ModuleKind::Data) if other == DATA_MODULE => {
                (ModuleType::Other(DATA_MODULE.into()), bytes())
            }
            (RequestedModuleType::None, ModuleKind::Certificate) => {
                unreachable!("refused above")
            }
            (RequestedModuleType::Other(other), _) => {
                return Err(JsErrorBox::type_error(format!(
                    "import of {path:?} asks for type {other:?}, which Outpost does not know"
                )))
            }
        };
        // JavaScript compiles from V8's code cache when an isolate of this version made one.
        let code_cache = match module_type {
            ModuleType::JavaScript => Some(SourceCodeCacheInfo {
                hash: 0,
                data: self
                    .cache
                    .borrow()
                    .as_ref()
                    .and_then(|cache| cache.js(specifier.as_str()))
                    .map(|data| Cow::Owned(data.to_vec())),
            }),
            _ => None,
        };
        Ok(ModuleSource::new(module_type, code, specifier, code_cache))
    }
}

/// The source of a JavaScript module whose default export is the value of the module at
/// `specifier` evaluated as `module_type` by [`evaluate_custom_module`].
fn reexport(specifier: &ModuleSpecifier, module_type: &str) -> ModuleSourceCode {
    let source = format!(
        "import value from {:?} with {{ type: {module_type:?} }};\nexport default value;\n",
        specifier.as_str()
    );
    ModuleSourceCode::String(source.into())
}

fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&path[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Evaluates the module types deno_core leaves to the embedder: `.wasm` files become a
/// compiled `WebAssembly.Module`, `.bin` files an `ArrayBuffer`, each as the default export.
pub fn evaluate_custom_module(
    scope: &mut v8::PinScope,
    module_type: Cow<'_, str>,
    name: &FastString,
    code: ModuleSourceCode,
) -> Result<CustomModuleEvaluationKind, JsErrorBox> {
    let bytes: Vec<u8> = match code {
        ModuleSourceCode::Bytes(bytes) => bytes.to_vec(),
        ModuleSourceCode::String(text) => text.as_bytes().to_vec(),
    };
    let value: v8::Local<v8::Value> = match module_type.as_ref() {
        WASM_MODULE => {
            let cache = JsRuntime::op_state_from(scope)
                .try_borrow()
                .ok()
                .and_then(|state| state.try_borrow::<Arc<VersionCache>>().cloned());
            let compiled = cache
                .as_ref()
                .and_then(|cache| cache.wasm(name.as_str()))
                .and_then(|module| v8::WasmModuleObject::from_compiled_module(scope, &module));
            if let Some(module) = compiled {
                let value: v8::Local<v8::Value> = module.into();
                return Ok(CustomModuleEvaluationKind::Synthetic(v8::Global::new(
                    scope, value,
                )));
            }
            v8::tc_scope!(let tc, scope);
            match v8::WasmModuleObject::compile(tc, &bytes) {
                Some(module) => {
                    if let Some(cache) = &cache {
                        cache.set_wasm(name.as_str(), module.get_compiled_module());
                    }
                    module.into()
                }
                None => {
                    let message = tc
                        .exception()
                        .map(|e| e.to_rust_string_lossy(tc))
                        .unwrap_or_else(|| "invalid WebAssembly".to_string());
                    return Err(JsErrorBox::type_error(format!(
                        "{}: WebAssembly compilation failed: {message}",
                        name.as_str()
                    )));
                }
            }
        }
        DATA_MODULE => {
            let store = v8::ArrayBuffer::new_backing_store_from_vec(bytes).make_shared();
            v8::ArrayBuffer::with_backing_store(scope, &store).into()
        }
        other => {
            return Err(JsErrorBox::type_error(format!(
                "{}: unknown module type {other}",
                name.as_str()
            )))
        }
    };
    Ok(CustomModuleEvaluationKind::Synthetic(v8::Global::new(
        scope, value,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("My%20Worker.js"), "My Worker.js");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain/path.js"), "plain/path.js");
    }
}
