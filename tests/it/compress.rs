//! `sender.compress`: whether files worth deflating are deflated. Every
//! bundle stays a standard zip; only the entries' method changes.

use crate::util::*;

/// The compression method of `name` in the one bundle the receiver archived.
fn method_in_archive(env: &Env, name: &str) -> zip::CompressionMethod {
    let archived = env.archived();
    assert_eq!(archived.len(), 1, "{archived:?}");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&archived[0]).unwrap()).unwrap();
    zip.by_name(name).unwrap().compression()
}

/// A page (compressible, worth deflating) ships deflated by default, whose
/// receiver's link is not measured yet, and stored with `compress = "never"`;
/// the receiver applies both the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compress_never_ships_pages_stored_and_the_default_deflates_them() {
    for (extra, want) in [
        ("", zip::CompressionMethod::Deflated),
        ("compress = \"never\"\n", zip::CompressionMethod::Stored),
    ] {
        let env = Env::new();
        let page = "<p>the same words again and again</p>\n".repeat(2000);
        env.write("page.html", &page);
        let r = env.start_receiver("").await;
        let s = env.start_sender(r.addr, extra);
        wait_until("the page at the receiver", || {
            std::fs::read(env.root().join("page.html")).is_ok_and(|b| b == page.as_bytes())
        })
        .await;
        wait_until("the bundle archived", || env.archived().len() == 1).await;
        s.stop().await;
        r.stop().await;
        assert_eq!(method_in_archive(&env, "page.html"), want, "{extra:?}");
    }
}
