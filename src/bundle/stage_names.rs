//! Where each file a bundle stages sits in its stage directory: the `i`th
//! of a kind as `{letter}{i}`, the first [`PER_DIR`] of a kind in the stage
//! directory itself and each next [`PER_DIR`] in a directory of their own,
//! `{letter}-{k}` (a name no staged file has). Pure: names only; the apply
//! makes the directories (`unpack::make_stage_dirs`).
//!
//! Why not all in one directory: creating a file in a directory, and
//! renaming one out of it, searches a block of the directory's entries for
//! its name and for room, and in a directory of a bundle's 10,000 files
//! those searches took 12% of a receiver's time on a tree of 100,000 small
//! files (bench/tree.py, `perf record` of the receiver). In a directory
//! of [`PER_DIR`] names each search is one short block.

use std::path::PathBuf;

/// At most this many staged files of one kind share a directory.
pub(super) const PER_DIR: usize = 64;

/// What a staged file is made from; each kind is numbered on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StagedKind {
    /// A whole file unpacked from the bundle.
    File,
    /// A copy of a file root holds.
    Copy,
    /// A file rebuilt from a delta.
    Delta,
    /// A file a part set completed.
    Part,
    /// A symlink.
    Link,
}

impl StagedKind {
    fn letter(self) -> char {
        match self {
            StagedKind::File => 'f',
            StagedKind::Copy => 'c',
            StagedKind::Delta => 'd',
            StagedKind::Part => 'p',
            StagedKind::Link => 'l',
        }
    }

    /// The name of the `i`th file of this kind, in its directory.
    pub(super) fn name(self, i: usize) -> String {
        format!("{}{i}", self.letter())
    }

    /// The directory the `i`th file of this kind sits in, below the stage
    /// directory; `None`: the stage directory itself.
    pub(super) fn dir(self, i: usize) -> Option<String> {
        let k = i / PER_DIR;
        (k > 0).then(|| format!("{}-{k}", self.letter()))
    }

    /// The `i`th file of this kind, relative to the stage directory.
    pub(super) fn path(self, i: usize) -> PathBuf {
        let name = self.name(i);
        match self.dir(i) {
            Some(dir) => PathBuf::from(dir).join(name),
            None => PathBuf::from(name),
        }
    }

    /// The directories below the stage directory that `count` files of
    /// this kind sit in, in order.
    pub(super) fn dirs(self, count: usize) -> impl Iterator<Item = String> {
        (PER_DIR..count)
            .step_by(PER_DIR)
            .filter_map(move |i| self.dir(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const KINDS: [StagedKind; 5] = [
        StagedKind::File,
        StagedKind::Copy,
        StagedKind::Delta,
        StagedKind::Part,
        StagedKind::Link,
    ];

    #[test]
    fn the_first_of_a_kind_sit_in_the_stage_directory_and_each_next_few_in_one_of_their_own() {
        let f = StagedKind::File;
        assert_eq!(f.path(0), PathBuf::from("f0"));
        assert_eq!(
            f.path(PER_DIR - 1),
            PathBuf::from(format!("f{}", PER_DIR - 1))
        );
        assert_eq!(f.path(PER_DIR), PathBuf::from(format!("f-1/f{PER_DIR}")));
        assert_eq!(
            StagedKind::Copy.path(2 * PER_DIR + 5),
            PathBuf::from(format!("c-2/c{}", 2 * PER_DIR + 5))
        );
        // Only a kind's directories that hold a file are made.
        let dirs = |n| f.dirs(n).collect::<Vec<_>>();
        assert!(dirs(0).is_empty());
        assert!(dirs(PER_DIR).is_empty());
        assert_eq!(dirs(PER_DIR + 1), ["f-1"]);
        assert_eq!(dirs(3 * PER_DIR), ["f-1", "f-2"]);
        assert_eq!(dirs(3 * PER_DIR + 1), ["f-1", "f-2", "f-3"]);
        for n in [1, PER_DIR, PER_DIR + 1, 10_000] {
            let made: HashSet<String> = f.dirs(n).collect();
            for i in 0..n {
                assert!(f.dir(i).is_none_or(|d| made.contains(&d)), "{i} of {n}");
            }
        }
    }

    #[test]
    fn no_two_staged_files_and_no_file_and_directory_share_a_name() {
        // The undo directory of a publish sits in the stage directory too.
        let mut names = HashSet::from(["undo".to_string()]);
        let count = 3 * PER_DIR + 1;
        for kind in KINDS {
            for i in 0..count {
                let path = kind.path(i).to_string_lossy().into_owned();
                assert!(names.insert(path.clone()), "{path} twice");
            }
            for dir in kind.dirs(count) {
                assert!(names.insert(dir.clone()), "{dir} twice");
            }
        }
    }
}
