//! Integration tests: real sockets on 127.0.0.1, real temp trees, the real
//! binary for the command line. Conditions are polled with deadlines.

mod bucket;
mod bundles;
mod cli;
mod compress;
mod deltas;
mod durability;
mod edges;
mod faults;
mod fixtures;
mod fuzz_found;
mod hardening;
mod hooks;
mod hostile;
mod liveness;
mod operate;
mod parts;
mod peers;
mod places;
mod rate;
mod reuse;
mod rollback;
mod s3;
mod served;
mod snapshots;
mod source;
mod streams;
mod sync;
mod tls;
mod tree;
mod util;
mod verify;
mod web;
