//! The route table: which app answers a request, by its host and path. One immutable
//! [`RouteTable`] is built per change of the node's apps and swapped in atomically
//! ([`Routes`]); requests read it without locks.
//!
//! An app answers:
//! 1. on its `routes` (`outpost.toml`); the most specific matching route of all apps wins;
//! 2. on `NAME.localhost`;
//! 3. on every host, when it is the node's only app and has no routes.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use outpost_bundle::Route;
use outpost_pool::Deployment;

/// What serves an app now.
#[derive(Clone)]
pub enum Target {
    /// Its current version.
    Serving(Deployment),
    /// No version of it loads; the text says why.
    Broken(Arc<str>),
}

/// One app in the table.
#[derive(Clone)]
pub struct AppEntry {
    /// Shared, not copied, by every request's outcome (its metrics, log line and trace).
    pub name: Arc<str>,
    pub routes: Vec<Route>,
    pub target: Target,
}

impl AppEntry {
    /// An app served by `deployment`, on the routes of its manifest.
    pub fn serving(name: impl Into<Arc<str>>, deployment: Deployment) -> AppEntry {
        AppEntry {
            name: name.into(),
            routes: deployment.bundle().manifest.parsed_routes(),
            target: Target::Serving(deployment),
        }
    }
}

/// Two apps claim the same route.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("route {route} is claimed by both {first} and {second}")]
pub struct DuplicateRoute {
    pub route: String,
    pub first: String,
    pub second: String,
}

/// Which app answers which requests. Immutable; see [`Routes`] for the current one.
#[derive(Default)]
pub struct RouteTable {
    apps: Vec<AppEntry>,
    /// Routes with an exact host, by host, most specific first: (route, app index).
    exact: HashMap<String, Vec<(Route, usize)>>,
    /// Routes with a wildcard host, most specific first.
    wildcard: Vec<(Route, usize)>,
    /// App index by name, for `NAME.localhost`.
    by_name: HashMap<String, usize>,
    /// The app answering every host: the only app, when it has no routes.
    fallback: Option<usize>,
}

/// The suffix that names an app by itself: `NAME.localhost`.
const LOCALHOST: &str = ".localhost";

impl RouteTable {
    /// Builds a table; fails if two apps claim the same route (or the same name).
    pub fn new(apps: Vec<AppEntry>) -> Result<RouteTable, DuplicateRoute> {
        let mut table = RouteTable::default();
        let mut owners: HashMap<String, usize> = HashMap::new();
        for (index, app) in apps.iter().enumerate() {
            if let Some(&first) = table.by_name.get(&*app.name) {
                return Err(DuplicateRoute {
                    route: format!("{}{LOCALHOST}/*", app.name),
                    first: apps[first].name.to_string(),
                    second: app.name.to_string(),
                });
            }
            table.by_name.insert(app.name.to_string(), index);
            for route in &app.routes {
                let key = route.to_string();
                if let Some(&first) = owners.get(&key) {
                    return Err(DuplicateRoute {
                        route: key,
                        first: apps[first].name.to_string(),
                        second: app.name.to_string(),
                    });
                }
                owners.insert(key, index);
                match route.exact_host() {
                    Some(host) => table
                        .exact
                        .entry(host.to_string())
                        .or_default()
                        .push((route.clone(), index)),
                    None => table.wildcard.push((route.clone(), index)),
                }
            }
        }
        for list in table.exact.values_mut() {
            list.sort_by_key(|(route, _)| std::cmp::Reverse(route.specificity()));
        }
        table
            .wildcard
            .sort_by_key(|(route, _)| std::cmp::Reverse(route.specificity()));
        if apps.len() == 1 && apps[0].routes.is_empty() {
            table.fallback = Some(0);
        }
        table.apps = apps;
        Ok(table)
    }

    /// The app for a request to `host` (as sent: any case, maybe with a port) and `path`.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&AppEntry> {
        let host = host_without_port(host);
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let routed = self
            .exact
            .get(host)
            .and_then(|list| list.iter().find(|(route, _)| route.matches(host, path)))
            .or_else(|| {
                self.wildcard
                    .iter()
                    .find(|(route, _)| route.matches(host, path))
            })
            .map(|(_, index)| *index);
        let index = routed
            .or_else(|| {
                host.strip_suffix(LOCALHOST)
                    .and_then(|name| self.by_name.get(name).copied())
            })
            .or(self.fallback)?;
        self.apps.get(index)
    }

    /// Every app in the table.
    pub fn apps(&self) -> &[AppEntry] {
        &self.apps
    }
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal: `[::1]:8080`.
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    })
}

/// The node's current route table, swapped atomically when its apps change.
pub struct Routes {
    current: ArcSwap<RouteTable>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            current: ArcSwap::from_pointee(RouteTable::default()),
        }
    }
}

impl Routes {
    /// The table in force now.
    pub fn current(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// Makes `table` the one in force for the next requests.
    pub fn swap(&self, table: RouteTable) {
        self.current.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, routes: &[&str]) -> AppEntry {
        AppEntry {
            name: name.into(),
            routes: routes.iter().map(|r| Route::parse(r).unwrap()).collect(),
            target: Target::Broken(name.into()),
        }
    }

    fn name<'a>(table: &'a RouteTable, host: &str, path: &str) -> Option<&'a str> {
        table.lookup(host, path).map(|a| &*a.name)
    }

    #[test]
    fn the_most_specific_route_wins() {
        let table = RouteTable::new(vec![
            app("site", &["example.com/*"]),
            app("api", &["example.com/v1/*", "api.example.com/*"]),
            app("health", &["example.com/v1/health"]),
            app("subs", &["*.example.com/*"]),
        ])
        .unwrap();
        assert_eq!(name(&table, "example.com", "/"), Some("site"));
        assert_eq!(name(&table, "example.com:8080", "/v1/users"), Some("api"));
        assert_eq!(name(&table, "EXAMPLE.com", "/v1/health"), Some("health"));
        assert_eq!(name(&table, "api.example.com", "/x"), Some("api"));
        assert_eq!(name(&table, "www.example.com", "/x"), Some("subs"));
        assert_eq!(name(&table, "other.dev", "/"), None);
    }

    #[test]
    fn apps_answer_on_their_localhost_name() {
        let table = RouteTable::new(vec![app("a", &[]), app("b", &["b.dev/*"])]).unwrap();
        assert_eq!(name(&table, "a.localhost:8787", "/"), Some("a"));
        assert_eq!(name(&table, "b.localhost", "/"), Some("b"));
        assert_eq!(name(&table, "127.0.0.1:8787", "/"), None);
    }

    #[test]
    fn a_lone_app_without_routes_answers_every_host() {
        let table = RouteTable::new(vec![app("only", &[])]).unwrap();
        assert_eq!(name(&table, "anything.example", "/"), Some("only"));
        let table = RouteTable::new(vec![app("only", &["x.dev/*"])]).unwrap();
        assert_eq!(name(&table, "anything.example", "/"), None);
    }

    #[test]
    fn duplicate_routes_name_both_apps() {
        let err = RouteTable::new(vec![app("a", &["x.dev/*"]), app("b", &["X.dev/*"])])
            .err()
            .unwrap();
        assert_eq!(err.to_string(), "route x.dev/* is claimed by both a and b");
    }

    #[test]
    fn strips_ports_and_ipv6_brackets() {
        assert_eq!(host_without_port("a.dev:80"), "a.dev");
        assert_eq!(host_without_port("[::1]:80"), "::1");
        assert_eq!(host_without_port("a.dev"), "a.dev");
    }
}
