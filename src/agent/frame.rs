//! Length-prefixed agent frames, capped before anything is buffered.

use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use zeroize::{Zeroize, Zeroizing};

/// OpenSSH's AGENT_MAX_LEN: no frame may exceed 256 KiB.
pub const MAX_FRAME: usize = 256 * 1024;

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

/// Read one frame body. The length is checked before the body's buffer is allocated, so a
/// client can make the agent hold at most [`MAX_FRAME`] bytes for it (plus [`ReadAhead`]'s).
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, timeouts: FrameTimeouts) -> Result<Vec<u8>, FrameError> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeouts.idle, reader.read(&mut first)).await {
        Err(_) => return Err(FrameError::Idle(timeouts.idle)),
        Ok(Ok(0)) => return Err(FrameError::Closed),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.into()),
    }
    let rest = async {
        let mut len_rest = [0u8; 3];
        reader.read_exact(&mut len_rest).await.map_err(eof_is_closed)?;
        let len = u32::from_be_bytes([first[0], len_rest[0], len_rest[1], len_rest[2]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len as u64));
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await.map_err(eof_is_closed)?;
        Ok(body)
    };
    tokio::time::timeout(timeouts.frame, rest).await.map_err(|_| FrameError::Slow(timeouts.frame))?
}

fn eof_is_closed(e: std::io::Error) -> FrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        FrameError::Closed
    } else {
        FrameError::Io(e)
    }
}

/// A small read-ahead buffer for a connection: one `read(2)` usually brings a whole request
/// (its length and body) instead of three. Its bytes are wiped as soon as they are consumed
/// and when it is dropped, because a frame may carry a lock passphrase. Reads as large as the
/// buffer bypass it.
pub struct ReadAhead<R> {
    inner: R,
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    filled: usize,
}

impl<R> ReadAhead<R> {
    pub fn new(inner: R, capacity: usize) -> ReadAhead<R> {
        ReadAhead { inner, buf: Zeroizing::new(vec![0; capacity.max(1)]), pos: 0, filled: 0 }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ReadAhead<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.pos == this.filled {
            if out.remaining() >= this.buf.len() {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            let mut ahead = ReadBuf::new(&mut this.buf[..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut ahead))?;
            this.filled = ahead.filled().len();
            this.pos = 0;
        }
        let n = out.remaining().min(this.filled - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        if this.pos == this.filled {
            this.buf[..this.filled].zeroize();
            (this.pos, this.filled) = (0, 0);
        }
        Poll::Ready(Ok(()))
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

    #[tokio::test]
    async fn reads_a_frame() {
        let mut input: &[u8] = &[0, 0, 0, 1, 11];
        assert_eq!(read_frame(&mut input, T).await.unwrap(), vec![11]);
        assert!(matches!(read_frame(&mut input, T).await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn refuses_oversized_length_without_reading_body() {
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut input, T).await, Err(FrameError::TooLarge(0xffff_ffff))));
        let just_over = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let mut input: &[u8] = &just_over;
        assert!(matches!(read_frame(&mut input, T).await, Err(FrameError::TooLarge(_))));
    }

    #[tokio::test]
    async fn truncated_frames_are_closed() {
        let mut input: &[u8] = &[0, 0];
        assert!(matches!(read_frame(&mut input, T).await, Err(FrameError::Closed)));
        let mut input: &[u8] = &[0, 0, 0, 9, 13, 0];
        assert!(matches!(read_frame(&mut input, T).await, Err(FrameError::Closed)));
        let mut input: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(read_frame(&mut input, T).await, Err(FrameError::Empty)));
    }

    #[tokio::test]
    async fn read_ahead_yields_the_same_frames_and_wipes_what_it_consumed() {
        let big = vec![7u8; 10_000];
        let mut input = Vec::new();
        for body in [&[11u8][..], &[13, 1, 2, 3][..], &big[..], &[25, 9, 9][..]] {
            input.extend_from_slice(&(body.len() as u32).to_be_bytes());
            input.extend_from_slice(body);
        }
        // A reader that hands out at most 7 bytes a call, as a socket may.
        let (mut client, server) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move { client.write_all(&input).await });
        let mut reader = ReadAhead::new(server, 64);
        assert_eq!(read_frame(&mut reader, T).await.unwrap(), vec![11]);
        assert_eq!(read_frame(&mut reader, T).await.unwrap(), vec![13, 1, 2, 3]);
        assert_eq!(read_frame(&mut reader, T).await.unwrap(), big);
        assert_eq!(read_frame(&mut reader, T).await.unwrap(), vec![25, 9, 9]);
        writer.await.unwrap().unwrap();
        assert!(matches!(read_frame(&mut reader, T).await, Err(FrameError::Closed)));
        assert!(reader.buf.iter().all(|&b| b == 0), "consumed bytes stay in memory");
    }

    #[tokio::test]
    async fn read_ahead_still_caps_and_keeps_unread_bytes() {
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let mut reader = ReadAhead::new(&mut input, 4096);
        assert!(matches!(read_frame(&mut reader, T).await, Err(FrameError::TooLarge(0xffff_ffff))));
        let mut two = [0u8; 2];
        reader.read_exact(&mut two).await.unwrap();
        assert_eq!(two, [1, 2], "bytes after the refused length are still there, in order");
        let mut last = [0u8; 1];
        reader.read_exact(&mut last).await.unwrap();
        assert_eq!(last, [3]);
        assert!(reader.buf.iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn slow_and_idle_clients_time_out() {
        let t = FrameTimeouts { idle: Duration::from_millis(50), frame: Duration::from_millis(50) };
        let (mut client, mut server) = tokio::io::duplex(64);
        assert!(matches!(read_frame(&mut server, t).await, Err(FrameError::Idle(_))));
        client.write_all(&[0]).await.unwrap();
        assert!(matches!(read_frame(&mut server, t).await, Err(FrameError::Slow(_))));
    }
}
