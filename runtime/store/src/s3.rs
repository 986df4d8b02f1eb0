//! Blobs in S3-compatible object storage, shared by several origin processes. A blob is one
//! object, `[PREFIX/]blobs/<sha256>`, written whole by one PUT, so a crash never leaves a
//! partial one under its name; bytes are checked against their digest before they go up.

use std::str::FromStr;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, RetryConfig};

use crate::blobs::{check_digest, verify};
use crate::StoreError;

/// Blobs in an S3 bucket.
pub struct S3Blobs {
    store: AmazonS3,
    prefix: Path,
    /// The location without credentials, for messages.
    display: String,
}

impl S3Blobs {
    /// The bucket (and optional key prefix) that `url` names:
    /// `s3://BUCKET[/PREFIX][?endpoint=URL&region=R&…]`. Query parameters are object_store's
    /// S3 options (`endpoint`, `region`, `virtual_hosted_style_request`, …); an `http://`
    /// endpoint is allowed as is. Credentials come from the environment
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, …), never from
    /// the URL.
    pub fn open(url: &str) -> Result<S3Blobs, StoreError> {
        let bad = |why: String| StoreError::BadLocation(format!("--blobs {url}: {why}"));
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        if parsed.scheme() != "s3" {
            return Err(bad("expected s3://BUCKET[/PREFIX][?endpoint=…]".into()));
        }
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| bad("no bucket".into()))?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(30),
                ..RetryConfig::default()
            });
        let mut region_set = std::env::var_os("AWS_REGION").is_some()
            || std::env::var_os("AWS_DEFAULT_REGION").is_some();
        for (key, value) in parsed.query_pairs() {
            let key = AmazonS3ConfigKey::from_str(&key)
                .map_err(|_| bad(format!("unknown S3 option {key:?}")))?;
            if matches!(key, AmazonS3ConfigKey::Endpoint) && value.starts_with("http://") {
                builder = builder.with_allow_http(true);
            }
            if matches!(key, AmazonS3ConfigKey::Region) {
                region_set = true;
            }
            builder = builder.with_config(key, value.into_owned());
        }
        if !region_set {
            builder = builder.with_region("us-east-1");
        }
        let store = builder.build().map_err(|e| bad(e.to_string()))?;
        let prefix = Path::from(parsed.path().trim_matches('/'));
        let mut display = parsed.clone();
        display.set_query(None);
        Ok(S3Blobs {
            store,
            prefix,
            display: display.to_string(),
        })
    }

    fn path_of(&self, digest: &str) -> Path {
        self.prefix.child("blobs").child(digest)
    }

    fn error(&self, digest: &str, e: object_store::Error) -> StoreError {
        StoreError::Unavailable(format!("{} blob {digest}: {e}", self.display))
    }

    /// Stores `bytes` under `digest`, refusing bytes that do not hash to it. Always one
    /// whole PUT: storing again what is there rewrites the same bytes (and heals a damaged
    /// copy); clients skip blobs the origin already has anyway.
    pub async fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        verify(digest, bytes)?;
        self.store
            .put(
                &self.path_of(digest),
                PutPayload::from(bytes::Bytes::copy_from_slice(bytes)),
            )
            .await
            .map_err(|e| self.error(digest, e))?;
        Ok(())
    }

    /// The bytes under `digest`, if stored.
    pub async fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_digest(digest)?;
        match self.store.get(&self.path_of(digest)).await {
            Ok(result) => {
                let bytes = result.bytes().await.map_err(|e| self.error(digest, e))?;
                Ok(Some(bytes.to_vec()))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(digest, e)),
        }
    }

    /// Whether `digest` is stored.
    pub async fn has(&self, digest: &str) -> Result<bool, StoreError> {
        check_digest(digest)?;
        match self.store.head(&self.path_of(digest)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(digest, e)),
        }
    }
}
