//! Opening a configured bucket: an `object_store` client for it, with its
//! credentials read from their file or the environment. The only I/O in
//! this module is reading that file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::{ClientOptions, ObjectStore};
use serde::Deserialize;

use super::settings::{BucketConfig, Credentials};

/// The longest one request may take, body included: a bundle of 4 GiB
/// (the receivers' default limit) at 7 MB/s, or a 16 MiB part at 28 kB/s.
/// object_store's default (30 s) failed every large bundle on a slow link
/// at every attempt; a server that goes silent holds a request this long.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Why a bucket could not be opened; each names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("bucket credentials {path}: {error}")]
    Credentials { path: String, error: String },
    #[error(
        "no credentials for {url}: set bucket_credentials, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
    )]
    NoCredentials { url: String },
    #[error("{url}: {error}")]
    Client { url: String, error: String },
}

/// A credentials file: TOML, mode 0600.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

fn read_credentials(path: &Path) -> Result<CredentialsFile, OpenError> {
    let err = |error: String| OpenError::Credentials {
        path: path.display().to_string(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(err(format!(
            "readable by others (mode {:o}): chmod 600 it",
            mode & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    toml::from_str(&text).map_err(|e| err(e.message().to_owned()))
}

/// A configured bucket's client, and whose credentials it uses.
pub struct Opened {
    pub store: Arc<dyn ObjectStore>,
    /// The access key and where it came from, as errors name them (never
    /// the secret).
    pub who: String,
}

impl Opened {
    /// `e`, naming the credentials when the server refused them.
    pub fn explain(&self, e: &object_store::Error) -> String {
        match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                format!("the bucket refused {}: {e}", self.who)
            }
            _ => e.to_string(),
        }
    }
}

/// A client for `cfg`'s bucket. Blocking (it may read the credentials
/// file): call it at start, off the runtime or before it.
pub fn open(cfg: &BucketConfig) -> Result<Opened, OpenError> {
    let url = cfg.url.to_string();
    let who;
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&cfg.url.bucket)
        .with_region(&cfg.region)
        .with_client_options(ClientOptions::new().with_timeout(REQUEST_TIMEOUT));
    match &cfg.credentials {
        Credentials::File(path) => {
            let c = read_credentials(path)?;
            who = format!("access key {} (from {})", c.access_key_id, path.display());
            b = b
                .with_access_key_id(c.access_key_id)
                .with_secret_access_key(c.secret_access_key);
            if let Some(t) = c.session_token {
                b = b.with_token(t);
            }
        }
        Credentials::Environment => {
            let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
            if !(set("AWS_ACCESS_KEY_ID") && set("AWS_SECRET_ACCESS_KEY")) {
                return Err(OpenError::NoCredentials { url });
            }
            let id = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
            who = format!("access key {id} (from AWS_ACCESS_KEY_ID)");
        }
    }
    if let Some(endpoint) = &cfg.endpoint {
        // An S3-compatible server: addressed by path (bucket in the path,
        // not the host name), plain HTTP only where configured so.
        b = b
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    let store = b.build().map_err(|e| OpenError::Client {
        url,
        error: e.to_string(),
    })?;
    Ok(Opened {
        store: Arc::new(store),
        who,
    })
}
