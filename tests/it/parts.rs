//! Part sets on the receiver: the parts of a large file received so far,
//! kept across bundles. Their state grows by a line per part, and a set no
//! bundle adds to for `part_ttl` is removed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use shipper::bundle::apply::{self, Target};
use shipper::bundle::pack::{Limits, Packed};

use crate::util::*;

/// Pack every file of `src` into as many bundles as `limits` need.
fn pack_all(src: &Path, outbox: &Path, limits: Limits) -> Vec<Packed> {
    pack_items(src, outbox, "test", 1, limits, upserts(src))
}

/// The one file of a part set's state in `dir`: everything but its data.
fn state_file(dir: &Path) -> PathBuf {
    let states: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_none_or(|e| e != "data"))
        .collect();
    assert_eq!(states.len(), 1, "{states:?}");
    states.into_iter().next().unwrap()
}

/// The state of a part set was rewritten whole for every part (temp file,
/// fsync, rename), each time with every hash so far: storing N parts cost
/// O(N²) bytes and 2N fsyncs of growing files.
#[test]
fn a_part_sets_state_grows_by_a_line_per_part_and_is_never_rewritten() {
    let env = Env::new();
    let content = noise(40_000, 7);
    env.write("big.bin", &content);
    // Parts of 4 KiB, one per bundle.
    let bundles = pack_all(
        &env.src(),
        &env.path().join("out"),
        Limits::new(4096, 8192, 100),
    );
    assert!(bundles.len() >= 8, "{} bundles", bundles.len());
    let staging = apply::sibling_staging(&env.root());
    let target = Target {
        parts: env.path().join("parts"),
        root: env.root(),
        staging,
        policy: Default::default(),
        keep: None,
        snapshot: false,
    };
    target.prepare().unwrap();
    let dir = env.path().join("parts/from-test");
    let (mut before, mut inode, mut stored) = (Vec::new(), None, 0);
    for (i, b) in bundles.iter().enumerate() {
        shipper::commands::replay(
            &target,
            &apply::Limits::default(),
            std::slice::from_ref(&b.path),
        )
        .unwrap();
        if i + 1 == bundles.len() {
            break; // complete: published and its set dropped
        }
        stored += b.summary.parts as usize;
        let state = state_file(&dir);
        let after = std::fs::read(&state).unwrap();
        assert!(after.starts_with(&before), "part {stored}: state rewritten");
        // A line naming the set's file, then one per part.
        let lines = after.iter().filter(|&&c| c == b'\n').count();
        assert_eq!(lines, 1 + stored, "part {stored}");
        let ino = std::fs::metadata(&state).unwrap().ino();
        assert_eq!(
            *inode.get_or_insert(ino),
            ino,
            "part {stored}: state replaced"
        );
        before = after;
    }
    assert!(stored >= 7, "{stored} parts stored before the last");
    assert_eq!(std::fs::read(env.root().join("big.bin")).unwrap(), content);
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "set left behind"
    );
}

fn age(path: &Path, by: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - by).unwrap();
}

/// A part set whose sender never finished it (the file was removed, the
/// sender's state lost) stayed in state_dir forever, data and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_part_set_older_than_part_ttl_is_removed() {
    let env = Env::new();
    let dir = env.path().join("state-r/parts/from-test");
    std::fs::create_dir_all(&dir).unwrap();
    let two_hours = Duration::from_secs(7200);
    for name in ["old1.parts", "old1.data", "legacy1.json", "legacy1.data"] {
        std::fs::write(dir.join(name), "x").unwrap();
        age(&dir.join(name), two_hours);
    }
    // Fresh, and not shipper's: both stay.
    for name in ["fresh1.parts", "fresh1.data"] {
        std::fs::write(dir.join(name), "x").unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    age(&dir.join("notes.txt"), two_hours);
    let names = || {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let r = env.start_receiver("part_ttl = \"1h\"\n").await;
    assert_eq!(names(), ["fresh1.data", "fresh1.parts", "notes.txt"]);

    // While it runs, sets going stale are removed as bundles come in.
    for name in ["fresh1.parts", "fresh1.data"] {
        age(&dir.join(name), two_hours);
    }
    let s = env.start_sender(r.addr, "");
    env.write("a.html", "A");
    wait_in_sync(&env).await;
    wait_until("the stale set removed", || names() == ["notes.txt"]).await;
    s.stop().await;
    r.stop().await;
}
