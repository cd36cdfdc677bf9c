//! Nothing lost across restarts: the sender's acknowledged state, catch-up,
//! and the receiver's recovery.

use crate::util::*;

fn newest_manifest(env: &Env) -> shipper::bundle::Manifest {
    let newest = env.archived().pop().expect("an archived bundle");
    shipper::bundle::apply::open(&newest).unwrap().manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sender_ships_only_what_changed_while_it_was_down() {
    let env = Env::new();
    for i in 0..50 {
        env.write(&format!("pages/p{i}.html"), format!("page {i}"));
    }
    let r = env.start_receiver("").await;
    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    // Let the last acknowledgement reach the ledger before stopping.
    let acked = env.archived().len();
    wait_until("all bundles acknowledged", || {
        std::fs::read_dir(env.path().join("state-s/outbox"))
            .map(|d| d.count() == 0)
            .unwrap_or(false)
    })
    .await;
    s.stop().await;

    // While the sender is down: one modified, one deleted, one new.
    env.write("pages/p3.html", "page 3, edited while down");
    std::fs::remove_file(env.src().join("pages/p4.html")).unwrap();
    env.write("new/while-down.html", "new");

    let s = env.start_sender(r.addr, "");
    wait_in_sync(&env).await;
    wait_until("catch-up bundle archived", || env.archived().len() > acked).await;
    assert_eq!(
        env.archived().len(),
        acked + 1,
        "catch-up took more than one bundle"
    );
    let m = newest_manifest(&env);
    let mut files: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    files.sort();
    assert_eq!(
        files,
        ["new/while-down.html", "pages/p3.html"],
        "re-shipped unchanged files"
    );
    assert_eq!(m.deletions, ["pages/p4.html"]);
    s.stop().await;
    r.stop().await;
}
