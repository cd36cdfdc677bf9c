//! Reading one source file into a bundle: a settled file read strictly
//! (any change while reading tears it: it stays pending) or an overdue one
//! read as a snapshot (a reflink clone, else the bytes as they stood when
//! the read began). Bytes go to the zip entry and to BLAKE3 in the same
//! pass; size, mtime and inode are checked before and after. Reads below
//! the source only through [`SourceDir`]; writes only zip entries.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use zip::write::{PreparedZipFile, SimpleFileOptions};

use super::writer::{BundleZip, with_path, zip_err};
use super::zip_entry::{entry_options, worth_deflating};
use crate::source_dir::SourceDir;
use crate::stamp::Stamp;

/// Whether an event touched a path since the pack began.
pub(super) type Touched<'a> = &'a (dyn Fn(&str) -> bool + Sync);

/// How a read must treat a file that changes under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadMode {
    /// Any change while reading: the file is torn, it stays pending.
    Strict,
    /// Overdue: take the first `stamp.size` bytes whatever happens after the
    /// read began; only a file that got shorter is torn.
    Snapshot,
}

/// Why a file's read did not make it into the bundle.
#[derive(Debug)]
pub(super) enum Lost {
    /// It changed while being read, or an event touched it: stays pending.
    Torn,
    /// It could not be read: the error names the path.
    Unreadable(io::Error),
}

/// What copying a file, or a part of one, into the bundle came to.
#[derive(Debug)]
pub(super) enum Outcome {
    /// All the bytes are in the entry. `overtaken`: a snapshot whose file
    /// moved on meanwhile, so what shipped is the file as it stood when
    /// the read began, not as it is now.
    Copied { overtaken: bool },
    /// The entry was dropped again.
    Lost(Lost),
}

/// The source tree as one packing run reads it: the directory handle,
/// where snapshots are cloned, the events that say a file is in flux, and
/// the copy buffer.
pub(super) struct Reader<'a> {
    pub(super) dir: &'a SourceDir,
    /// Where snapshot clones are made (the outbox), as unnamed files.
    pub(super) scratch: &'a Path,
    pub(super) touched: Touched<'a>,
    /// Whether files worth deflating are deflated, asked for each file.
    pub(super) deflate: &'a (dyn Fn() -> bool + Sync),
    pub(super) buf: Vec<u8>,
}

impl Reader<'_> {
    /// Open `rel` to read as `how` says. Returns `Ok(None)` if it is gone;
    /// an error names the path. A snapshot's stamp may differ from `stamp`:
    /// it is the file's as it stands at the open.
    pub(super) fn open<'s>(
        &'s mut self,
        rel: &'s str,
        abs: &'s Path,
        stamp: Stamp,
        how: ReadMode,
    ) -> io::Result<Option<Source<'s>>> {
        let opened = match how {
            ReadMode::Snapshot => snapshot(self.dir, rel, self.scratch),
            ReadMode::Strict => self.dir.open_file(rel).map(|f| (f, stamp)),
        };
        let (file, stamp) = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(Source {
            dir: self.dir,
            rel,
            abs,
            file,
            stamp,
            how,
            touched: self.touched,
            deflate: self.deflate,
            buf: &mut self.buf,
        }))
    }
}

/// One source file being packed, and the copy buffer to read it with.
pub(super) struct Source<'a> {
    dir: &'a SourceDir,
    pub(super) rel: &'a str,
    pub(super) abs: &'a Path,
    file: File,
    pub(super) stamp: Stamp,
    how: ReadMode,
    touched: Touched<'a>,
    deflate: &'a (dyn Fn() -> bool + Sync),
    buf: &'a mut [u8],
}

impl Source<'_> {
    /// Options for this file's entries (or its parts').
    pub(super) fn entry_options(&self) -> SimpleFileOptions {
        let deflate = (self.deflate)() && worth_deflating(self.rel, &self.file, self.stamp.size);
        entry_options(deflate, self.stamp)
    }

    /// Write the byte `ranges` (offset, length) of the file, in order, as
    /// the zip entry `name`, feeding `hasher` too. A read that does not
    /// complete drops the entry again. An error reading the source is an
    /// outcome; an error writing the bundle is the `Err`.
    pub(super) fn write_entry(
        &mut self,
        zip: &mut BundleZip,
        name: &str,
        options: SimpleFileOptions,
        ranges: &[(u64, u64)],
        hasher: Option<&mut blake3::Hasher>,
    ) -> io::Result<Outcome> {
        zip.start_file(name, options).map_err(zip_err)?;
        let outcome = self.copy_checked(ranges, zip, hasher)?;
        if let Outcome::Lost(_) = outcome {
            zip.abort_file().map_err(zip_err)?;
        }
        Ok(outcome)
    }

    /// Copy `ranges` into `out`, feeding `hasher`. A strict read then
    /// confirms the file did not change meanwhile; a snapshot read only
    /// needs the bytes to be there.
    fn copy_checked(
        &mut self,
        ranges: &[(u64, u64)],
        out: &mut impl Write,
        mut hasher: Option<&mut blake3::Hasher>,
    ) -> io::Result<Outcome> {
        let strict = self.how == ReadMode::Strict;
        let at = |e: io::Error| Outcome::Lost(Lost::Unreadable(with_path(e, self.abs)));
        let torn = Outcome::Lost(Lost::Torn);
        match self.file.metadata() {
            Ok(md) if strict && Stamp::of(&md) != self.stamp => return Ok(torn),
            Ok(_) => {}
            Err(e) => return Ok(at(e)),
        }
        for &(offset, len) in ranges {
            if let Err(e) = self.file.seek(SeekFrom::Start(offset)) {
                return Ok(at(e));
            }
            let mut left = len;
            while left > 0 {
                let want = self
                    .buf
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = match self.file.read(&mut self.buf[..want]) {
                    Ok(n) => n,
                    Err(e) => return Ok(at(e)),
                };
                if n == 0 {
                    // Shorter than it was a moment ago: truncated under us.
                    return Ok(torn);
                }
                if let Some(h) = hasher.as_deref_mut() {
                    h.update(&self.buf[..n]);
                }
                out.write_all(&self.buf[..n])?;
                left -= n as u64;
            }
        }
        // Same inode, same size and mtime, through the handle and through the
        // name looked up afresh: nobody wrote to it or replaced it (or a
        // directory above it) while we read. (Through the name alone for a
        // snapshot, whose handle may be a clone.)
        let after_fd = self.file.metadata().map(|m| Stamp::of(&m));
        let after_path = self.dir.stat_afresh(self.rel).map(|st| Stamp::of_stat(&st));
        // An event during the read means a writer is at it again, even if the
        // stat fields happen to match.
        let moved = after_path.ok() != Some(self.stamp) || (self.touched)(self.rel);
        match (strict, moved || after_fd.ok() != Some(self.stamp)) {
            (true, true) => Ok(torn),
            (true, false) => Ok(Outcome::Copied { overtaken: false }),
            (false, _) => Ok(Outcome::Copied { overtaken: moved }),
        }
    }
}

/// Open an overdue file that is still being written for a snapshot read:
/// a reflink clone in `scratch` where the filesystem can make one (it holds
/// still, whatever the writer does), else the file itself, of which the
/// first `size` bytes as stated now will be read. Returns the file to read
/// and the stamp to ship (the original's, with the clone's size).
fn snapshot(dir: &SourceDir, rel: &str, scratch: &Path) -> io::Result<(File, Stamp)> {
    let original = dir.open_file(rel)?;
    let stamp = Stamp::of(&original.metadata()?);
    if let Ok(clone) = tempfile::tempfile_in(scratch)
        && rustix::fs::ioctl_ficlone(&clone, &original).is_ok()
    {
        let size = clone.metadata()?.len();
        return Ok((clone, Stamp { size, ..stamp }));
    }
    Ok((original, stamp))
}

/// A small file read whole and compressed, off the bundle's thread.
pub(super) enum Prepared {
    /// Ready to append.
    Ready {
        hash: blake3::Hash,
        zipped: Box<PreparedZipFile>,
        overtaken: bool,
    },
    /// Gone since it was listed.
    Gone,
    Lost(Lost),
}

impl Reader<'_> {
    /// Read a small file whole, check it did not change meanwhile, hash it and
    /// compress it into a ready zip entry. Runs on a worker thread.
    pub(super) fn prepare_small(
        &self,
        rel: &str,
        abs: &Path,
        stamp: Stamp,
        how: ReadMode,
    ) -> Prepared {
        let (dir, touched) = (self.dir, self.touched);
        let at = |e: io::Error| Prepared::Lost(Lost::Unreadable(with_path(e, abs)));
        let torn = Prepared::Lost(Lost::Torn);
        let mut file = match dir.open_file(rel) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Prepared::Gone,
            Err(e) => return Prepared::Lost(Lost::Unreadable(e)),
        };
        let before = match file.metadata() {
            Ok(md) => Stamp::of(&md),
            Err(e) => return at(e),
        };
        if how == ReadMode::Strict && before != stamp {
            return torn;
        }
        let limit = match how {
            ReadMode::Strict => stamp.size + 1,
            ReadMode::Snapshot => stamp.size,
        };
        let content = match read_at_most(&mut file, limit) {
            Ok(content) => content,
            Err(e) => return at(e),
        };
        if content.len() as u64 != stamp.size {
            return torn;
        }
        let after_fd = file.metadata().map(|m| Stamp::of(&m));
        let after_path = dir.stat_afresh(rel).map(|st| Stamp::of_stat(&st));
        let moved = after_fd.ok() != Some(stamp) || after_path.ok() != Some(stamp) || touched(rel);
        if moved && how == ReadMode::Strict {
            return torn;
        }
        let deflate = (self.deflate)() && worth_deflating(rel, &file, stamp.size);
        let options = entry_options(deflate, stamp);
        match PreparedZipFile::from_data(rel, options, &content) {
            Ok(zipped) => Prepared::Ready {
                hash: blake3::hash(&content),
                zipped: Box::new(zipped),
                overtaken: moved,
            },
            Err(e) => at(zip_err(e)),
        }
    }
}

/// The first `limit` bytes of `file` (fewer if it ends before), read with
/// plain reads: the caller knows the size, so no stat or seek sizes a
/// buffer first, as `read_to_end` would for each small file.
fn read_at_most(file: &mut File, limit: u64) -> io::Result<Vec<u8>> {
    let mut content = vec![0u8; usize::try_from(limit).map_err(io::Error::other)?];
    let mut got = 0;
    while got < content.len() {
        match file.read(&mut content[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    content.truncate(got);
    Ok(content)
}
