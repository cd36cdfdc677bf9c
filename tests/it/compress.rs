//! `sender.compress`: whether files worth deflating are deflated. Every
//! bundle stays a standard zip; only the entries' method changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::util::*;

/// The compression method of `name` in the one bundle the receiver archived.
fn method_in_archive(env: &Env, name: &str) -> zip::CompressionMethod {
    let archived = env.archived();
    assert_eq!(archived.len(), 1, "{archived:?}");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&archived[0]).unwrap()).unwrap();
    zip.by_name(name).unwrap().compression()
}

/// A page (compressible, worth deflating) ships deflated by default to a
/// receiver whose link was measured slow, stored to one whose link is not
/// measured yet (a run's first 8 MiB measure it, stored), and stored with
/// `compress = "never"` whatever the link; the receiver applies all the
/// same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_never_ships_pages_stored_and_the_default_deflates_them_on_a_slow_link() {
    for (extra, slow, want) in [
        ("", true, zip::CompressionMethod::Deflated),
        ("", false, zip::CompressionMethod::Stored),
        (
            "compress = \"never\"\n",
            true,
            zip::CompressionMethod::Stored,
        ),
    ] {
        let env = Env::new();
        let page = "<p>the same words again and again</p>\n".repeat(2000);
        env.write("page.html", &page);
        let r = env.start_receiver("").await;
        if slow {
            remember_link(&env, r.addr, 10e6);
        }
        let s = env.start_sender(r.addr, extra);
        wait_until("the page at the receiver", || {
            std::fs::read(env.root().join("page.html")).is_ok_and(|b| b == page.as_bytes())
        })
        .await;
        wait_until("the bundle archived", || env.archived().len() == 1).await;
        s.stop().await;
        r.stop().await;
        let method = method_in_archive(&env, "page.html");
        assert_eq!(method, want, "{extra:?}, remembered slow: {slow}");
    }
}

/// Pages of words drawn at random from a small vocabulary: they deflate to
/// about half, as real pages do, neither to nothing nor not at all.
fn page(len: usize, seed: u64) -> String {
    const WORDS: [&str; 16] = [
        "shipper ",
        "bundle ",
        "<p>",
        "</p>\n",
        "receiver ",
        "the ",
        "of ",
        "page ",
        "nginx ",
        "static ",
        "<a href=\"/x\">",
        "</a> ",
        "publish ",
        "tree ",
        "and ",
        "site ",
    ];
    let bytes = noise(len / 4, seed);
    let mut out = String::with_capacity(len + 16);
    for b in bytes {
        out.push_str(WORDS[usize::from(b % 16)]);
        if out.len() >= len {
            break;
        }
    }
    out
}

/// 48 MiB of pages (more than a first bundle may hold while the link is
/// unmeasured) shipped by a sender process with the default `compress`:
/// the env, the receiver, the sender's config file and the sender.
async fn first_ship_of_pages() -> (Env, Role, std::path::PathBuf, Daemon) {
    let env = Env::new();
    for i in 0..96 {
        env.write(&format!("first/p{i:03}.html"), page(512 << 10, i));
    }
    let r = env.start_receiver("").await;
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    let sender = Daemon::start(&file, &env.path().join("sender.log"), None);
    wait_in_sync(&env).await;
    (env, r, file, sender)
}

/// Under the default, a link not measured yet gets a small first bundle,
/// stored, that goes out before the rest is packed (the packer waits up
/// to 100 ms for its measure): the bytes the receiver's TCP acknowledged
/// meanwhile measure the link, and the log says so (how fast, and whether
/// deflate pays: every file packed after it follows the measure). Before, a first ship's first bundle held up to
/// 256 MiB, all deflated before the link was measured at all; then 32 MiB,
/// deflated, which cost a fast link more CPU than it saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_not_measured_yet_is_measured_by_a_small_first_bundle() {
    let (env, r, _file, sender) = first_ship_of_pages().await;
    let pages: Vec<String> = (0..96).map(|i| format!("first/p{i:03}.html")).collect();
    let bundles = archived_holding(&env, &pages).await;
    assert!(
        bundles.len() >= 2,
        "one small first bundle, then the rest: {bundles:?}"
    );
    let (methods, unpacked) = entries_of(&bundles[0]);
    assert!(
        methods.iter().all(|m| *m == zip::CompressionMethod::Stored),
        "{methods:?}"
    );
    assert!(unpacked <= 8 << 20, "a first bundle of {unpacked} bytes");
    wait_until("the link measured, in the log", || {
        sender.log_text().contains("link measured")
    })
    .await;
    drop(sender);
    r.stop().await;
}

/// Every page of each of `bundles` that holds one of `names` is deflated
/// (`why`: what to show beside a failure).
fn assert_deflated(bundles: &[std::path::PathBuf], names: &[String], why: impl Fn() -> String) {
    let holding = |b: &&std::path::PathBuf| entry_names(b).iter().any(|n| names.contains(n));
    for bundle in bundles.iter().filter(holding) {
        let (methods, _) = entries_of(bundle);
        assert!(
            methods
                .iter()
                .all(|m| *m == zip::CompressionMethod::Deflated),
            "{methods:?} in {}: {}",
            bundle.display(),
            why()
        );
    }
}

/// The methods of a bundle's pages, and the bytes they unpack to.
fn entries_of(bundle: &std::path::Path) -> (Vec<zip::CompressionMethod>, u64) {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(bundle).unwrap()).unwrap();
    let (mut methods, mut unpacked) = (Vec::new(), 0);
    for i in 0..zip.len() {
        let e = zip.by_index(i).unwrap();
        if e.name().is_ok_and(|n| n.ends_with(".html")) {
            methods.push(e.compression());
            unpacked += e.size();
        }
    }
    assert!(!methods.is_empty(), "no page in {}", bundle.display());
    (methods, unpacked)
}

/// Forward connections on a new port to `to`, taking all the sender sends
/// at once (its TCP sees every byte acknowledged at loopback speed) and
/// passing it on at `rate` bytes per second: a TCP-terminating proxy in
/// front of a slow link. Also returns the count of bytes taken from senders.
async fn buffering_proxy(
    to: std::net::SocketAddr,
    rate: f64,
) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = Arc::new(AtomicU64::new(0));
    let counted = taken.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                continue;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                    counted.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
            tokio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    let pause = std::time::Duration::from_secs_f64(chunk.len() as f64 / rate);
                    tokio::time::sleep(pause).await;
                    if sw.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
        }
    });
    (addr, taken)
}

/// A receiver, and a sender that reaches it through [`buffering_proxy`] at
/// `rate` bytes per second, with the count of bytes the proxy took.
async fn sender_behind_proxy(env: &Env, rate: f64) -> (Role, Arc<AtomicU64>, Daemon) {
    let r = env.start_receiver("").await;
    let (proxy, taken) = buffering_proxy(r.addr, rate).await;
    let file = env.config_file("sender.toml", &env.sender_toml(&proxy.to_string(), ""));
    let sender = Daemon::start(&file, &env.path().join("sender.log"), None);
    (r, taken, sender)
}

/// Behind a proxy that ends the sender's TCP connection and buffers what it
/// sends, the sender's own measure (the bytes its TCP saw acknowledged)
/// took a slow link for loopback and stopped deflating. The receiver now
/// says how fast each bundle came as it saw it, the slower measure
/// decides, and pages packed after that are deflated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_buffering_proxy_the_receivers_measure_keeps_pages_deflated() {
    let env = Env::new();
    for i in 0..24 {
        env.write(&format!("first/p{i:03}.html"), page(512 << 10, i));
    }
    let (r, _, sender) = sender_behind_proxy(&env, 40e6).await;
    wait_in_sync(&env).await;
    wait_until("the receiver's measure, in the log", || {
        sender.log_text().contains("deflate_pays=true")
    })
    .await;
    env.write("later/p.html", page(512 << 10, 1000));
    wait_in_sync(&env).await;
    let bundles = archived_holding(&env, &["later/p.html".to_owned()]).await;
    let later = bundles.into_iter().rev().find(|b| {
        let zip = zip::ZipArchive::new(std::fs::File::open(b).unwrap()).unwrap();
        zip.file_names()
            .any(|n| n.is_ok_and(|n| n == "later/p.html"))
    });
    let (methods, _) = entries_of(&later.expect("the later page's bundle archived"));
    assert_eq!(
        methods,
        [zip::CompressionMethod::Deflated],
        "{}",
        sender.log_text()
    );
    drop(sender);
    r.stop().await;
}

/// Behind a proxy that ends the sender's TCP connection, the sender's own
/// measure of the first bundle comes at once and says loopback; the
/// receiver's comes only once the bundle crossed the slow link. Counted
/// alone meanwhile, the sender's stored every file packed until then (a
/// first ship over bench.py's slow link took 25 s instead of 19.5). It now
/// waits for the receiver's word on the same bundle, so pages packed while
/// the first bundle is still on its way are deflated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_buffering_proxy_pages_packed_before_the_receivers_measure_are_deflated() {
    let env = Env::new();
    // 8 MiB of images, stored whatever the link's measure says (on a busy
    // machine the first cut may hold only some, and the pages after it
    // would go deflated, too few bytes to wait for below): the first
    // bundle, held to that size, is among them.
    for i in 0..16 {
        env.write(&format!("first/p{i:03}.jpg"), page(512 << 10, i));
    }
    // 1 MB/s: the first bundle takes the link 8 s.
    let (r, taken, sender) = sender_behind_proxy(&env, 1e6).await;
    // Most of it: which of the pages it holds is the packer's to say.
    wait_until("the first bundle sent into the proxy", || {
        taken.load(Ordering::Relaxed) >= 7 << 20
    })
    .await;
    let later: Vec<String> = (0..4).map(|i| format!("later/p{i}.html")).collect();
    for (i, name) in later.iter().enumerate() {
        env.write(name, page(256 << 10, 2000 + i as u64));
    }
    // Still in the outbox: the receiver cannot have them for seconds.
    let outbox = env.path().join("state-s/outbox");
    let bundles = bundles_holding(|| bundles_in(&outbox), &later).await;
    assert!(
        !sender.log_text().contains("deflate_pays=false"),
        "the sender's measure counted alone: {}",
        sender.log_text()
    );
    assert_deflated(&bundles, &later, || sender.log_text());
    // The first measure said is the link's, not the proxy's buffers'.
    wait_until_within(
        "the first bundle measured",
        std::time::Duration::from_secs(60),
        || sender.log_text().contains("link measured"),
    )
    .await;
    let log = sender.log_text();
    let first = log.lines().find(|l| l.contains("link measured")).unwrap();
    let rate: f64 = first
        .split("mb_per_s=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .expect(first);
    assert!(rate <= 2.0, "{first}");
    drop(sender);
    r.stop().await;
}

/// A restarted sender remembers how fast its links were measured (in
/// `state_dir/link-rates.json`): the first bundle after the restart is cut
/// as large as the limits allow, and its pages are deflated only if the
/// remembered rate says deflate pays. Before, a restart forgot every link:
/// its first bundle was held small (32 MiB then) and deflated, even on
/// loopback, until a bundle measured the link again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sender_remembers_how_fast_its_link_was() {
    let (env, r, file, sender) = first_ship_of_pages().await;
    wait_until("the link measured, and remembered", || {
        sender.log_text().contains("link measured")
            && env.path().join("state-s/link-rates.json").exists()
    })
    .await;
    // Killed, as a crash or a reboot would: what it measured is on disk.
    drop(sender);
    // 48 MiB more, settled before the restart finds it: one bundle, unless
    // the first is held small.
    let settled = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    for i in 0..96 {
        let name = format!("second/p{i:03}.html");
        env.write(&name, page(512 << 10, 1000 + i));
        let f = std::fs::File::options()
            .write(true)
            .open(env.src().join(&name));
        f.unwrap().set_modified(settled).unwrap();
    }
    let sender = Daemon::start(&file, &env.path().join("restarted.log"), None);
    wait_in_sync(&env).await;
    let log = sender.log_text();
    let remembered = log
        .lines()
        .find(|l| l.contains("link rate remembered"))
        .unwrap_or_else(|| panic!("no remembered rate in the log:\n{log}"));
    let pages: Vec<String> = (0..96).map(|i| format!("second/p{i:03}.html")).collect();
    let bundles = archived_holding(&env, &pages).await;
    let first = bundles.iter().find(|b| {
        let zip = zip::ZipArchive::new(std::fs::File::open(b).unwrap()).unwrap();
        zip.file_names()
            .any(|n| n.is_ok_and(|n| n.starts_with("second/")))
    });
    let first = first.expect("the restarted sender's bundles archived");
    let (methods, unpacked) = entries_of(first);
    assert!(
        unpacked > 32 << 20,
        "the first bundle after the restart, {}, held {unpacked} bytes",
        first.display()
    );
    let want = if remembered.contains("deflate_pays=false") {
        zip::CompressionMethod::Stored
    } else {
        zip::CompressionMethod::Deflated
    };
    assert!(
        methods.iter().all(|m| *m == want),
        "{remembered}: {methods:?}"
    );
    drop(sender);
    r.stop().await;
}

/// A `link-rates.json` that cannot be read (cut short by a full disk,
/// edited by hand) costs one warning naming it, and the sender starts and
/// ships as if it remembered nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_link_rates_file_is_warned_of_once_and_ignored() {
    let env = Env::new();
    let rates = env.path().join("state-s/link-rates.json");
    std::fs::write(&rates, b"{\"links\": [{\"receiver\": ").unwrap();
    env.write("page.html", page(64 << 10, 1));
    let r = env.start_receiver("").await;
    let file = env.config_file("sender.toml", &env.sender_toml(&r.addr.to_string(), ""));
    let sender = Daemon::start(&file, &env.path().join("sender.log"), None);
    wait_in_sync(&env).await;
    let log = sender.log_text();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&*rates.to_string_lossy()))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("link rates"), "{}", warned[0]);
    drop(sender);
    r.stop().await;
}

/// The 8 MiB a sender stores for a link not measured yet are spent by
/// what its runs store, across runs: with one of two receivers away (so
/// nothing measures its link, and its bundles wait in the outbox), a first
/// ship of 8 MiB of pages goes stored, and the pages of a later run go
/// deflated, though that link is still not measured. (Unspent, the later
/// run's first 8 MiB would be stored too, and so every run's while the
/// receiver is away.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bytes_stored_for_a_link_not_measured_are_spent_across_runs() {
    let env = Env::new();
    let first: Vec<String> = (0..16).map(|i| format!("first/p{i:03}.html")).collect();
    for (i, name) in first.iter().enumerate() {
        env.write(name, page(512 << 10, 3000 + i as u64));
    }
    let r1 = env.start_receiver("").await;
    // The first receiver's link remembered fast by both measures, so that
    // a measure of it taken on a busy machine cannot turn deflate on by
    // itself: what stores or deflates is the budget's doing.
    remember_link_storing(&env, r1.addr, 1e9);
    let toml = env.sender_toml_to(&[r1.addr, free_addr()], "");
    let sender = env.start_sender_from(r1.addr, &toml);
    let outbox = env.path().join("state-s/outbox");
    wait_until("the outbox made", || outbox.is_dir()).await;
    let firsts = bundles_holding(|| bundles_in(&outbox), &first).await;
    let methods: Vec<_> = firsts.iter().flat_map(|b| entries_of(b).0).collect();
    assert!(
        methods.iter().all(|m| *m == zip::CompressionMethod::Stored),
        "the first 8 MiB, stored: {methods:?}"
    );
    let later: Vec<String> = (0..4).map(|i| format!("later/p{i}.html")).collect();
    for (i, name) in later.iter().enumerate() {
        env.write(name, page(512 << 10, 4000 + i as u64));
    }
    let bundles = bundles_holding(|| bundles_in(&outbox), &later).await;
    assert_deflated(&bundles, &later, String::new);
    sender.stop().await;
    r1.stop().await;
}
