//! Watching the source: notify events in, [`WatchMsg`]s out on a channel;
//! walks of the tree into [`Stamp`](crate::stamp::Stamp)s; and the
//! [`Sentinel`] that follows the source by its configured path. It reports
//! what happened to which relative path, leaving out only what the sender
//! never ships (excluded paths, ignored directories); when and whether a
//! change ships is the sender's business.
//!
//! Everything here blocks (stats, walks, reads of /proc, the OS watch).
//! Events are translated on notify's thread and the source followed on the
//! sentinel's; walks are for a blocking task. Only the sentinel's first look
//! runs on its caller, once, at start.
//!
//! - `events`: [`WatchMsg`], and [`translate`] from one notify event.
//! - `watcher`: the OS watch of one directory, feeding a channel.
//! - `sentinel`: following the source path as directories are swapped in.
//! - `walk`: scanning a tree into stamps, watching each directory it lists;
//!   who holds files open for writing.

mod events;
mod sentinel;
mod walk;
mod watcher;

pub use events::{WatchMsg, translate};
pub use sentinel::{SOURCE_POLL, Sentinel, SourceEvent, Watched};
pub use walk::{Walk, is_gone, open_for_writing, walk, walk_watching};
pub use watcher::{WatchGuard, inotify_watch_limit};
