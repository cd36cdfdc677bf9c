//! A connection owns one stream and speaks frames over it; bundle bodies are
//! streamed between files and the socket in fixed-size buffers, hashed on
//! the way in and out, never held whole in memory; a received body's bytes
//! are shown to a [`Tap`] as they are written. It is two halves, a
//! [`FrameReader`] and a [`FrameWriter`], which one task may use at once
//! (a receiver takes in a bundle while it answers the one before); its
//! tests are in `connection_tests.rs`.
//!
//! With a peer timeout set, no read or write waits on the peer longer than
//! that: a peer gone silent fails the call with [`ConnError::Silent`] instead
//! of hanging it (see the liveness rules in [`crate::proto`]).
//!
//! With a rate set (`sender.max_rate`), every byte written, frames and
//! bodies alike, is first counted by the connection's own
//! [`TokenBucket`], and the task sleeps as it says: a wait for the rate is
//! never taken for a silent peer, and never blocks a runtime thread.

use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};

use super::chunked::{OverLimit, PaceClock, Tally};
use super::frame::{self, Frame, FrameError, HEADER_LEN};
use crate::rate::TokenBucket;

const BODY_BUF: usize = 256 * 1024;
/// Bundle bodies move between disk and socket in chunks this large, each
/// hashed on the thread that reads or writes it while the socket moves the
/// one before (one core's BLAKE3 far outruns the network; rayon's pool may
/// be busy unpacking the bundle before).
pub const CHUNK: usize = 1 << 20;
const _: () = assert!(
    CHUNK <= frame::MAX_CHUNK as usize,
    "a chunk fits one Chunk frame"
);
/// Body bytes are written in slices this large, each within the peer
/// timeout: the slowest link taken for alive moves about the write buffer
/// plus one slice (320 KiB) per peer timeout.
const WRITE_SLICE: usize = 64 * 1024;

/// A byte stream a connection can run over: plain TCP on loopback, or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type Stream = Box<dyn Io>;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection closed by peer")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("silent for {}", humantime::format_duration(*.0))]
    Silent(Duration),
    #[error("unexpected {0}")]
    Unexpected(String),
    #[error(transparent)]
    OverLimit(#[from] OverLimit),
}

pub struct Connection<S> {
    reader: FrameReader<S>,
    writer: FrameWriter<S>,
}

/// Run `io`, failing with [`ConnError::Silent`] if it takes over `limit`.
async fn within<T>(limit: Option<Duration>, io: impl Future<Output = T>) -> Result<T, ConnError> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, io)
            .await
            .map_err(|_| ConnError::Silent(limit)),
        None => Ok(io.await),
    }
}

/// The half of a connection that reads: frames and bundle bodies from
/// the peer, each read within the peer timeout.
pub struct FrameReader<S> {
    reader: BufReader<tokio::io::ReadHalf<S>>,
    /// How long one read may wait on the peer; `None`: forever.
    peer_timeout: Option<Duration>,
}

/// The half of a connection that writes: frames and bundle bodies to the
/// peer, each write within the peer timeout and at the rate, if one is set.
pub struct FrameWriter<S> {
    writer: BufWriter<tokio::io::WriteHalf<S>>,
    /// How long one write may wait on the peer; `None`: forever.
    peer_timeout: Option<Duration>,
    /// The bytes per second this connection may write; `None`: no limit.
    rate: Option<TokenBucket>,
}

impl<S: AsyncRead + AsyncWrite> Connection<S> {
    pub fn new(stream: S) -> Self {
        let (r, w) = tokio::io::split(stream);
        Self {
            reader: FrameReader {
                reader: BufReader::with_capacity(BODY_BUF, r),
                peer_timeout: None,
            },
            writer: FrameWriter {
                writer: BufWriter::with_capacity(BODY_BUF, w),
                peer_timeout: None,
                rate: None,
            },
        }
    }

    /// Bound every read and write on the peer by `limit`.
    pub fn with_peer_timeout(mut self, limit: Duration) -> Self {
        self.reader.peer_timeout = Some(limit);
        self.writer.peer_timeout = Some(limit);
        self
    }

    /// Write at most `rate` bytes per second on average, from now on.
    pub fn with_max_rate(mut self, rate: u64) -> Self {
        self.writer.rate = Some(TokenBucket::new(rate, now()));
        self
    }

    /// Both halves at once, to read the peer while writing to it (a
    /// receiver takes in the next bundle while it applies one).
    pub fn halves(&mut self) -> (&mut FrameReader<S>, &mut FrameWriter<S>) {
        (&mut self.reader, &mut self.writer)
    }

    /// See [`FrameReader::readable`].
    pub async fn readable(&mut self) -> Result<(), ConnError> {
        self.reader.readable().await
    }

    /// See [`FrameReader::read_frame`].
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        self.reader.read_frame().await
    }

    /// See [`FrameReader::expect_frame`].
    pub async fn expect_frame(&mut self) -> Result<Frame, ConnError> {
        self.reader.expect_frame().await
    }

    /// See [`FrameReader::expect_frame_within`].
    pub async fn expect_frame_within(&mut self, limit: Duration) -> Result<Frame, ConnError> {
        self.reader.expect_frame_within(limit).await
    }

    /// See [`FrameReader::expect_reply_within`].
    pub async fn expect_reply_within(&mut self, limit: Duration) -> Result<Frame, ConnError> {
        self.reader.expect_reply_within(limit).await
    }

    /// See [`FrameReader::recv_body`].
    pub async fn recv_body(&mut self, size: u64, to: (&Path, impl Tap)) -> Result<Body, ConnError> {
        self.reader.recv_body(size, to).await
    }

    /// See [`FrameReader::recv_chunked`].
    pub async fn recv_chunked(
        &mut self,
        limit: u64,
        to: (&Path, impl Tap),
    ) -> Result<Streamed, ConnError> {
        self.reader.recv_chunked(limit, to).await
    }

    /// See [`FrameWriter::send_chunk`].
    pub async fn send_chunk(&mut self, bytes: &[u8], paced: bool) -> Result<(), ConnError> {
        self.writer.send_chunk(bytes, paced).await
    }

    /// See [`FrameWriter::flush`].
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        self.writer.flush().await
    }

    /// See [`FrameWriter::write_frame`].
    pub async fn write_frame(&mut self, f: &Frame) -> Result<(), ConnError> {
        self.writer.write_frame(f).await
    }

    /// See [`FrameWriter::send_body`].
    pub async fn send_body(&mut self, path: &Path, size: u64) -> Result<blake3::Hash, ConnError> {
        self.writer.send_body(path, size).await
    }

    /// See [`FrameWriter::ping_while`].
    pub async fn ping_while<F: Future>(
        &mut self,
        every: Duration,
        work: F,
    ) -> (F::Output, Result<(), ConnError>) {
        self.writer.ping_while(every, work).await
    }
}

/// A body received: its BLAKE3, the first error writing it, and the bytes
/// timed with the time they took to arrive ([`PaceClock`]; `None` if no
/// read waited).
#[derive(Debug)]
pub struct Body {
    pub hash: blake3::Hash,
    pub write_error: Option<io::Error>,
    pub timed: Option<(u64, Duration)>,
}

/// What came of a body streamed in chunks ([`FrameReader::recv_chunked`]).
#[derive(Debug)]
pub enum Streamed {
    /// Whole: the body received, `size` bytes in all, and the `Sealed`
    /// frame's sequence, size and hash, to check it against.
    Sealed {
        body: Body,
        size: u64,
        sealed: (u64, u64, [u8; 32]),
    },
    /// The sender gave it up; what came of it is in the file, to drop.
    Abandoned,
}

/// Watches a body's bytes as they are written to its file, on the thread
/// that writes them: how the receiver acts on a bundle before all of it
/// came (`bundle::arrival`). What it does is a hint: the bytes are kept
/// and hashed the same whatever it does.
pub trait Tap: Send + 'static {
    /// `chunk` was just appended to `file`.
    fn wrote(&mut self, file: &mut std::fs::File, chunk: &[u8]);
}

/// Watches nothing.
impl Tap for () {
    fn wrote(&mut self, _: &mut std::fs::File, _: &[u8]) {}
}

/// `None` watches nothing.
impl<T: Tap> Tap for Option<T> {
    fn wrote(&mut self, file: &mut std::fs::File, chunk: &[u8]) {
        if let Some(tap) = self {
            tap.wrote(file, chunk);
        }
    }
}

/// Where a body's bytes go: a blocking thread writes and hashes them into
/// a file while the task reading the socket fills the next buffer. After
/// a write error (a full disk) it goes on hashing and drops the bytes, so
/// the stream stays in step and the bundle can be refused with the reason.
struct BodySink {
    // A tokio channel: a full one makes the reading task wait, never
    // blocks the runtime thread it runs on.
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    // Written buffers come back to be filled again: a fresh megabyte per
    // chunk was mapped, zeroed and unmapped each time.
    spent: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    writer: tokio::task::JoinHandle<(blake3::Hash, Option<io::Error>)>,
}

impl BodySink {
    fn create(path: &Path, mut tap: impl Tap) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let (spent_tx, spent) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let path = path.to_owned();
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut hasher = blake3::Hasher::new();
            let mut write_error = None;
            let mut file = match std::fs::File::create(&path) {
                Ok(f) => Some(f),
                Err(e) => {
                    write_error = Some(e);
                    None
                }
            };
            while let Some(chunk) = rx.blocking_recv() {
                hasher.update(&chunk);
                if let Some(f) = file.as_mut() {
                    match f.write_all(&chunk) {
                        Ok(()) => tap.wrote(f, &chunk),
                        Err(e) => {
                            write_error = Some(e);
                            file = None;
                        }
                    }
                }
                let _ = spent_tx.send(chunk);
            }
            (hasher.finalize(), write_error)
        });
        Self { tx, spent, writer }
    }

    /// A buffer of `len` bytes to fill, one written before if there is one.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self.spent.try_recv().unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// Hand on a filled buffer (waiting while the writer is behind).
    async fn put(&mut self, buf: Vec<u8>) {
        // The writer thread only stops early if it panicked, which
        // `finish` reports.
        let _ = self.tx.send(buf).await;
    }

    /// The hash of every byte handed on and the first write error.
    async fn finish(self) -> Result<(blake3::Hash, Option<io::Error>), ConnError> {
        drop(self.tx);
        self.writer
            .await
            .map_err(|e| ConnError::Io(io::Error::other(e)))
    }
}

impl<S: AsyncRead + AsyncWrite> FrameReader<S> {
    /// Wait until the peer sent something or closed, consuming nothing, and
    /// without a time limit: safe to cancel, for `select!`. End of stream is
    /// [`ConnError::Closed`].
    pub async fn readable(&mut self) -> Result<(), ConnError> {
        if self.reader.fill_buf().await?.is_empty() {
            return Err(ConnError::Closed);
        }
        Ok(())
    }

    /// Read the next frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        let mut header = [0u8; HEADER_LEN];
        match within(self.peer_timeout, self.reader.read_exact(&mut header[..1])).await? {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        self.read_exact(&mut header[1..]).await?;
        let (kind, len) = frame::parse_header(&header)?;
        // `len` is bounded by MAX_PAYLOAD: safe to allocate.
        let mut payload = vec![0u8; len];
        self.read_exact(&mut payload).await?;
        Ok(Some(frame::parse_payload(kind, &payload)?))
    }

    /// Read a frame, treating end of stream as an error.
    pub async fn expect_frame(&mut self) -> Result<Frame, ConnError> {
        self.read_frame().await?.ok_or(ConnError::Closed)
    }

    pub async fn expect_frame_within(&mut self, limit: Duration) -> Result<Frame, ConnError> {
        tokio::time::timeout(limit, self.expect_frame())
            .await
            .map_err(|_| ConnError::Timeout(limit))?
    }

    /// The peer's next frame other than `Ping` (or `Received`, which says
    /// how a bundle came, not what became of it), within `limit` in all.
    /// Each ping shows the peer alive, so a slow answer is waited for as
    /// long as pings come (each read still within the peer timeout), but no
    /// longer than `limit`, which catches a peer that pings and never
    /// answers.
    pub async fn expect_reply_within(&mut self, limit: Duration) -> Result<Frame, ConnError> {
        let reply = async {
            loop {
                match self.expect_frame().await? {
                    Frame::Ping | Frame::Received { .. } => {}
                    other => return Ok(other),
                }
            }
        };
        tokio::time::timeout(limit, reply)
            .await
            .map_err(|_| ConnError::Timeout(limit))?
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ConnError> {
        match within(self.peer_timeout, self.reader.read_exact(buf)).await? {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ConnError::Closed),
            Err(e) => Err(e.into()),
        }
    }

    /// Receive exactly `size` body bytes into the file at `path`, returning
    /// their BLAKE3, the first write error, if any, and how long they took
    /// from the first read that waited ([`PaceClock`]). A blocking thread writes and hashes while
    /// this task reads the socket ([`BodySink`]), showing `tap` each chunk it wrote.
    pub async fn recv_body(
        &mut self,
        size: u64,
        (path, tap): (&Path, impl Tap),
    ) -> Result<Body, ConnError> {
        let mut sink = BodySink::create(path, tap);
        let mut clock = PaceClock::default();
        let mut left = size;
        while left > 0 {
            let want = CHUNK.min(usize::try_from(left).unwrap_or(usize::MAX));
            let mut buf = sink.buffer(want);
            self.fill(&mut buf, &mut clock).await?;
            left -= want as u64;
            sink.put(buf).await;
        }
        let (hash, write_error) = sink.finish().await?;
        Ok(Body {
            hash,
            write_error,
            timed: clock.timed(),
        })
    }

    /// Receive a body streamed in chunks (after its `Begin`) into the file
    /// at `path`, up to its `Sealed` or `Abandon`, taking `Ping`s between
    /// chunks. A chunk that would take the body past `limit` bytes fails
    /// the call before it is read ([`ConnError::OverLimit`]), as does any
    /// other frame. The wait before a chunk that is not paced is not timed
    /// ([`PaceClock`]). `tap` is shown each chunk written, as in
    /// [`FrameReader::recv_body`].
    pub async fn recv_chunked(
        &mut self,
        limit: u64,
        (path, tap): (&Path, impl Tap),
    ) -> Result<Streamed, ConnError> {
        let mut sink = BodySink::create(path, tap);
        let mut clock = PaceClock::default();
        let mut tally = Tally::new(limit);
        loop {
            match self.expect_frame().await? {
                Frame::Ping => {}
                Frame::Chunk { len, paced } => {
                    tally.chunk(len)?;
                    clock.chunk(paced);
                    let mut left = len as usize;
                    while left > 0 {
                        let mut buf = sink.buffer(CHUNK.min(left));
                        self.fill(&mut buf, &mut clock).await?;
                        left -= buf.len();
                        sink.put(buf).await;
                    }
                }
                Frame::Sealed { seq, size, hash } => {
                    let (got, write_error) = sink.finish().await?;
                    let body = Body {
                        hash: got,
                        write_error,
                        timed: clock.timed(),
                    };
                    let size_got = tally.size();
                    return Ok(Streamed::Sealed {
                        body,
                        size: size_got,
                        sealed: (seq, size, hash),
                    });
                }
                Frame::Abandon => {
                    sink.finish().await?;
                    return Ok(Streamed::Abandoned);
                }
                other => {
                    return Err(ConnError::Unexpected(format!(
                        "{other:?} inside a streamed bundle"
                    )));
                }
            }
        }
    }

    /// Fill `buf` from the socket, each read within the peer timeout and
    /// timed on `clock`.
    async fn fill(&mut self, buf: &mut [u8], clock: &mut PaceClock) -> Result<(), ConnError> {
        let mut filled = 0;
        while filled < buf.len() {
            let asked = std::time::Instant::now();
            let n = within(self.peer_timeout, self.reader.read(&mut buf[filled..])).await??;
            if n == 0 {
                return Err(ConnError::Closed);
            }
            clock.read(n as u64, asked, std::time::Instant::now());
            filled += n;
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite> FrameWriter<S> {
    /// Wait until `n` more bytes may be written at the rate, if one is set.
    async fn pace(&mut self, n: usize) {
        if let Some(bucket) = &mut self.rate {
            let wait = bucket.take(n as u64, now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// Body bytes go in slices this large: at a rate, no more than what it
    /// allows at once, so the link is paced evenly and the peer never
    /// waits long between bytes.
    fn write_slice(&self) -> usize {
        match &self.rate {
            Some(bucket) => WRITE_SLICE.min(usize::try_from(bucket.burst()).unwrap_or(WRITE_SLICE)),
            None => WRITE_SLICE,
        }
    }

    pub async fn write_frame(&mut self, f: &Frame) -> Result<(), ConnError> {
        self.put_frame(f).await?;
        self.flush().await
    }

    /// Write `f` into the write buffer, at the rate, without flushing it:
    /// a frame inside a body goes out with the body's bytes.
    async fn put_frame(&mut self, f: &Frame) -> Result<(), ConnError> {
        let bytes = f.to_bytes();
        self.pace(bytes.len()).await;
        within(self.peer_timeout, self.writer.write_all(&bytes)).await??;
        Ok(())
    }

    /// Run `work` to completion, sending a `Ping` every `every` meanwhile so
    /// the peer knows this end is alive while it has nothing else to say.
    /// `work` is never cut short, even when a ping fails (its result may be
    /// durable state that must be kept); the ping failure, if any, comes
    /// back beside its output, and no further ping is tried after one.
    pub async fn ping_while<F: Future>(
        &mut self,
        every: Duration,
        work: F,
    ) -> (F::Output, Result<(), ConnError>) {
        let mut work = std::pin::pin!(work);
        let mut next = tokio::time::Instant::now() + every;
        loop {
            tokio::select! {
                biased;
                out = &mut work => return (out, Ok(())),
                _ = tokio::time::sleep_until(next) => {
                    next = tokio::time::Instant::now() + every;
                    if let Err(e) = self.write_frame(&Frame::Ping).await {
                        return (work.await, Err(e));
                    }
                }
            }
        }
    }

    /// Body bytes into the write buffer, in slices at the rate, if one is
    /// set (no flush without one).
    async fn put_body(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let slice_len = self.write_slice();
        for slice in bytes.chunks(slice_len) {
            self.pace(slice.len()).await;
            // At a rate, each slice goes out as it is paced: left in the
            // write buffer, a slow link would see nothing for as long as
            // the buffer takes to fill, then a burst.
            let flush = self.rate.is_some();
            let writer = &mut self.writer;
            within(self.peer_timeout, async {
                writer.write_all(slice).await?;
                if flush { writer.flush().await } else { Ok(()) }
            })
            .await??;
        }
        Ok(())
    }

    /// One chunk of a streamed body, after its `Chunk` frame, into the
    /// write buffer (see [`Self::put_body`]). `paced`: the bytes were
    /// there before the chunk before went out (see [`Frame::Chunk`]).
    pub async fn send_chunk(&mut self, bytes: &[u8], paced: bool) -> Result<(), ConnError> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|l| (1..=frame::MAX_CHUNK).contains(l))
            .ok_or_else(|| io::Error::other(format!("a chunk of {} bytes", bytes.len())))?;
        self.put_frame(&Frame::Chunk { len, paced }).await?;
        self.put_body(bytes).await
    }

    /// Send what the write buffer holds.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        within(self.peer_timeout, self.writer.flush()).await??;
        Ok(())
    }

    /// Send `size` bytes of the file at `path` as a bundle body (no flush),
    /// returning their BLAKE3 for the trailer. A blocking thread reads and
    /// hashes the file in large chunks while this task writes to the
    /// socket, so disk, hash and network overlap and the bundle is read
    /// once: the trailer vouches for exactly the bytes that went out.
    pub async fn send_body(&mut self, path: &Path, size: u64) -> Result<blake3::Hash, ConnError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(4);
        // Sent buffers go back to be filled again, as in `recv_body`.
        let (spent_tx, spent) = std::sync::mpsc::channel::<Vec<u8>>();
        let path_owned = path.to_owned();
        let reader = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut hasher = blake3::Hasher::new();
            let mut file = match std::fs::File::open(&path_owned) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return None;
                }
            };
            let mut left = size;
            while left > 0 {
                let mut buf = spent.try_recv().unwrap_or_default();
                buf.resize(CHUNK.min(left as usize), 0);
                if let Err(e) = file.read_exact(&mut buf) {
                    let _ = tx.blocking_send(Err(e));
                    return None;
                }
                left -= buf.len() as u64;
                hasher.update(&buf);
                if tx.blocking_send(Ok(buf)).is_err() {
                    return None;
                }
            }
            Some(hasher.finalize())
        });
        while let Some(chunk) = rx.recv().await {
            let chunk =
                chunk.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            self.put_body(&chunk).await?;
            let _ = spent_tx.send(chunk);
        }
        match reader.await {
            Ok(Some(hash)) => Ok(hash),
            // Every error was sent down the channel and returned above;
            // only a panicked reader gets here.
            _ => Err(
                io::Error::other(format!("{}: reading the bundle failed", path.display())).into(),
            ),
        }
    }
}

/// The time a rate is reckoned in: tokio's clock, so a test with the clock
/// paused sees the waits exactly.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Let the kernel notice a dead peer too: TCP keepalive probes a connection
/// idle for a third of `limit` (which also keeps NAT and firewall state
/// fresh), and `TCP_USER_TIMEOUT` fails the socket once sent data stays
/// unacknowledged for `limit`. Both fire only when packets go unanswered; a
/// peer whose TCP answers but that no longer speaks (a stuck process, a
/// proxy that stopped forwarding) is caught by the connection's own timeout.
pub fn set_liveness(stream: &tokio::net::TcpStream, limit: Duration) -> io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    let idle = (limit / 3).max(Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new().with_time(idle);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let keepalive = keepalive.with_interval(idle).with_retries(3);
    sock.set_tcp_keepalive(&keepalive)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(limit))?;
    Ok(())
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
