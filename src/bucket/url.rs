//! A bucket as configured: `s3://BUCKET/PREFIX`. Pure.

use std::fmt;

/// Where a sender puts its bundles and receivers take them: a bucket and
/// the prefix (possibly empty) under which shipper owns every object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketUrl {
    pub bucket: String,
    /// Without leading or trailing `/`; empty: the whole bucket.
    pub prefix: String,
}

/// Why a configured bucket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BucketUrlError {
    #[error("a bucket is written s3://BUCKET/PREFIX; {0:?} does not start with s3://")]
    Scheme(String),
    #[error("{0:?} names no bucket")]
    NoBucket(String),
    #[error("{0:?}: a bucket name has 3 to 63 characters, lowercase letters, digits, '.' and '-'")]
    BucketName(String),
    #[error("{url:?}: the prefix may not hold {part:?} (empty, '.' or '..' parts)")]
    Prefix { url: String, part: String },
}

impl BucketUrl {
    pub fn parse(s: &str) -> Result<Self, BucketUrlError> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| BucketUrlError::Scheme(s.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BucketUrlError::NoBucket(s.to_owned()));
        }
        let name_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !name_ok {
            return Err(BucketUrlError::BucketName(s.to_owned()));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty()
            && let Some(part) = prefix
                .split('/')
                .find(|p| p.is_empty() || *p == "." || *p == "..")
        {
            return Err(BucketUrlError::Prefix {
                url: s.to_owned(),
                part: part.to_owned(),
            });
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        })
    }

    /// `rel` under the prefix, as an object key.
    pub fn key(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_owned()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }
}

impl fmt::Display for BucketUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_and_its_prefix_are_read_and_written_back() {
        let u = BucketUrl::parse("s3://site-bundles/www/").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.prefix.as_str()),
            ("site-bundles", "www")
        );
        assert_eq!(u.to_string(), "s3://site-bundles/www");
        assert_eq!(u.key("b/1.zip"), "www/b/1.zip");
        let bare = BucketUrl::parse("s3://site-bundles").unwrap();
        assert_eq!(bare.key("b/1.zip"), "b/1.zip");
        assert_eq!(bare.to_string(), "s3://site-bundles");
    }

    #[test]
    fn what_is_not_a_bucket_is_refused_with_the_reason() {
        use BucketUrlError::*;
        let err = |s: &str| BucketUrl::parse(s).unwrap_err();
        assert!(matches!(err("https://x/y"), Scheme(_)));
        assert!(matches!(err("s3:///www"), NoBucket(_)));
        assert!(matches!(err("s3://Site/www"), BucketName(_)));
        assert!(matches!(err("s3://ab/www"), BucketName(_)));
        assert!(matches!(err("s3://site/a//b"), Prefix { .. }));
        assert!(matches!(err("s3://site/a/../b"), Prefix { .. }));
    }
}
