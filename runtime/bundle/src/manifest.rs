//! `outpost.toml`: the app's manifest as its developer writes it.
//!
//! ```toml
//! name = "hello"                 # required: [a-z0-9_-], 1..=63 characters
//! main = "src/index.js"          # the module whose default export handles requests
//! compatibility_date = "2026-11-01"
//!
//! routes = ["api.example.com/*", "example.com/v1/*"]   # besides NAME.localhost
//!
//! [vars]                         # plain bindings, visible to the handler as `env.NAME`
//! GREETING = "hello"
//! LIMITS = { max = 3 }           # tables and arrays arrive as JSON objects and arrays
//!
//! certificates = ["certs/example.pem"]   # TLS for the app's hosts: chain + key, PEM
//!
//! [limits]                       # each at most the node's value; see `Limits`
//! cpu_ms = 50
//!
//! [cache]                        # the node's HTTP cache in front of the handler
//! enabled = true                 # store responses that declare themselves storable
//! purge_on_deploy = true         # a new version starts with an empty cache
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::AppLimits;
use crate::route::Route;
use crate::BundleError;

/// The file name of an app's manifest inside its directory.
pub const MANIFEST_FILE: &str = "outpost.toml";

/// The main module used when `outpost.toml` names none.
pub const DEFAULT_MAIN: &str = "src/index.js";

/// An app's manifest (`outpost.toml`). Unknown keys are an error, so a typo never passes
/// silently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The app's name: lower-case letters, digits, `-` and `_`, at most 63 characters. It
    /// prefixes the app's console output and names its deployments.
    pub name: String,
    /// Path of the main module, relative to the app directory, `/`-separated. Its default
    /// export (`export default { fetch }`) or its `fetch` event listener handles requests.
    #[serde(default = "default_main")]
    pub main: String,
    /// The date (`YYYY-MM-DD`) whose runtime behaviour the app was written against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compatibility_date: Option<String>,
    /// Plain-text or JSON bindings handed to the handler as `env`. Nothing else from the
    /// node's environment ever reaches `env`.
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Where the app answers, as `HOST/PATH` patterns (`api.example.com/*`,
    /// `example.com/v1/*`, `*.example.com/*`, `example.com/health`); the most specific
    /// matching route of all apps on a node wins. Every app also answers on
    /// `NAME.localhost`, and a node with one app and no routes sends it every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Resource limits for this app; each may lower the node's limit, never raise it.
    #[serde(default, skip_serializing_if = "AppLimits::is_empty")]
    pub limits: AppLimits,
    /// TLS certificates the app brings for its hosts: `.pem` files (a chain, leaf first,
    /// and its private key) relative to the app directory. They travel with the app to
    /// every PoP, which serves them by SNI on its HTTPS listener; each names only hosts the
    /// app's routes cover. Only listed `.pem` files enter the bundle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<String>,
    /// How the node's HTTP cache treats the app's responses.
    #[serde(default, skip_serializing_if = "CacheSettings::is_default")]
    pub cache: CacheSettings,
    /// The app's base URL, like Deno's `--location`: an absolute `http:` or `https:` URL.
    /// With it, the global scope has `location` (a `WorkerLocation`), relative URLs given to
    /// `fetch`, `new Request` and `Response.redirect` resolve against it, and blob URLs get
    /// its origin. Without it (the default, as in Workers) there is no `location` and a
    /// relative URL is a `TypeError`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// `[cache]`: the node's HTTP cache in front of the app's handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Whether responses that declare themselves storable by a shared cache (`public` with
    /// `max-age`, `s-maxage`, or `CDN-Cache-Control`) are stored and reused. With `false`,
    /// every request reaches the handler (`Cache-Status: Outpost; fwd=bypass`); the Cache
    /// API works either way.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Whether activating a new version of the app empties its cache (the Cache API's
    /// entries included).
    #[serde(default = "yes")]
    pub purge_on_deploy: bool,
}

fn yes() -> bool {
    true
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: true,
            purge_on_deploy: true,
        }
    }
}

impl CacheSettings {
    pub fn is_default(&self) -> bool {
        *self == CacheSettings::default()
    }
}

/// Most certificates one app may bring.
pub const MAX_CERTIFICATES: usize = 16;

fn default_main() -> String {
    DEFAULT_MAIN.to_string()
}

impl Manifest {
    /// Parses and validates the text of an `outpost.toml`.
    pub fn from_toml(text: &str) -> Result<Self, BundleError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| BundleError::Manifest(e.message().to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// A manifest for a single-file app: named after the file, with that file as main.
    pub fn for_single_file(name: &str, main: &str) -> Self {
        Manifest {
            name: sanitize_name(name),
            main: main.to_string(),
            compatibility_date: None,
            vars: BTreeMap::new(),
            routes: Vec::new(),
            limits: AppLimits::default(),
            certificates: Vec::new(),
            cache: CacheSettings::default(),
            location: None,
        }
    }

    /// Checks the rules each field's documentation states.
    pub fn validate(&self) -> Result<(), BundleError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(BundleError::Manifest(format!(
                "name {:?} must be 1 to 63 characters of a-z, 0-9, '-' and '_'",
                self.name
            )));
        }
        crate::normalize_path(&self.main)
            .map_err(|why| BundleError::Manifest(format!("main {:?}: {why}", self.main)))?;
        if let Some(date) = &self.compatibility_date {
            let valid = date.len() == 10
                && date.bytes().enumerate().all(|(i, b)| match i {
                    4 | 7 => b == b'-',
                    _ => b.is_ascii_digit(),
                });
            if !valid {
                return Err(BundleError::Manifest(format!(
                    "compatibility_date {date:?} must be a date like \"2026-11-01\""
                )));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for pattern in &self.routes {
            let route = Route::parse(pattern)
                .map_err(|why| BundleError::Manifest(format!("routes: {pattern:?}: {why}")))?;
            if !seen.insert(route.to_string()) {
                return Err(BundleError::Manifest(format!(
                    "routes: {pattern:?} is listed twice"
                )));
            }
        }
        self.limits.validate().map_err(BundleError::Manifest)?;
        if self.certificates.len() > MAX_CERTIFICATES {
            return Err(BundleError::Manifest(format!(
                "certificates: {} listed; at most {MAX_CERTIFICATES}",
                self.certificates.len()
            )));
        }
        let mut listed = std::collections::BTreeSet::new();
        for path in &self.certificates {
            let normal = crate::normalize_path(path)
                .map_err(|why| BundleError::Manifest(format!("certificates: {path:?}: {why}")))?;
            if normal != *path || !path.ends_with(".pem") {
                return Err(BundleError::Manifest(format!(
                    "certificates: {path:?} must be a normalized path to a .pem file"
                )));
            }
            if !listed.insert(path) {
                return Err(BundleError::Manifest(format!(
                    "certificates: {path:?} is listed twice"
                )));
            }
        }
        if let Some(location) = &self.location {
            let parsed = url::Url::parse(location).map_err(|e| {
                BundleError::Manifest(format!("location {location:?} is not a URL: {e}"))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
                return Err(BundleError::Manifest(format!(
                    "location {location:?} must be an absolute http: or https: URL"
                )));
            }
        }
        for key in self.vars.keys() {
            let valid = !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !key.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(BundleError::Manifest(format!(
                    "vars.{key}: a binding name must be a JavaScript identifier (letters, digits, '_')"
                )));
            }
        }
        Ok(())
    }
}

impl Manifest {
    /// The app's routes, parsed (validation has already accepted each).
    pub fn parsed_routes(&self) -> Vec<Route> {
        self.routes
            .iter()
            .filter_map(|p| Route::parse(p).ok())
            .collect()
    }
}

/// Turns a file stem into a valid app name (`Hello World.js` → `hello-world`).
fn sanitize_name(stem: &str) -> String {
    let mut name: String = stem
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .take(63)
        .collect();
    if name.is_empty() {
        name.push_str("app");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::from_toml(
            r#"
            name = "json-api"
            main = "src/index.js"
            compatibility_date = "2026-11-01"
            [vars]
            GREETING = "hi"
            LIMITS = { max = 3 }
            "#,
        )
        .unwrap();
        assert_eq!(m.name, "json-api");
        assert_eq!(m.vars["GREETING"], serde_json::json!("hi"));
        assert_eq!(m.vars["LIMITS"], serde_json::json!({"max": 3}));
    }

    #[test]
    fn main_defaults_to_src_index() {
        let m = Manifest::from_toml("name = \"a\"").unwrap();
        assert_eq!(m.main, DEFAULT_MAIN);
    }

    #[test]
    fn rejects_unknown_keys_with_their_name() {
        let err = Manifest::from_toml("name = \"a\"\nmian = \"x.js\"").unwrap_err();
        assert!(err.to_string().contains("mian"), "{err}");
    }

    #[test]
    fn rejects_bad_names_dates_and_paths() {
        assert!(Manifest::from_toml("name = \"Bad Name\"").is_err());
        assert!(Manifest::from_toml("name = \"a\"\ncompatibility_date = \"yesterday\"").is_err());
        assert!(Manifest::from_toml("name = \"a\"\nmain = \"../escape.js\"").is_err());
        assert!(Manifest::from_toml("name = \"a\"\n[vars]\n\"1x\" = \"v\"").is_err());
    }

    #[test]
    fn takes_an_absolute_http_location_only() {
        let m = Manifest::from_toml("name = \"a\"\nlocation = \"https://a.example/x\"").unwrap();
        assert_eq!(m.location.as_deref(), Some("https://a.example/x"));
        for bad in [
            "/relative",
            "ftp://a.example/",
            "data:text/plain,x",
            "not a url",
        ] {
            let err =
                Manifest::from_toml(&format!("name = \"a\"\nlocation = \"{bad}\"")).unwrap_err();
            assert!(err.to_string().contains("location"), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_routes_and_limits() {
        let m = Manifest::from_toml(
            "name = \"a\"\nroutes = [\"api.example.com/*\"]\n[limits]\ncpu_ms = 50\nmemory_mb = 64",
        )
        .unwrap();
        assert_eq!(m.parsed_routes()[0].to_string(), "api.example.com/*");
        assert_eq!(m.limits.cpu_ms, Some(50));
        assert_eq!(m.limits.memory_mb, Some(64));
    }

    #[test]
    fn explains_bad_routes_and_limits() {
        let err = Manifest::from_toml("name = \"a\"\nroutes = [\"https://x.com/*\"]").unwrap_err();
        assert!(
            err.to_string().contains("routes: \"https://x.com/*\""),
            "{err}"
        );
        let err =
            Manifest::from_toml("name = \"a\"\nroutes = [\"x.com/*\", \"X.com/*\"]").unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let err = Manifest::from_toml("name = \"a\"\n[limits]\ncpu_ms = 0").unwrap_err();
        assert!(err.to_string().contains("limits.cpu_ms"), "{err}");
        let err = Manifest::from_toml("name = \"a\"\n[limits]\ncpu = 5").unwrap_err();
        assert!(err.to_string().contains("cpu"), "{err}");
    }

    #[test]
    fn single_file_names_are_sanitized() {
        assert_eq!(
            Manifest::for_single_file("Hello World", "h.js").name,
            "hello-world"
        );
    }
}
