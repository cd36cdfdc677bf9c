//! Findings of the code audit: what an attacker or a race could make the
//! sender or receiver do.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::util::*;

/// A directory swapped for a symlink between the walk and the read made the
/// sender read through the link: a file outside `source` (a key, say) could
/// be published into the web root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_symlink_never_ships_what_lies_outside_source() {
    let env = Env::new();
    let outside = env.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("page.html"), "SECRET-KEY-MATERIAL").unwrap();
    env.write("d/page.html", "public page");
    env.write("index.html", "home");
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "settle = \"50ms\"\n");
    wait_in_sync(&env).await;

    // Swap src/d for a symlink to the outside and back, again and again.
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (src, outside, stop) = (env.src(), outside.clone(), stop.clone());
        std::thread::spawn(move || {
            let (d, real) = (src.join("d"), src.join("d.real"));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                std::fs::rename(&d, &real).unwrap();
                std::os::unix::fs::symlink(&outside, &d).unwrap();
                std::thread::sleep(Duration::from_millis(3));
                std::fs::remove_file(&d).unwrap();
                std::fs::rename(&real, &d).unwrap();
                // Keep the page changing so it is packed again and again.
                if n.is_multiple_of(20) {
                    std::fs::write(d.join("page.html"), format!("public page {n}")).unwrap();
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let end = Instant::now() + Duration::from_secs(8);
    let leaked = |env: &Env| {
        tree(&env.root())
            .values()
            .chain(
                env.archived()
                    .iter()
                    .map(|p| std::fs::read(p).unwrap())
                    .collect::<Vec<_>>()
                    .iter(),
            )
            .any(|c| c.windows(6).any(|w| w == b"SECRET"))
    };
    while Instant::now() < end {
        assert!(
            !leaked(&env),
            "a file from outside source reached the receiver"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    wait_in_sync(&env).await;
    assert!(
        !leaked(&env),
        "a file from outside source reached the receiver"
    );
    s.stop().await;
    r.stop().await;
}
