//! `sender.max_rate`: the bytes a sender puts on each connection per
//! second, and the config it refuses because the five-minute promise could
//! not hold at that rate.

use std::time::{Duration, Instant};

use crate::util::*;

/// Small enough bundles that 1 MiB/s passes one within the window (a full
/// 256 MiB bundle would not).
const SLOW: &str =
    "interval = \"4m\"\nmax_rate = \"1MiB\"\nchunk_size = \"4MiB\"\nmax_bundle_size = \"16MiB\"\n";

/// 3 MiB at `max_rate = "1MiB"` takes at least 2.5 s from `shipper flush`
/// to the acknowledgement (on loopback it takes milliseconds unlimited),
/// arrives whole, and `shipper status` shows the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_at_max_rate_takes_at_least_its_bytes_over_the_rate_and_arrives_whole() {
    let env = Env::new();
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, SLOW);
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), SLOW));
    env.write("big.bin", noise(3 << 20, 12));
    let status = wait_status(&file, "the file pending", |v| v["pending_paths"] == 1).await;
    assert_eq!(status["max_rate"], 1 << 20, "{status}");
    let human = shipper_async(owned(&["status", "--config", file.to_str().unwrap()])).await;
    assert!(
        text(&human).contains("1 MiB/s per receiver"),
        "{}",
        text(&human)
    );

    let started = Instant::now();
    let out = shipper_async(owned(&[
        "flush",
        "--config",
        file.to_str().unwrap(),
        "--timeout",
        "30s",
    ]))
    .await;
    let took = started.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        took >= Duration::from_millis(2500),
        "3 MiB at 1 MiB/s acknowledged after {took:?}"
    );
    wait_in_sync(&env).await;
    s.stop().await;
    r.stop().await;
}

/// A bundle of `max_bundle_size` that cannot pass at `max_rate` within
/// `max_delay` less one interval is refused at start, naming both keys and
/// the figures.
#[test]
fn a_rate_too_slow_for_the_largest_bundle_is_refused_naming_the_keys() {
    let env = Env::new();
    // The default 256 MiB bundle takes 8m 32s at 512 KiB/s.
    let toml = env.sender_toml("127.0.0.1:7700", "max_rate = \"512KiB\"\n");
    let file = env.config_file("slow.toml", &toml);
    let e = shipper::config::Config::load(&file)
        .expect_err("a rate too slow for the window accepted")
        .to_string();
    assert!(
        e.contains("slow.toml")
            && e.contains("sender.max_rate = \"512KiB\"")
            && e.contains("sender.max_bundle_size")
            && e.contains("8m 32s"),
        "{e}"
    );
    // Bundles small enough for the rate are accepted.
    let fits = format!("{toml}chunk_size = \"4MiB\"\nmax_bundle_size = \"64MiB\"\n");
    let c = shipper::config::Config::load(&env.config_file("fits.toml", &fits)).unwrap();
    assert_eq!(c.sender.unwrap().max_rate, Some(512 << 10));
}
