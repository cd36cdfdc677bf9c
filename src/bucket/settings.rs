//! What a configured bucket is: where, how it is reached, whose
//! credentials. Pure; the config module validates the keys into it and
//! [`super::store`] opens it.

use std::path::PathBuf;
use std::time::Duration;

use super::url::BucketUrl;

/// Where a role's bucket is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketConfig {
    pub url: BucketUrl,
    /// An S3-compatible server's address (`http://` or `https://`);
    /// `None`: AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    pub credentials: Credentials,
}

/// Where the bucket's credentials come from: never the TOML itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A file (mode 0600) with `access_key_id` and `secret_access_key`,
    /// joined to the config's directory.
    File(PathBuf),
    /// The standard `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`
    /// (and `AWS_SESSION_TOKEN`) of the environment.
    Environment,
}

/// How a sender keeps its folder in a bucket: a base (a whole tree) at
/// least every `every`, and the newest `keep` complete bases with the
/// bundles from the oldest of them on; older ones are removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bases {
    pub every: Duration,
    pub keep: usize,
}

impl Default for Bases {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(24 * 3600),
            keep: 2,
        }
    }
}
