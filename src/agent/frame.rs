//! Length-prefixed agent frames, capped before anything is buffered.

use std::ops::Deref;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::{Zeroize, Zeroizing};

/// OpenSSH's AGENT_MAX_LEN: no frame may exceed 256 KiB.
pub const MAX_FRAME: usize = 256 * 1024;

/// A connection's read-ahead: one `read(2)` usually brings a whole request.
pub const READ_AHEAD: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("client closed the connection")]
    Closed,
    #[error("frame of {0} bytes exceeds the 256 KiB limit")]
    TooLarge(u64),
    #[error("empty frame")]
    Empty,
    #[error("client was idle for {0:?}")]
    Idle(Duration),
    #[error("client took longer than {0:?} to send one frame")]
    Slow(Duration),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Timeouts that keep idle and slow clients from holding resources.
#[derive(Clone, Copy, Debug)]
pub struct FrameTimeouts {
    /// Waiting for the first byte of a frame.
    pub idle: Duration,
    /// From the first byte of a frame to its last.
    pub frame: Duration,
}

/// Reads frames from one connection through a small read-ahead buffer.
///
/// A request that fits the buffer (nearly all do) arrives in one `read(2)` and is lent to the
/// caller in place, so the request decoder's copy is the only one. A longer frame gets a buffer
/// of its own, allocated only after its length passed the cap. A lent frame's bytes are wiped
/// when the next frame is read, and everything on drop: a frame may carry a lock passphrase.
pub struct FrameReader<R> {
    inner: R,
    buf: Zeroizing<Vec<u8>>,
    /// Every frame starts at `buf[0]`. `buf[..consumed]` was handed out (wiped at the next
    /// read); `buf[consumed..filled]` was read ahead.
    consumed: usize,
    filled: usize,
}

/// One frame body: lent from the reader's buffer, or its own (wiped on drop).
pub enum Frame<'a> {
    Lent(&'a [u8]),
    Owned(Zeroizing<Vec<u8>>),
}

impl Deref for Frame<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Frame::Lent(b) => b,
            Frame::Owned(b) => b,
        }
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader::with_capacity(inner, READ_AHEAD)
    }

    fn with_capacity(inner: R, capacity: usize) -> FrameReader<R> {
        FrameReader { inner, buf: Zeroizing::new(vec![0; capacity.max(4)]), consumed: 0, filled: 0 }
    }

    /// The stream itself (e.g. to notice the peer hanging up while a request runs).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Read the next frame. Its length is checked before any buffer is allocated for it.
    pub async fn next(&mut self, timeouts: FrameTimeouts) -> Result<Frame<'_>, FrameError> {
        self.reclaim();
        if self.filled == 0 {
            match tokio::time::timeout(timeouts.idle, self.fill()).await {
                Err(_) => return Err(FrameError::Idle(timeouts.idle)),
                Ok(Ok(0)) => return Err(FrameError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        tokio::time::timeout(timeouts.frame, self.rest()).await.map_err(|_| FrameError::Slow(timeouts.frame))?
    }

    /// The frame after its first byte is buffered.
    async fn rest(&mut self) -> Result<Frame<'_>, FrameError> {
        self.buffer_at_least(4).await?;
        let header: [u8; 4] = self.buf[..4].try_into().expect("four bytes");
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len as u64));
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if 4 + len <= self.buf.len() {
            self.buffer_at_least(4 + len).await?;
            self.consumed = 4 + len;
            return Ok(Frame::Lent(&self.buf[4..4 + len]));
        }
        let mut body = Zeroizing::new(vec![0u8; len]);
        let have = self.filled - 4;
        body[..have].copy_from_slice(&self.buf[4..self.filled]);
        self.consumed = self.filled;
        self.reclaim();
        self.inner.read_exact(&mut body[have..]).await.map_err(eof_is_closed)?;
        Ok(Frame::Owned(body))
    }

    /// Have the frame's first `n` bytes (at most the buffer's size) in the buffer.
    async fn buffer_at_least(&mut self, n: usize) -> Result<(), FrameError> {
        while self.filled < n {
            if self.fill().await? == 0 {
                return Err(FrameError::Closed);
            }
        }
        Ok(())
    }

    /// One read into the free end of the buffer.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let n = self.inner.read(&mut self.buf[self.filled..]).await?;
        self.filled += n;
        Ok(n)
    }

    /// Wipe the frame handed out last and move the bytes read ahead of it to the front.
    fn reclaim(&mut self) {
        let (consumed, filled) = (self.consumed, self.filled);
        if consumed == 0 {
            return;
        }
        self.buf.copy_within(consumed..filled, 0);
        self.buf[filled - consumed..filled].zeroize();
        (self.consumed, self.filled) = (0, filled - consumed);
    }
}

fn eof_is_closed(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Closed
    } else {
        FrameError::Io(e)
    }
}

/// Write one frame (length prefix + body) in a single write.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, body: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    writer.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: FrameTimeouts = FrameTimeouts { idle: Duration::from_secs(5), frame: Duration::from_secs(5) };

    async fn next_owned<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Result<Vec<u8>, FrameError> {
        reader.next(T).await.map(|f| f.to_vec())
    }

    fn framed(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for body in bodies {
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(body);
        }
        out
    }

    #[tokio::test]
    async fn reads_a_frame() {
        let mut reader = FrameReader::new(&[0u8, 0, 0, 1, 11][..]);
        assert_eq!(next_owned(&mut reader).await.unwrap(), vec![11]);
        assert!(matches!(reader.next(T).await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn refuses_oversized_length_without_reading_body() {
        let mut reader = FrameReader::new(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(reader.next(T).await, Err(FrameError::TooLarge(0xffff_ffff))));
        let just_over = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let mut reader = FrameReader::new(&just_over[..]);
        assert!(matches!(reader.next(T).await, Err(FrameError::TooLarge(_))));
        let exactly = framed(&[&vec![5u8; MAX_FRAME]]);
        let mut reader = FrameReader::new(&exactly[..]);
        assert_eq!(next_owned(&mut reader).await.unwrap().len(), MAX_FRAME);
    }

    #[tokio::test]
    async fn truncated_frames_are_closed() {
        for input in [&[0u8, 0][..], &[0, 0, 0, 9, 13, 0][..], &framed(&[&[1u8; 5000]])[..4000]] {
            let mut reader = FrameReader::new(input);
            assert!(matches!(reader.next(T).await, Err(FrameError::Closed)), "{} bytes", input.len());
        }
        let mut reader = FrameReader::new(&[0u8, 0, 0, 0][..]);
        assert!(matches!(reader.next(T).await, Err(FrameError::Empty)));
    }

    #[tokio::test]
    async fn frames_split_anyhow_arrive_whole_and_in_order() {
        let big = vec![7u8; 10_000];
        let bodies: [&[u8]; 5] = [&[11], &[13, 1, 2, 3], &big, &[25, 9, 9], &[27; 50]];
        let input = framed(&bodies);
        // A pipe that moves at most 7 bytes at a time, as a socket may; a 64-byte read-ahead so
        // frames straddle its end and the 10,000-byte one gets its own buffer.
        let (mut client, server) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move { client.write_all(&input).await });
        let mut reader = FrameReader::with_capacity(server, 64);
        for body in bodies {
            assert_eq!(next_owned(&mut reader).await.unwrap(), body);
        }
        writer.await.unwrap().unwrap();
        assert!(matches!(reader.next(T).await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn consumed_bytes_are_wiped() {
        let secret = b"\x16passphrase-that-must-not-linger";
        let pipelined = b"\x16a-second-one";
        let input = framed(&[secret, &[11], pipelined]);
        let mut reader = FrameReader::new(&input[..]);
        assert_eq!(&*reader.next(T).await.unwrap(), secret);
        assert_eq!(&*reader.next(T).await.unwrap(), &[11]);
        let lingering = |r: &FrameReader<&[u8]>| r.buf.windows(10).any(|w| w == b"passphrase");
        assert!(!lingering(&reader), "a consumed frame is still in the buffer");
        assert_eq!(&*reader.next(T).await.unwrap(), pipelined);
        assert!(matches!(reader.next(T).await, Err(FrameError::Closed)));
        assert!(reader.buf.iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn slow_and_idle_clients_time_out() {
        let t = FrameTimeouts { idle: Duration::from_millis(50), frame: Duration::from_millis(50) };
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server);
        assert!(matches!(reader.next(t).await, Err(FrameError::Idle(_))));
        client.write_all(&[0]).await.unwrap();
        assert!(matches!(reader.next(t).await, Err(FrameError::Slow(_))));
    }
}
