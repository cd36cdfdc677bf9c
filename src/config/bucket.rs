//! The bucket keys both roles take (`bucket`, `bucket_endpoint`,
//! `bucket_region`, `bucket_credentials`), validated into a
//! [`BucketConfig`] (a type of the bucket module, which knows nothing of
//! config files). Pure: the credentials file is read when the bucket is
//! opened ([`crate::bucket::store`]), never here.

use std::path::Path;

use crate::bucket::settings::{BucketConfig, Credentials};
use crate::bucket::url::BucketUrl;

/// The region a bucket is in unless `bucket_region` says otherwise (most
/// S3-compatible servers accept any).
pub const DEFAULT_BUCKET_REGION: &str = "us-east-1";

/// The four keys as written, under `table` (`sender` or `receiver`).
pub(super) struct RawBucket<'a> {
    pub(super) table: &'a str,
    pub(super) bucket: Option<&'a str>,
    pub(super) endpoint: Option<&'a str>,
    pub(super) region: Option<&'a str>,
    pub(super) credentials: Option<&'a Path>,
}

/// The bucket the keys configure, `None` without `bucket`; a key set
/// without `bucket` is refused, as is an endpoint that is no URL.
pub(super) fn validate(raw: RawBucket<'_>, base: &Path) -> Result<Option<BucketConfig>, String> {
    let t = raw.table;
    let Some(bucket) = raw.bucket else {
        let stray = [
            ("bucket_endpoint", raw.endpoint.is_some()),
            ("bucket_region", raw.region.is_some()),
            ("bucket_credentials", raw.credentials.is_some()),
        ];
        return match stray.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(format!("{t}.{key} is set but {t}.bucket is not")),
            None => Ok(None),
        };
    };
    let url = BucketUrl::parse(bucket).map_err(|e| format!("{t}.bucket: {e}"))?;
    if let Some(e) = raw.endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        return Err(format!(
            "{t}.bucket_endpoint = {e:?}: an address such as \"https://s3.example.net\" or \"http://127.0.0.1:9000\""
        ));
    }
    Ok(Some(BucketConfig {
        url,
        endpoint: raw.endpoint.map(|e| e.trim_end_matches('/').to_owned()),
        region: raw.region.unwrap_or(DEFAULT_BUCKET_REGION).to_owned(),
        credentials: raw.credentials.map_or(Credentials::Environment, |p| {
            Credentials::File(base.join(p))
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(bucket: Option<&'a str>, endpoint: Option<&'a str>) -> RawBucket<'a> {
        RawBucket {
            table: "receiver",
            bucket,
            endpoint,
            region: None,
            credentials: Some(Path::new("s3.creds")),
        }
    }

    #[test]
    fn a_bucket_is_read_with_its_endpoint_and_credentials_file() {
        let b = validate(
            raw(Some("s3://site/www"), Some("http://127.0.0.1:9000/")),
            Path::new("/etc/shipper"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(b.url.to_string(), "s3://site/www");
        assert_eq!(b.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(b.region, DEFAULT_BUCKET_REGION);
        assert_eq!(
            b.credentials,
            Credentials::File("/etc/shipper/s3.creds".into())
        );
    }

    #[test]
    fn bucket_keys_without_a_bucket_or_a_bad_endpoint_are_named() {
        let e = validate(raw(None, None), Path::new("/")).unwrap_err();
        assert_eq!(
            e,
            "receiver.bucket_credentials is set but receiver.bucket is not"
        );
        let e = validate(
            raw(Some("s3://site/www"), Some("127.0.0.1:9000")),
            Path::new("/"),
        )
        .unwrap_err();
        assert!(
            e.starts_with("receiver.bucket_endpoint = \"127.0.0.1:9000\""),
            "{e}"
        );
        let e = validate(raw(Some("site/www"), None), Path::new("/")).unwrap_err();
        assert!(e.starts_with("receiver.bucket: "), "{e}");
        let none = RawBucket {
            credentials: None,
            ..raw(None, None)
        };
        assert_eq!(validate(none, Path::new("/")), Ok(None));
    }
}
