//! The host side of the Workers Cache API (`js/30_cache.js`, ops in extensions.rs):
//! `match`, `put` and `delete` on the app's scope of the node's cache. The argument checks
//! Workers makes with a TypeError are made in JS, before these run.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use deno_core::convert::ByteString;
use deno_core::{CancelHandle, OpState};
use deno_error::JsErrorBox;
use http_body_util::BodyExt;
use outpost_cache::api::CacheScope;

use crate::body::{stream_response, RequestBodyResource};
use crate::exchange::build_response;
use crate::extensions::header_map;
use crate::extensions::{CacheHost, CacheMatch, CachePut, HeaderPairs, LocalFuture};

/// What an isolate's Cache API works on: its app's scope of the node's cache.
pub struct CacheApi {
    pub scope: CacheScope,
    /// How long a stream being put may produce nothing before it fails.
    pub stream_idle: Duration,
}

fn invalid_url() -> JsErrorBox {
    JsErrorBox::type_error("Invalid URL. Cache API keys must be fully-qualified, valid URLs.")
}

/// The key request: a GET of `url` (an absolute http(s) URL) with `headers`.
fn key_request(url: &str, headers: HeaderPairs) -> Result<http::request::Parts, JsErrorBox> {
    let uri: http::Uri = url.parse().map_err(|_| invalid_url())?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(invalid_url());
    }
    let mut request = http::Request::get(uri)
        .body(())
        .map_err(|_| invalid_url())?;
    *request.headers_mut() = header_map(headers);
    Ok(request.into_parts().0)
}

impl CacheHost for CacheApi {
    fn lookup(
        &self,
        state: Rc<RefCell<OpState>>,
        name: Option<String>,
        url: String,
        headers: HeaderPairs,
    ) -> LocalFuture<Result<Option<CacheMatch>, JsErrorBox>> {
        let scope = self.scope.clone();
        Box::pin(async move {
            let request = key_request(&url, headers)?;
            let Some(response) = scope.lookup(name.as_deref(), &request).await else {
                return Ok(None);
            };
            let (head, body) = response.into_parts();
            let headers = head
                .headers
                .iter()
                .map(|(n, v)| (ByteString::from(n.as_str()), ByteString::from(v.as_bytes())))
                .collect();
            let null_body = matches!(head.status.as_u16(), 101 | 103 | 204 | 205 | 304 | 416);
            let rid = (!null_body).then(|| {
                state
                    .borrow_mut()
                    .resource_table
                    .add(RequestBodyResource::new(body))
            });
            Ok(Some(CacheMatch {
                status: head.status.as_u16(),
                headers,
                rid,
            }))
        })
    }

    fn put(
        &self,
        state: Rc<RefCell<OpState>>,
        put: CachePut,
    ) -> LocalFuture<Result<(), JsErrorBox>> {
        let scope = self.scope.clone();
        let idle = self.stream_idle;
        Box::pin(async move {
            let body = match put.rid {
                Some(rid) => {
                    let resource =
                        state
                            .borrow_mut()
                            .resource_table
                            .take_any(rid)
                            .map_err(|e| {
                                JsErrorBox::type_error(format!("response body stream: {e}"))
                            })?;
                    stream_response(resource, (), Rc::new(CancelHandle::new()), idle)
                }
                None => http_body_util::Full::new(Bytes::from(put.bytes.unwrap_or_default()))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            };
            let request = key_request(&put.url, put.request_headers)?;
            let response = build_response(put.status, header_map(put.headers), body);
            scope
                .put(put.name.as_deref(), &request, response)
                .await
                .map_err(|e| {
                    JsErrorBox::type_error(format!("Cache.put: reading the body failed: {e}"))
                })
        })
    }

    fn delete(&self, name: Option<String>, url: String) -> Result<bool, JsErrorBox> {
        let request = key_request(&url, Vec::new())?;
        Ok(self.scope.delete(name.as_deref(), &request))
    }

    fn delete_cache(&self, name: String) -> bool {
        self.scope.delete_cache(&name)
    }

    fn keys(&self, name: Option<String>) -> Vec<String> {
        self.scope.keys(name.as_deref())
    }
}
