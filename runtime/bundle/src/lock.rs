//! The locked bundle: what an origin stores and a PoP loads, as opposed to the `outpost.toml`
//! people write. It names every module by path, kind, size and SHA-256, and carries the
//! resolved manifest (routes, limits, vars, compatibility date). Its serialization is
//! deterministic (fields in a fixed order, maps sorted, no whitespace), and the version id of
//! an app is the SHA-256 of those bytes: the same app always locks to the same id.
//!
//! ```json
//! {"schema":1,"name":"hello","main":"src/index.js","compatibility_date":"2026-11-01",
//!  "routes":["hello.example/*"],"limits":{"cpu_ms":50},"vars":{"GREETING":"hi"},
//!  "modules":[{"path":"src/index.js","kind":"javascript","size":87,"sha256":"…"}]}
//! ```
//!
//! Compatibility: a reader refuses a lock whose `schema` is newer than it knows (it could
//! misread it), and ignores fields it does not know in a lock of its own schema (a newer
//! writer may add optional ones; a change that must not be ignored raises the schema).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::limits::AppLimits;
use crate::manifest::CacheSettings;
use crate::{BundleError, Manifest, ModuleKind};

/// The newest lock schema this build reads and the one it writes.
pub const LOCK_SCHEMA: u32 = 1;

/// One module of a locked bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedModule {
    /// Bundle-relative, `/`-separated path.
    pub path: String,
    /// How importing it behaves.
    pub kind: ModuleKind,
    /// Its length in bytes.
    pub size: u64,
    /// Hex SHA-256 of its bytes; the blob's name in stores.
    pub sha256: String,
}

/// A locked bundle: the manifest resolved, and every module by digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lock {
    /// The format's version ([`LOCK_SCHEMA`] when written by this build).
    pub schema: u32,
    pub name: String,
    pub main: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility_date: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    #[serde(default, skip_serializing_if = "AppLimits::is_empty")]
    pub limits: AppLimits,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Sorted by path.
    pub modules: Vec<LockedModule>,
    /// The modules that are the app's TLS certificates (kind `certificate`), as listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
    /// `[cache]`, when it differs from the defaults.
    #[serde(default, skip_serializing_if = "CacheSettings::is_default")]
    pub cache: CacheSettings,
    /// The app's base URL (`location`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

impl Lock {
    /// The lock of a manifest and its modules (path → kind, bytes' digest and size).
    pub fn new<'a>(
        manifest: &Manifest,
        modules: impl IntoIterator<Item = (&'a str, ModuleKind, u64, &'a str)>,
    ) -> Lock {
        let mut modules: Vec<LockedModule> = modules
            .into_iter()
            .map(|(path, kind, size, sha256)| LockedModule {
                path: path.to_string(),
                kind,
                size,
                sha256: sha256.to_string(),
            })
            .collect();
        modules.sort_by(|a, b| a.path.cmp(&b.path));
        Lock {
            schema: LOCK_SCHEMA,
            name: manifest.name.clone(),
            main: manifest.main.clone(),
            compatibility_date: manifest.compatibility_date.clone(),
            routes: manifest.routes.clone(),
            limits: manifest.limits.clone(),
            vars: manifest
                .vars
                .iter()
                .map(|(name, value)| (name.clone(), canonical(value)))
                .collect(),
            modules,
            certificates: manifest.certificates.clone(),
            cache: manifest.cache,
            location: manifest.location.clone(),
        }
    }

    /// The canonical bytes: compact JSON, fields in declaration order, every map sorted by
    /// key (objects nested in vars too: [`Lock::new`] sorts them, whichever map type
    /// `serde_json` was built with).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The version id: hex SHA-256 of [`Lock::to_bytes`].
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.to_bytes()))
    }

    /// Reads a lock, refusing a newer schema and checking what a manifest would be checked
    /// for (a lock can come from anywhere).
    pub fn from_bytes(bytes: &[u8]) -> Result<Lock, BundleError> {
        #[derive(Deserialize)]
        struct Schema {
            schema: u32,
        }
        let schema: Schema = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::Lock(format!("not a locked bundle: {e}")))?;
        if schema.schema > LOCK_SCHEMA || schema.schema == 0 {
            return Err(BundleError::Lock(format!(
                "the bundle is locked with schema {}, and this Outpost reads schema {LOCK_SCHEMA} \
                 at most: upgrade Outpost to load it",
                schema.schema
            )));
        }
        let mut lock: Lock = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::Lock(format!("invalid locked bundle: {e}")))?;
        // Whatever order the sender's objects were in, the lock is canonical from here on.
        for value in lock.vars.values_mut() {
            *value = canonical(value);
        }
        if lock.modules.len() > crate::MAX_MODULES {
            return Err(BundleError::TooLarge(format!(
                "{} modules; at most {}",
                lock.modules.len(),
                crate::MAX_MODULES
            )));
        }
        let total: u64 = lock.modules.iter().map(|m| m.size).sum();
        if total > crate::MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge(format!(
                "{total} bytes of modules; at most {}",
                crate::MAX_BUNDLE_BYTES
            )));
        }
        lock.manifest().validate()?;
        let mut previous: Option<&str> = None;
        for module in &lock.modules {
            crate::normalize_path(&module.path)
                .ok()
                .filter(|normal| *normal == module.path)
                .ok_or_else(|| {
                    BundleError::Lock(format!("module path {:?} is not normalized", module.path))
                })?;
            let digest_ok = module.sha256.len() == 64
                && module
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !digest_ok {
                return Err(BundleError::Lock(format!(
                    "module {}: sha256 must be 64 lower-case hex digits",
                    module.path
                )));
            }
            if previous.is_some_and(|p| p >= module.path.as_str()) {
                return Err(BundleError::Lock(
                    "modules must be sorted by path, each once".to_string(),
                ));
            }
            previous = Some(&module.path);
        }
        if !lock.modules.iter().any(|m| m.path == lock.main) {
            return Err(BundleError::MissingMain(lock.main.clone()));
        }
        Ok(lock)
    }

    /// The manifest this lock resolves.
    pub fn manifest(&self) -> Manifest {
        Manifest {
            name: self.name.clone(),
            main: self.main.clone(),
            compatibility_date: self.compatibility_date.clone(),
            vars: self.vars.clone(),
            routes: self.routes.clone(),
            limits: self.limits.clone(),
            certificates: self.certificates.clone(),
            cache: self.cache,
            location: self.location.clone(),
        }
    }
}

/// `value` with the keys of every object in sorted order.
fn canonical(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), canonical(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(canonical).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> Lock {
        let mut manifest = Manifest::for_single_file("demo", "src/index.js");
        manifest
            .vars
            .insert("B".into(), serde_json::json!({"z": 1, "a": 2}));
        manifest.vars.insert("A".into(), serde_json::json!("x"));
        let digest = "ab".repeat(32);
        Lock::new(
            &manifest,
            [
                ("src/index.js", ModuleKind::JavaScript, 10, digest.as_str()),
                ("src/add.wasm", ModuleKind::Wasm, 8, digest.as_str()),
            ],
        )
    }

    #[test]
    fn serializes_canonically() {
        let text = String::from_utf8(lock().to_bytes()).unwrap();
        assert!(text.starts_with(r#"{"schema":1,"name":"demo","main":"src/index.js","vars":{"A":"x","B":{"a":2,"z":1}},"modules":[{"path":"src/add.wasm""#), "{text}");
        assert_eq!(Lock::from_bytes(text.as_bytes()).unwrap(), lock());
        assert_eq!(lock().id(), lock().id());
    }

    #[test]
    fn refuses_a_newer_schema_and_tolerates_unknown_fields() {
        let text = String::from_utf8(lock().to_bytes()).unwrap();
        let newer = text.replacen(r#""schema":1"#, r#""schema":2"#, 1);
        let err = Lock::from_bytes(newer.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid locked bundle: the bundle is locked with schema 2, and this Outpost reads \
             schema 1 at most: upgrade Outpost to load it"
        );
        let extra = text.replacen(r#""schema":1"#, r#""schema":1,"future_hint":"x""#, 1);
        assert_eq!(Lock::from_bytes(extra.as_bytes()).unwrap(), lock());
    }

    #[test]
    fn checks_what_it_reads() {
        let mut bad = lock();
        bad.modules[0].sha256 = "xyz".into();
        let err = Lock::from_bytes(&bad.to_bytes()).unwrap_err();
        assert!(err.to_string().contains("64 lower-case hex"), "{err}");
        let mut bad = lock();
        bad.modules.reverse();
        let err = Lock::from_bytes(&bad.to_bytes()).unwrap_err();
        assert!(err.to_string().contains("sorted"), "{err}");
        let mut bad = lock();
        bad.modules[1].path = "../escape.js".into();
        assert!(Lock::from_bytes(&bad.to_bytes()).is_err());
        let mut bad = lock();
        bad.main = "src/other.js".into();
        let err = Lock::from_bytes(&bad.to_bytes()).unwrap_err();
        assert!(err.to_string().contains("src/other.js"), "{err}");
    }
}
