//! A connection owns one stream and speaks frames over it; bundle bodies are
//! streamed between files and the socket in fixed-size buffers, hashed on
//! the way in, never held whole in memory.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

use super::frame::{self, Frame, FrameError, HEADER_LEN};

const BODY_BUF: usize = 256 * 1024;
/// Bundle bodies move between disk and socket in chunks this large.
const CHUNK: usize = 1 << 20;

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
    #[error("unexpected {0}")]
    Unexpected(String),
}

pub struct Connection<S> {
    reader: BufReader<tokio::io::ReadHalf<S>>,
    writer: BufWriter<tokio::io::WriteHalf<S>>,
}

impl<S: AsyncRead + AsyncWrite> Connection<S> {
    pub fn new(stream: S) -> Self {
        let (r, w) = tokio::io::split(stream);
        Self {
            reader: BufReader::with_capacity(BODY_BUF, r),
            writer: BufWriter::with_capacity(BODY_BUF, w),
        }
    }

    /// Read the next frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ConnError> {
        let mut header = [0u8; HEADER_LEN];
        match self.reader.read_exact(&mut header[..1]).await {
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

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ConnError> {
        match self.reader.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ConnError::Closed),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn write_frame(&mut self, f: &Frame) -> Result<(), ConnError> {
        self.writer.write_all(&f.to_bytes()).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Send `size` bytes of the file at `path` as a bundle body (no flush).
    /// A blocking thread reads the file in large chunks while this task
    /// writes to the socket, so disk and network overlap.
    pub async fn send_body(&mut self, path: &Path, size: u64) -> Result<(), ConnError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(4);
        let path_owned = path.to_owned();
        let reader = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = match std::fs::File::open(&path_owned) {
                Ok(f) => f,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            let mut left = size;
            while left > 0 {
                let mut buf = vec![0u8; CHUNK.min(left as usize)];
                match file.read_exact(&mut buf) {
                    Ok(()) => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
                left -= buf.len() as u64;
                if tx.blocking_send(Ok(buf)).is_err() {
                    return;
                }
            }
        });
        while let Some(chunk) = rx.recv().await {
            let chunk =
                chunk.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            self.writer.write_all(&chunk).await?;
        }
        let _ = reader.await;
        Ok(())
    }

    /// Receive exactly `size` body bytes into the file at `path`, returning
    /// their BLAKE3 and the first write error, if any. A blocking thread
    /// writes and hashes while this task reads the socket. After a write
    /// error (a full disk) the rest of the body is still read, so the
    /// stream stays in step and the bundle can be refused with the reason.
    pub async fn recv_body(
        &mut self,
        size: u64,
        path: &Path,
    ) -> Result<(blake3::Hash, Option<io::Error>), ConnError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let path_owned = path.to_owned();
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut hasher = blake3::Hasher::new();
            let mut write_error = None;
            let mut file = match std::fs::File::create(&path_owned) {
                Ok(f) => Some(f),
                Err(e) => {
                    write_error = Some(e);
                    None
                }
            };
            for chunk in rx {
                hasher.update(&chunk);
                if let Some(f) = file.as_mut()
                    && let Err(e) = f.write_all(&chunk)
                {
                    write_error = Some(e);
                    file = None;
                }
            }
            (hasher.finalize(), write_error)
        });
        let mut left = size;
        while left > 0 {
            let want = CHUNK.min(usize::try_from(left).unwrap_or(usize::MAX));
            let mut buf = vec![0u8; want];
            let mut filled = 0;
            while filled < want {
                let n = self.reader.read(&mut buf[filled..]).await?;
                if n == 0 {
                    return Err(ConnError::Closed);
                }
                filled += n;
            }
            left -= want as u64;
            // The writer thread only stops early if it panicked.
            if tx.send(buf).is_err() {
                break;
            }
        }
        drop(tx);
        writer.await.map_err(|e| ConnError::Io(io::Error::other(e)))
    }
}
