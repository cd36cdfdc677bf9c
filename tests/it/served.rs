//! A receiver's tree served by a real nginx whose workers run as another
//! user (www-data): what the permission policy (`receiver.file_mode`,
//! `dir_mode`, `group`), shipped directories and shipped symlinks let a
//! web server answer.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::util::*;
use crate::web::Nginx;

/// Write `rel` in the source with `mode` (the CMS's umask).
fn write_with_mode(env: &Env, rel: &str, body: &str, mode: u32) {
    env.write(rel, body);
    let p = env.src().join(rel);
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Ship a 0640 page in a 0700 directory through a receiver configured with
/// `policy`, and serve root through nginx.
async fn serve_private_page(policy: &str) -> (Env, Nginx) {
    let env = Env::new();
    write_with_mode(&env, "private/page.html", "<p>hello</p>", 0o640);
    std::fs::set_permissions(
        env.src().join("private"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let r = env.start_receiver(policy).await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    s.stop().await;
    r.stop().await;
    let web_dir = env.path().join("nginx");
    std::fs::create_dir_all(&web_dir).unwrap();
    let web = Nginx::serve(&env.root(), &web_dir, env.path());
    (env, web)
}

/// A page the CMS wrote 0640 (in a 0700 directory) arrived 0640 owned by
/// shipper's user, and nginx, another user, answered 403: by default the
/// receiver now gives files 0644 and directories 0755.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_page_in_the_source_is_served_with_the_default_policy() {
    let (env, web) = serve_private_page("").await;
    assert_eq!(
        web.get("private/page.html"),
        (200, b"<p>hello</p>".to_vec()),
        "{}",
        web.error_log()
    );
    let mode = |rel: &str| std::fs::metadata(env.root().join(rel)).unwrap().mode() & 0o7777;
    assert_eq!(mode("private/page.html"), 0o644);
    assert_eq!(mode("private"), 0o755);
}

/// `file_mode = "mirror"` and `dir_mode = "mirror"` keep today's
/// behaviour: the page arrives as private as it was, and nginx is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_private_page_is_forbidden_to_the_web_server() {
    let (env, web) = serve_private_page("file_mode = \"mirror\"\ndir_mode = \"mirror\"\n").await;
    assert_eq!(web.get("private/page.html").0, 403);
    let md = std::fs::metadata(env.root().join("private/page.html")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o640);
}

/// `group = "www-data"` with `file_mode = "0640"`: the page is readable by
/// the web server's group and nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_given_the_web_servers_group_is_served_and_private_to_others() {
    let (env, web) =
        serve_private_page("file_mode = \"0640\"\ndir_mode = \"0750\"\ngroup = \"www-data\"\n")
            .await;
    assert_eq!(
        web.get("private/page.html"),
        (200, b"<p>hello</p>".to_vec())
    );
    let www_data = nix::unistd::Group::from_name("www-data").unwrap().unwrap();
    for (rel, mode) in [("private/page.html", 0o640), ("private", 0o750)] {
        let md = std::fs::metadata(env.root().join(rel)).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.gid()),
            (mode, www_data.gid.as_raw()),
            "{rel}"
        );
    }
}

/// A group that does not exist is refused when the receiver starts,
/// naming the key, before anything is shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_with_an_unknown_group_refuses_to_start_naming_the_key() {
    let env = Env::new();
    let cfg = env
        .config(&env.receiver_toml("127.0.0.1:0", "group = \"no-such-group-shipper\"\n"))
        .receiver
        .unwrap();
    let e = match shipper::receiver::Receiver::bind(cfg).await {
        Ok(_) => panic!("a receiver with an unknown group started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("receiver.group = \"no-such-group-shipper\""),
        "{e}"
    );
    let out = shipper(&[
        "run",
        "--config",
        env.config_file(
            "r.toml",
            &env.receiver_toml("127.0.0.1:0", "file_mode = \"rw-r--r--\"\n"),
        )
        .to_str()
        .unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("receiver.file_mode"), "{}", text(&out));
}
