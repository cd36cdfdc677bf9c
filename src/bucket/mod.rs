//! The bucket relay: bundles kept in an S3-compatible object store, where
//! any number of receivers take them, the sender knowing none of them.
//!
//! Pure parts: where a bucket is ([`url::BucketUrl`], [`settings`]), what its objects are
//! named ([`names`]), the seal that makes a bundle object trusted
//! whatever else can write to the bucket ([`seal`]), where a sender's
//! uploads go and when its bases are due ([`bases`]), and what a receiver
//! takes next ([`follow`]). I/O: the client for a configured bucket
//! ([`store`]), and reading its sealed bundles ([`fetch`]).

pub mod bases;
pub mod fetch;
pub mod follow;
pub mod names;
pub mod seal;
pub mod settings;
pub mod store;
pub mod url;
