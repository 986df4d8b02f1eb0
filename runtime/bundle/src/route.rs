//! Route patterns: where on the network an app answers.
//!
//! A pattern is `HOST/PATH` as in Workers routes:
//!
//! | pattern | matches |
//! |---|---|
//! | `example.com/*` | every path on `example.com` |
//! | `example.com/v1/*` | `/v1`, `/v1/`, `/v1/users`, ... on `example.com` |
//! | `example.com/health` | exactly `/health` on `example.com` |
//! | `*.example.com/*` | every subdomain of `example.com` (not `example.com` itself) |
//!
//! Hosts are matched without the port and case-insensitively. When several routes match a
//! request, the most specific wins: an exact host before a wildcard host, then an exact path
//! before a prefix, then the longer prefix.

use std::fmt;

/// One parsed route pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    host: HostPattern,
    path: PathPattern,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostPattern {
    /// `example.com`
    Exact(String),
    /// `*.example.com`, stored as `.example.com`
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PathPattern {
    /// `/health`
    Exact(String),
    /// `/v1/*`, stored as `/v1` (matches `/v1` and everything under `/v1/`); `/*` is `""`.
    Prefix(String),
}

/// How specific a matching route is; larger wins (fields compare in declaration order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    exact_host: bool,
    host_len: usize,
    exact_path: bool,
    path_len: usize,
}

impl Route {
    /// Parses `HOST/PATH`; the error says what is wrong with the pattern.
    pub fn parse(pattern: &str) -> Result<Route, String> {
        let pattern = pattern.trim();
        if pattern.contains("://") {
            return Err("leave out the scheme: write `example.com/*`, not a URL".into());
        }
        let (host, path) = match pattern.find('/') {
            Some(slash) => (&pattern[..slash], &pattern[slash..]),
            None => return Err("add a path: `example.com/*` for every path of a host".into()),
        };
        let host = host.to_ascii_lowercase();
        let host = if let Some(rest) = host.strip_prefix("*.") {
            valid_host(rest)?;
            HostPattern::Suffix(format!(".{rest}"))
        } else {
            valid_host(&host)?;
            HostPattern::Exact(host)
        };
        if path.contains('?') || path.contains('#') {
            return Err("a route matches paths only, not query strings or fragments".into());
        }
        let path = match path.strip_suffix('*') {
            Some(prefix) => {
                if prefix.contains('*') {
                    return Err("`*` is allowed only at the end of the path".into());
                }
                PathPattern::Prefix(prefix.trim_end_matches('/').to_string())
            }
            None => {
                if path.contains('*') {
                    return Err("`*` is allowed only at the end of the path".into());
                }
                PathPattern::Exact(path.to_string())
            }
        };
        Ok(Route { host, path })
    }

    /// Whether a TLS certificate name (`shop.example.com`, or a wildcard `*.example.com`)
    /// names only hosts this route serves: an app may bring certificates for its own hosts.
    pub fn covers_certificate_name(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match &self.host {
            HostPattern::Exact(h) => *h == name,
            HostPattern::Suffix(s) => match name.strip_prefix('*') {
                Some(rest) => rest == s,
                None => name.len() > s.len() && name.ends_with(s.as_str()),
            },
        }
    }

    /// Whether a request for `host` (no port, lower-case) and `path` matches.
    pub fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = match &self.host {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        };
        host_ok
            && match &self.path {
                PathPattern::Exact(p) => p == path,
                PathPattern::Prefix(p) => {
                    p.is_empty()
                        || path
                            .strip_prefix(p.as_str())
                            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
                }
            }
    }

    /// The host this route names exactly, if it is not a wildcard.
    pub fn exact_host(&self) -> Option<&str> {
        match &self.host {
            HostPattern::Exact(h) => Some(h),
            HostPattern::Suffix(_) => None,
        }
    }

    /// How specific this route is, to choose among several that match.
    pub fn specificity(&self) -> Specificity {
        let (exact_host, host_len) = match &self.host {
            HostPattern::Exact(h) => (true, h.len()),
            HostPattern::Suffix(s) => (false, s.len()),
        };
        let (exact_path, path_len) = match &self.path {
            PathPattern::Exact(p) => (true, p.len()),
            PathPattern::Prefix(p) => (false, p.len()),
        };
        Specificity {
            exact_host,
            host_len,
            exact_path,
            path_len,
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPattern::Exact(h) => f.write_str(h)?,
            HostPattern::Suffix(s) => write!(f, "*{s}")?,
        }
        match &self.path {
            PathPattern::Exact(p) => f.write_str(p),
            PathPattern::Prefix(p) => write!(f, "{p}/*"),
        }
    }
}

fn valid_host(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{host:?} is not a host name (letters, digits, '-', dots; a leading `*.` for subdomains; no port)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &str) -> Route {
        Route::parse(p).unwrap()
    }

    #[test]
    fn matches_hosts_and_paths() {
        assert!(r("example.com/*").matches("example.com", "/"));
        assert!(r("example.com/*").matches("example.com", "/a/b"));
        assert!(!r("example.com/*").matches("api.example.com", "/"));
        assert!(r("example.com/v1/*").matches("example.com", "/v1"));
        assert!(r("example.com/v1/*").matches("example.com", "/v1/users"));
        assert!(!r("example.com/v1/*").matches("example.com", "/v10"));
        assert!(r("example.com/health").matches("example.com", "/health"));
        assert!(!r("example.com/health").matches("example.com", "/health/x"));
        assert!(r("*.example.com/*").matches("a.example.com", "/"));
        assert!(!r("*.example.com/*").matches("example.com", "/"));
        assert!(r("Example.COM/*").matches("example.com", "/"));
    }

    #[test]
    fn more_specific_routes_rank_higher() {
        let exact_host = r("api.example.com/*").specificity();
        let wildcard = r("*.example.com/*").specificity();
        let prefix = r("example.com/v1/*").specificity();
        let root = r("example.com/*").specificity();
        let exact_path = r("example.com/v1").specificity();
        assert!(exact_host > wildcard);
        assert!(prefix > root);
        assert!(exact_path > prefix);
    }

    #[test]
    fn refuses_malformed_patterns() {
        for bad in [
            "https://example.com/*",
            "example.com",
            "example.com:8080/*",
            "/x/*",
            "ex ample.com/*",
            "example.com/a*/b",
            "example.com/*?q",
        ] {
            assert!(Route::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn displays_normalized() {
        assert_eq!(r("Example.com/v1/*").to_string(), "example.com/v1/*");
        assert_eq!(r("*.x.dev/*").to_string(), "*.x.dev/*");
    }
}
