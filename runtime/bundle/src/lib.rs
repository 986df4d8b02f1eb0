//! The deployable format of an Outpost app: its [`Manifest`] and its modules, each with a
//! SHA-256 digest. A [`Bundle`] is pure data: it is read from an app directory here, and
//! executed by the isolate crate.

mod limits;
mod lock;
mod manifest;
mod route;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use limits::{AppLimits, Limits, MIN_MEMORY_MB};
pub use lock::{Lock, LockedModule, LOCK_SCHEMA};
pub use manifest::{CacheSettings, Manifest, DEFAULT_MAIN, MANIFEST_FILE, MAX_CERTIFICATES};
pub use route::{Route, Specificity};

/// Most modules one bundle may hold.
pub const MAX_MODULES: usize = 1_000;
/// Most bytes all modules of one bundle may hold together.
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;

/// Why an app could not be read or is not a valid bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("invalid {MANIFEST_FILE}: {0}")]
    Manifest(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} has no {MANIFEST_FILE}; an app directory needs one (at least `name = \"my-app\"`)"
    )]
    NoManifest(PathBuf),
    #[error("main module {0:?} is not in the app (looked for it under the app directory)")]
    MissingMain(String),
    #[error("main module {0:?} must be a JavaScript module (.js or .mjs)")]
    MainNotJavaScript(String),
    #[error("{path}: not an app: expected a directory with {MANIFEST_FILE} or a .js/.mjs file")]
    NotAnApp { path: PathBuf },
    #[error("the app is too large: {0}")]
    TooLarge(String),
    #[error("invalid locked bundle: {0}")]
    Lock(String),
    #[error("module {path}: {problem}")]
    Blob { path: String, problem: String },
}

/// How a module file is presented to the app, chosen by its file extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleKind {
    /// `.js`, `.mjs`: an ES module.
    JavaScript,
    /// `.wasm`: importing it gives a compiled `WebAssembly.Module`.
    Wasm,
    /// `.json`: importing it gives the parsed value.
    Json,
    /// `.txt`, `.html`, `.htm`, `.md`, `.csv`, `.svg`: importing it gives the text as a string.
    Text,
    /// `.bin`: importing it gives the bytes as an `ArrayBuffer`.
    Data,
    /// `.pem`: a TLS certificate chain and its key, listed in the manifest's
    /// `certificates`; served by the node for the app's hosts, never importable.
    Certificate,
}

impl ModuleKind {
    /// The kind of a module path, or `None` for files that are not modules.
    pub fn from_path(path: &str) -> Option<Self> {
        let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
        Some(match ext.as_str() {
            "js" | "mjs" => Self::JavaScript,
            "wasm" => Self::Wasm,
            "json" => Self::Json,
            "txt" | "html" | "htm" | "md" | "csv" | "svg" => Self::Text,
            "bin" => Self::Data,
            "pem" => Self::Certificate,
            _ => return None,
        })
    }
}

/// One module of a bundle.
#[derive(Debug, Clone)]
pub struct Module {
    /// How importing it behaves.
    pub kind: ModuleKind,
    /// Its bytes, shared between every isolate that runs the bundle.
    pub bytes: Arc<[u8]>,
    /// Hex SHA-256 of `bytes`.
    pub sha256: String,
}

/// An app ready to run: its manifest and every module, keyed by normalized relative path
/// (`src/index.js`).
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    pub modules: BTreeMap<String, Module>,
    /// The version id: hex SHA-256 of the bundle's [`Lock`] (its canonical bytes); equal
    /// bundles have equal ids.
    pub id: String,
}

impl Bundle {
    /// Builds a bundle from a manifest and module bytes, validating both.
    pub fn new(manifest: Manifest, files: BTreeMap<String, Vec<u8>>) -> Result<Self, BundleError> {
        manifest.validate()?;
        if files.len() > MAX_MODULES {
            return Err(BundleError::TooLarge(format!(
                "{} modules; at most {MAX_MODULES}",
                files.len()
            )));
        }
        let total: u64 = files.values().map(|b| b.len() as u64).sum();
        if total > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge(format!(
                "{total} bytes of modules; at most {MAX_BUNDLE_BYTES}"
            )));
        }
        let main = normalize_path(&manifest.main)
            .map_err(|why| BundleError::Manifest(format!("main {:?}: {why}", manifest.main)))?;
        let mut modules = BTreeMap::new();
        for (path, bytes) in files {
            let path = normalize_path(&path)
                .map_err(|why| BundleError::Manifest(format!("module {path:?}: {why}")))?;
            let Some(kind) = ModuleKind::from_path(&path) else {
                continue;
            };
            let sha256 = hex::encode(Sha256::digest(&bytes));
            modules.insert(
                path,
                Module {
                    kind,
                    bytes: bytes.into(),
                    sha256,
                },
            );
        }
        for (path, module) in &modules {
            if module.kind == ModuleKind::Certificate && !manifest.certificates.contains(path) {
                return Err(BundleError::Manifest(format!(
                    "{path} is a certificate the manifest's `certificates` does not list"
                )));
            }
        }
        for path in &manifest.certificates {
            if !modules.contains_key(path) {
                return Err(BundleError::Manifest(format!(
                    "certificates: {path:?} is not in the app"
                )));
            }
        }
        match modules.get(&main) {
            None => return Err(BundleError::MissingMain(main)),
            Some(m) if m.kind != ModuleKind::JavaScript => {
                return Err(BundleError::MainNotJavaScript(main))
            }
            Some(_) => {}
        }
        let mut bundle = Bundle {
            manifest: Manifest { main, ..manifest },
            modules,
            id: String::new(),
        };
        bundle.id = bundle.lock().id();
        Ok(bundle)
    }

    /// The bundle's lock: what an origin stores and a PoP loads.
    pub fn lock(&self) -> Lock {
        Lock::new(
            &self.manifest,
            self.modules.iter().map(|(path, m)| {
                (
                    path.as_str(),
                    m.kind,
                    m.bytes.len() as u64,
                    m.sha256.as_str(),
                )
            }),
        )
    }

    /// Rebuilds a bundle from its lock and the modules' bytes, by digest (`blob` returns the
    /// bytes stored under a SHA-256). Every module's size and digest is checked: a corrupt or
    /// partial blob is an error, never a bundle.
    pub fn from_lock(
        lock: &Lock,
        mut blob: impl FnMut(&str) -> Option<Vec<u8>>,
    ) -> Result<Bundle, BundleError> {
        let mut files = BTreeMap::new();
        for module in &lock.modules {
            let problem = |problem: String| BundleError::Blob {
                path: module.path.clone(),
                problem,
            };
            let bytes = blob(&module.sha256)
                .ok_or_else(|| problem(format!("blob {} is missing", module.sha256)))?;
            if bytes.len() as u64 != module.size {
                return Err(problem(format!(
                    "{} bytes where the lock says {}",
                    bytes.len(),
                    module.size
                )));
            }
            let digest = hex::encode(Sha256::digest(&bytes));
            if digest != module.sha256 {
                return Err(problem(format!(
                    "its bytes hash to {digest}, not to {}",
                    module.sha256
                )));
            }
            if ModuleKind::from_path(&module.path) != Some(module.kind) {
                return Err(problem(format!(
                    "kind {:?} does not match its file name",
                    module.kind
                )));
            }
            files.insert(module.path.clone(), bytes);
        }
        let bundle = Bundle::new(lock.manifest(), files)?;
        if bundle.id != lock.id() {
            return Err(BundleError::Lock(
                "the lock does not describe these modules".into(),
            ));
        }
        Ok(bundle)
    }

    /// The app's TLS certificates (each a `.pem` with a chain and its key), by path.
    pub fn certificates(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.modules
            .iter()
            .filter(|(_, m)| m.kind == ModuleKind::Certificate)
            .map(|(path, m)| (path.as_str(), &m.bytes[..]))
    }

    /// The main module's path.
    pub fn main(&self) -> &str {
        &self.manifest.main
    }

    /// A short form of the id for logs (`hello@3f2a9c1b`).
    pub fn label(&self) -> String {
        format!("{}@{}", self.manifest.name, &self.id[..8])
    }
}

/// Reads an app from disk: a directory with `outpost.toml`, or a single `.js`/`.mjs` file
/// (named after the file, with the other module files of its directory beside it).
pub fn load_app(path: &Path) -> Result<Bundle, BundleError> {
    let meta = std::fs::metadata(path).map_err(|source| io(path, source))?;
    if meta.is_dir() {
        let manifest_path = path.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::NoManifest(path.to_path_buf()))
            }
            Err(source) => return Err(io(&manifest_path, source)),
        };
        let manifest = Manifest::from_toml(&text)?;
        let mut files = BTreeMap::new();
        collect_modules(path, "", Depth::Recursive, &mut files)?;
        // Certificates (and their keys) go into the bundle only when the manifest lists
        // them: a key lying in the app's directory is never published by accident.
        for certificate in &manifest.certificates {
            let file = path.join(certificate);
            let bytes = std::fs::read(&file).map_err(|source| io(&file, source))?;
            files.insert(certificate.clone(), bytes);
        }
        return Bundle::new(manifest, files);
    }
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if ModuleKind::from_path(file_name) != Some(ModuleKind::JavaScript) {
        return Err(BundleError::NotAnApp {
            path: path.to_path_buf(),
        });
    }
    let stem = file_name
        .rsplit_once('.')
        .map_or(file_name, |(stem, _)| stem);
    let manifest = Manifest::for_single_file(stem, file_name);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut files = BTreeMap::new();
    collect_modules(dir, "", Depth::TopLevel, &mut files)?;
    Bundle::new(manifest, files)
}

/// The directories [`load_app`] looks into: what a developer edits, minus tool output.
fn skipped_dir(name: &str) -> bool {
    name.starts_with('.') || matches!(name, "node_modules" | "target")
}

#[derive(Clone, Copy, PartialEq)]
enum Depth {
    TopLevel,
    Recursive,
}

fn collect_modules(
    dir: &Path,
    prefix: &str,
    depth: Depth,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> Result<(), BundleError> {
    let entries = std::fs::read_dir(dir).map_err(|source| io(dir, source))?;
    let mut total: u64 = files.values().map(|b| b.len() as u64).sum();
    for entry in entries {
        let entry = entry.map_err(|source| io(dir, source))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        let kind = entry.file_type().map_err(|source| io(&path, source))?;
        let rel = format!("{prefix}{name}");
        if kind.is_dir() {
            if depth == Depth::Recursive && !skipped_dir(&name) {
                collect_modules(&path, &format!("{rel}/"), depth, files)?;
            }
            continue;
        }
        if matches!(
            ModuleKind::from_path(&name),
            None | Some(ModuleKind::Certificate)
        ) {
            continue;
        }
        if files.len() >= MAX_MODULES {
            return Err(BundleError::TooLarge(format!(
                "more than {MAX_MODULES} module files"
            )));
        }
        let bytes = std::fs::read(&path).map_err(|source| io(&path, source))?;
        total += bytes.len() as u64;
        if total > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge(format!(
                "more than {MAX_BUNDLE_BYTES} bytes of module files"
            )));
        }
        files.insert(rel, bytes);
    }
    Ok(())
}

fn io(path: &Path, source: std::io::Error) -> BundleError {
    BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Normalizes a bundle-relative module path: `/`-separated, no `.`/`..` escaping the app,
/// no leading `/`. Returns why a path is refused.
pub fn normalize_path(path: &str) -> Result<String, &'static str> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err("must stay inside the app directory");
                }
            }
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err("must name a file");
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn loads_a_directory_app() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "outpost.toml",
            "name = \"demo\"\n[vars]\nA = \"1\"",
        );
        write(dir.path(), "src/index.js", "export default {}");
        write(dir.path(), "src/add.wasm", "\0asm");
        write(dir.path(), "README.md.bak", "ignored");
        write(dir.path(), "node_modules/x/index.js", "ignored");
        write(dir.path(), ".git/config.js", "ignored");
        let b = load_app(dir.path()).unwrap();
        assert_eq!(b.main(), "src/index.js");
        let paths: Vec<_> = b.modules.keys().cloned().collect();
        assert_eq!(paths, ["src/add.wasm", "src/index.js"]);
        assert_eq!(b.modules["src/add.wasm"].kind, ModuleKind::Wasm);
        assert_eq!(b.id.len(), 64);
    }

    #[test]
    fn ids_follow_content() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "outpost.toml",
            "name = \"demo\"\nmain = \"index.js\"",
        );
        write(dir.path(), "index.js", "export default {}");
        let a = load_app(dir.path()).unwrap();
        assert_eq!(a.id, load_app(dir.path()).unwrap().id);
        write(dir.path(), "index.js", "export default { x: 1 }");
        assert_ne!(a.id, load_app(dir.path()).unwrap().id);
    }

    #[test]
    fn loads_a_single_file_with_its_siblings() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "My Worker.js",
            "import './util.js'; export default {}",
        );
        write(dir.path(), "util.js", "");
        write(dir.path(), "sub/deep.js", "");
        let b = load_app(&dir.path().join("My Worker.js")).unwrap();
        assert_eq!(b.manifest.name, "my-worker");
        assert_eq!(b.main(), "My Worker.js");
        assert!(b.modules.contains_key("util.js"));
        assert!(!b.modules.contains_key("sub/deep.js"));
    }

    #[test]
    fn explains_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_app(dir.path()).unwrap_err();
        assert!(matches!(err, BundleError::NoManifest(_)), "{err}");
        write(dir.path(), "outpost.toml", "name = \"demo\"");
        let err = load_app(dir.path()).unwrap_err();
        assert!(err.to_string().contains("src/index.js"), "{err}");
        write(dir.path(), "notes.txt", "");
        let err = load_app(&dir.path().join("notes.txt")).unwrap_err();
        assert!(matches!(err, BundleError::NotAnApp { .. }), "{err}");
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize_path("./src//a.js").unwrap(), "src/a.js");
        assert_eq!(normalize_path("src/../b.js").unwrap(), "b.js");
        assert!(normalize_path("../x.js").is_err());
        assert!(normalize_path("").is_err());
    }
}
