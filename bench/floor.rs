//! The floor under rows 1 and 5 of BENCHMARKS.md: the least work that
//! shipper's promise asks of this machine, done as directly as a program
//! can, so that shipper's time can be set against it. `bench/floor.py`
//! runs it beside shipper and rsync; bench/FLOOR.md keeps what it found.
//!
//! What it keeps of the promise, per byte:
//! - it crosses mutual TLS between two processes, with shipper's own rustls
//!   configuration (`shipper::tls`: the same provider, versions and pinned
//!   keys);
//! - its BLAKE3 is taken by the sender as it reads and by the receiver as
//!   it writes, and checked (`shipper::hash::update`, as shipper hashes);
//! - each file is written under a staging directory on root's filesystem
//!   and renamed into root, so no reader sees a partial file;
//! - with `--durable`, no file is renamed into root before its data is on
//!   the disk: one `syncfs` of root's filesystem before the renames and one
//!   after them, the fewest a design can do, as every file is staged before
//!   any is published; each staged file is handed to the disk 8 MiB at a
//!   time as it is written, by shipper's own `durable::Writeback` as its
//!   receiver does, so the first sync finds most of it written;
//! - with `--archive DIR`, the receiver writes the stream it received once
//!   more, under `DIR`, as a receiver with `archive_keep > 0` keeps each
//!   bundle (on root's filesystem, so `--durable`'s syncs write it too).
//!
//! Two options give it the shape of shipper's data path instead, to tell
//! what that shape costs from what the promise does:
//! - `--spill DIR` (sender): the whole stream is written to a file under
//!   `DIR` first, then read back and sent, as shipper packs a bundle into
//!   its outbox before it sends it;
//! - `--store-first DIR` (receiver): the whole stream is written to a file
//!   under `DIR` (on root's filesystem) as it arrives, then read back and
//!   unpacked, as shipper's receiver keeps a bundle before it applies it.
//!
//! What it leaves out is everything else: the zip, the manifest, deflate,
//! the outbox, the state, the watcher, the ledger, bundles (the tree goes
//! as one stream), acknowledgements per bundle, and any check of what the
//! sender may write where beyond refusing a path that leaves root.
//!
//! ```text
//! floor receive --listen ADDR --keys DIR --peer FP --root DIR --staging DIR
//!               [--durable] [--archive DIR] [--store-first DIR]
//! floor send --connect ADDR --keys DIR --peer FP --source DIR [--spill DIR]
//! ```
//! The receiver prints `listening` once bound and exits once the tree is
//! published (and synced, with `--durable`), after telling the sender.
//!
//! The stream, per regular file: the path's length (u32, little-endian; 0
//! ends the stream), the path (UTF-8, relative), the size (u64), the bytes,
//! their BLAKE3 (32 bytes).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use anyhow::{Context, bail, ensure};
use shipper::durable::Writeback;
use shipper::tls::{Fingerprint, client_config, load_identity, server_config, server_name};

/// Bytes handed between a side's two threads at a time, as shipper's body
/// copies do.
const CHUNK: usize = 1 << 20;
/// Buffers in flight between the two threads.
const IN_FLIGHT: usize = 4;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (role, rest) = args
        .split_first()
        .context("usage: floor receive|send OPTIONS")?;
    let opts = Options::parse(rest)?;
    match role.as_str() {
        "receive" => receive(&opts),
        "send" => send(&opts),
        other => bail!("unknown role {other:?}: receive or send"),
    }
}

/// The command line, each option once.
#[derive(Default)]
struct Options {
    addr: Option<String>,
    keys: Option<PathBuf>,
    peer: Option<Fingerprint>,
    dir: Option<PathBuf>,
    staging: Option<PathBuf>,
    archive: Option<PathBuf>,
    spill: Option<PathBuf>,
    store_first: Option<PathBuf>,
    durable: bool,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--durable" {
                o.durable = true;
                continue;
            }
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--listen" | "--connect" => o.addr = Some(value.clone()),
                "--keys" => o.keys = Some(value.into()),
                "--peer" => {
                    o.peer = Some(
                        value
                            .parse()
                            .map_err(|e| anyhow::anyhow!("--peer {value}: {e}"))?,
                    )
                }
                "--root" | "--source" => o.dir = Some(value.into()),
                "--staging" => o.staging = Some(value.into()),
                "--archive" => o.archive = Some(value.into()),
                "--spill" => o.spill = Some(value.into()),
                "--store-first" => o.store_first = Some(value.into()),
                _ => bail!("unknown option {flag}"),
            }
        }
        Ok(o)
    }
}

fn required<'a, T>(v: &'a Option<T>, flag: &str) -> anyhow::Result<&'a T> {
    v.as_ref().with_context(|| format!("{flag} is required"))
}

/// Read and hash the tree on one thread; encrypt and send on this one.
fn send(o: &Options) -> anyhow::Result<()> {
    let me = load_identity(required(&o.keys, "--keys")?)?;
    let config = client_config(&me, *required(&o.peer, "--peer")?)?;
    let addr = required(&o.addr, "--connect")?;
    let tcp = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ClientConnection::new(config, server_name())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let source = required(&o.dir, "--source")?.clone();
    let (full_tx, full_rx) = sync_channel::<Vec<u8>>(IN_FLIGHT);
    let (spent_tx, spent_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || read_tree(&source, &full_tx, &spent_rx));
    match &o.spill {
        None => {
            for buf in full_rx {
                tls.write_all(&buf)?;
                let _ = spent_tx.send(buf);
            }
            reader.join().expect("reader thread")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let path = dir.join("stream");
            let mut spill = File::create(&path).with_context(|| format!("{}", path.display()))?;
            for buf in full_rx {
                spill.write_all(&buf)?;
                let _ = spent_tx.send(buf);
            }
            reader.join().expect("reader thread")?;
            drop(spill);
            let mut spilled = File::open(&path)?;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = spilled.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                tls.write_all(&buf[..n])?;
            }
            std::fs::remove_file(&path)?;
        }
    }
    // Ends the stream for the receiver; its answer still comes back.
    tls.conn.send_close_notify();
    tls.flush()?;
    let mut done = [0u8; 1];
    tls.read_exact(&mut done)
        .context("waiting for the receiver to publish")?;
    Ok(())
}

/// The stream of every regular file under `source`, in buffers of about
/// [`CHUNK`] bytes.
fn read_tree(
    source: &Path,
    full: &SyncSender<Vec<u8>>,
    spent: &Receiver<Vec<u8>>,
) -> anyhow::Result<()> {
    let fresh = || {
        let mut b = spent.try_recv().unwrap_or_default();
        b.clear();
        b.reserve(CHUNK);
        b
    };
    let mut out = fresh();
    for entry in walkdir::WalkDir::new(source).sort_by_file_name() {
        let entry = entry?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(source)?;
        let rel = rel
            .to_str()
            .with_context(|| format!("{}: not UTF-8", rel.display()))?;
        let mut file =
            File::open(entry.path()).with_context(|| format!("{}", entry.path().display()))?;
        let size = file.metadata()?.len();
        out.extend_from_slice(&u32::try_from(rel.len())?.to_le_bytes());
        out.extend_from_slice(rel.as_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        let mut hasher = blake3::Hasher::new();
        let mut left = size;
        while left > 0 {
            let room = CHUNK.saturating_sub(out.len()).max(64 << 10);
            let n = room.min(usize::try_from(left).unwrap_or(usize::MAX));
            let at = out.len();
            out.resize(at + n, 0);
            file.read_exact(&mut out[at..])
                .with_context(|| format!("{}", entry.path().display()))?;
            shipper::hash::update(&mut hasher, &out[at..]);
            left -= n as u64;
            if out.len() >= CHUNK {
                full.send(std::mem::replace(&mut out, fresh()))?;
            }
        }
        out.extend_from_slice(hasher.finalize().as_bytes());
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    full.send(out)?;
    Ok(())
}

/// Decrypt on this thread; check, stage and publish on another.
fn receive(o: &Options) -> anyhow::Result<()> {
    let me = load_identity(required(&o.keys, "--keys")?)?;
    let config = server_config(&me, vec![*required(&o.peer, "--peer")?])?;
    let addr = required(&o.addr, "--listen")?;
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    println!("listening");
    io::stdout().flush()?;
    let (tcp, _) = listener.accept()?;
    tcp.set_nodelay(true)?;
    let conn = rustls::ServerConnection::new(config)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let root = required(&o.dir, "--root")?.clone();
    let staging = required(&o.staging, "--staging")?.clone();
    let archive = match &o.archive {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            let path = dir.join("stream");
            Some(File::create(&path).with_context(|| format!("{}", path.display()))?)
        }
        None => None,
    };
    let durable = o.durable;
    let store_first = o.store_first.clone();
    let (full_tx, full_rx) = sync_channel::<Vec<u8>>(IN_FLIGHT);
    let (spent_tx, spent_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let writer = std::thread::spawn(move || {
        let mut stream = match store_first {
            None => Incoming {
                feed: Feed::Channel(full_rx, spent_tx),
                cur: Vec::new(),
                pos: 0,
                archive,
            },
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                let path = dir.join("stream");
                let mut stored =
                    File::create(&path).with_context(|| format!("{}", path.display()))?;
                for buf in full_rx {
                    stored.write_all(&buf)?;
                    let _ = spent_tx.send(buf);
                }
                Incoming {
                    feed: Feed::File(File::open(&path)?),
                    cur: Vec::new(),
                    pos: 0,
                    archive,
                }
            }
        };
        publish(&mut stream, &root, &staging, durable)
    });
    // The sender's close_notify ends the stream; the writer may end it
    // sooner, on an error, which its join below returns.
    loop {
        let mut buf = spent_rx.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let mut filled = 0;
        while filled < CHUNK {
            let n = tls.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        if filled == 0 || full_tx.send(buf).is_err() {
            break;
        }
    }
    drop(full_tx);
    writer.join().expect("writer thread")?;
    tls.write_all(&[1])?;
    tls.flush()?;
    Ok(())
}

/// Where the writer thread's stream comes from: the socket's thread (its
/// buffers go back to it once read), or the file it was stored in.
enum Feed {
    Channel(Receiver<Vec<u8>>, std::sync::mpsc::Sender<Vec<u8>>),
    File(File),
}

/// The decrypted stream as the writer thread reads it, teed to the archive.
struct Incoming {
    feed: Feed,
    cur: Vec<u8>,
    pos: usize,
    archive: Option<File>,
}

impl Incoming {
    /// Up to `max` of the next bytes, without copying them; empty at the end.
    fn next(&mut self, max: usize) -> io::Result<&[u8]> {
        if self.pos == self.cur.len() {
            let buf = match &mut self.feed {
                Feed::Channel(full, spent) => {
                    let Ok(buf) = full.recv() else {
                        return Ok(&[]);
                    };
                    let _ = spent.send(std::mem::replace(&mut self.cur, buf));
                    &self.cur
                }
                Feed::File(file) => {
                    self.cur.resize(CHUNK, 0);
                    let n = file.read(&mut self.cur)?;
                    self.cur.truncate(n);
                    if n == 0 {
                        return Ok(&[]);
                    }
                    &self.cur
                }
            };
            if let Some(a) = self.archive.as_mut() {
                a.write_all(buf)?;
            }
            self.pos = 0;
        }
        let n = max.min(self.cur.len() - self.pos);
        self.pos += n;
        Ok(&self.cur[self.pos - n..self.pos])
    }

    fn exact<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut out = [0u8; N];
        let mut filled = 0;
        while filled < N {
            let got = self.next(N - filled)?;
            if got.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            out[filled..filled + got.len()].copy_from_slice(got);
            filled += got.len();
        }
        Ok(out)
    }
}

/// Stage every file of the stream, check its hash, then (synced first, with
/// `durable`) rename them all into root.
fn publish(
    stream: &mut Incoming,
    root: &Path,
    staging: &Path,
    durable: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(staging)?;
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    loop {
        let len = u32::from_le_bytes(stream.exact()?) as usize;
        if len == 0 {
            break;
        }
        let mut name = Vec::with_capacity(len);
        while name.len() < len {
            let got = stream.next(len - name.len())?;
            ensure!(!got.is_empty(), "stream ended in a path");
            name.extend_from_slice(got);
        }
        let rel = PathBuf::from(String::from_utf8(name)?);
        ensure!(
            rel.components().all(|c| matches!(c, Component::Normal(_))),
            "{}: not a path below root",
            rel.display()
        );
        let size = u64::from_le_bytes(stream.exact()?);
        let tmp = staging.join(staged.len().to_string());
        let mut file = File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
        let mut hasher = blake3::Hasher::new();
        let mut left = size;
        // Durable: hand what is written to the disk a stride at a time, as
        // shipper's receiver does, so the syncfs waits for little more than
        // the last stride.
        let mut writeback = Writeback::default();
        while left > 0 {
            let got = stream.next(usize::try_from(left).unwrap_or(usize::MAX))?;
            ensure!(
                !got.is_empty(),
                "{}: stream ended in the file",
                rel.display()
            );
            shipper::hash::update(&mut hasher, got);
            file.write_all(got)
                .with_context(|| format!("{}", tmp.display()))?;
            left -= got.len() as u64;
            if durable {
                writeback.wrote(&mut file, got.len() as u64)?;
            }
        }
        let sent: [u8; 32] = stream.exact()?;
        ensure!(
            hasher.finalize() == blake3::Hash::from_bytes(sent),
            "{}: hash differs from the sender's",
            rel.display()
        );
        staged.push((tmp, rel));
    }
    let root_dir = File::open(root).with_context(|| format!("{}", root.display()))?;
    if durable {
        rustix::fs::syncfs(&root_dir)?;
    }
    for (tmp, rel) in &staged {
        let dest = root.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(tmp, &dest).with_context(|| format!("{}", dest.display()))?;
    }
    if durable {
        rustix::fs::syncfs(&root_dir)?;
    }
    std::fs::remove_dir(staging)?;
    Ok(())
}
