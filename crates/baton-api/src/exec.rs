//! The frames of `POST /v1/tasks/{id}/exec`, a full-duplex HTTP/2 exchange:
//! the request body is a stream of [`ClientFrame`]s (a [`ClientFrame::Start`]
//! first), the response body a stream of [`ServerFrame`]s ending with
//! [`ServerFrame::Exit`] or [`ServerFrame::Error`].
//!
//! A frame is one kind byte, a big-endian `u32` length and that many bytes of
//! payload (at most [`MAX_FRAME`]): binary-safe, so a command's output passes
//! untouched.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Largest payload of one frame.
pub const MAX_FRAME: usize = 1 << 20;

/// Most arguments of an exec'd command.
pub const MAX_EXEC_ARGS: usize = 256;

/// What the client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// First frame: what to run.
    Start(ExecStart),
    /// Bytes for the command's stdin.
    Stdin(Bytes),
    /// The command's stdin is closed.
    StdinEof,
    /// The client's terminal was resized.
    Resize(TtySize),
}

/// The command of an exec session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStart {
    /// argv; never empty.
    pub command: Vec<String>,
    /// Run it on a pseudo-terminal of this size (the client's stdin is a
    /// terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
}

/// A terminal's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// What the server sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// Output on the command's stdout.
    Stdout(Bytes),
    /// Output on its stderr.
    Stderr(Bytes),
    /// It ended (last frame).
    Exit(ExecExit),
    /// It could not run, or the session broke (last frame).
    Error(String),
}

/// How an exec'd command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecExit {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if one killed it.
    pub signal: Option<i32>,
}

/// A frame that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Its length is over [`MAX_FRAME`].
    #[error("exec frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLong(usize),
    /// Its kind is unknown.
    #[error("unknown exec frame kind {0}")]
    UnknownKind(u8),
    /// Its payload is not what its kind holds.
    #[error("bad exec frame: {0}")]
    Bad(String),
}

const START: u8 = 1;
const STDIN: u8 = 2;
const STDIN_EOF: u8 = 3;
const RESIZE: u8 = 4;
const STDOUT: u8 = 11;
const STDERR: u8 = 12;
const EXIT: u8 = 13;
const ERROR: u8 = 14;

fn frame(kind: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + payload.len());
    out.put_u8(kind);
    out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
    out.put_slice(payload);
    out.freeze()
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and integers always serialize.
    serde_json::to_vec(value).unwrap_or_default()
}

impl ClientFrame {
    /// The frame's bytes.
    pub fn encode(&self) -> Bytes {
        match self {
            ClientFrame::Start(start) => frame(START, &json(start)),
            ClientFrame::Stdin(bytes) => frame(STDIN, bytes),
            ClientFrame::StdinEof => frame(STDIN_EOF, &[]),
            ClientFrame::Resize(size) => frame(RESIZE, &json(size)),
        }
    }
}

impl ServerFrame {
    /// The frame's bytes.
    pub fn encode(&self) -> Bytes {
        match self {
            ServerFrame::Stdout(bytes) => frame(STDOUT, bytes),
            ServerFrame::Stderr(bytes) => frame(STDERR, bytes),
            ServerFrame::Exit(exit) => frame(EXIT, &json(exit)),
            ServerFrame::Error(message) => frame(ERROR, message.as_bytes()),
        }
    }
}

/// Splits a byte stream into frames: feed it what arrives, take what is
/// complete.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: BytesMut,
}

impl FrameBuffer {
    /// Adds bytes received.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete (kind, payload), if any.
    fn next_raw(&mut self) -> Result<Option<(u8, Bytes)>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let kind = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_FRAME {
            return Err(FrameError::TooLong(len));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some((kind, self.buf.split_to(len).freeze())))
    }

    /// The next complete client frame.
    pub fn next_client(&mut self) -> Result<Option<ClientFrame>, FrameError> {
        let Some((kind, payload)) = self.next_raw()? else {
            return Ok(None);
        };
        Ok(Some(match kind {
            START => ClientFrame::Start(
                serde_json::from_slice(&payload).map_err(|e| FrameError::Bad(e.to_string()))?,
            ),
            STDIN => ClientFrame::Stdin(payload),
            STDIN_EOF => ClientFrame::StdinEof,
            RESIZE => ClientFrame::Resize(
                serde_json::from_slice(&payload).map_err(|e| FrameError::Bad(e.to_string()))?,
            ),
            other => return Err(FrameError::UnknownKind(other)),
        }))
    }

    /// The next complete server frame.
    pub fn next_server(&mut self) -> Result<Option<ServerFrame>, FrameError> {
        let Some((kind, payload)) = self.next_raw()? else {
            return Ok(None);
        };
        Ok(Some(match kind {
            STDOUT => ServerFrame::Stdout(payload),
            STDERR => ServerFrame::Stderr(payload),
            EXIT => ServerFrame::Exit(
                serde_json::from_slice(&payload).map_err(|e| FrameError::Bad(e.to_string()))?,
            ),
            ERROR => ServerFrame::Error(String::from_utf8_lossy(&payload).into_owned()),
            other => return Err(FrameError::UnknownKind(other)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_whatever_the_chunking() {
        let client = [
            ClientFrame::Start(ExecStart {
                command: vec!["sh".into(), "-c".into(), "cat".into()],
                tty: Some(TtySize { rows: 24, cols: 80 }),
            }),
            ClientFrame::Resize(TtySize {
                rows: 50,
                cols: 132,
            }),
            ClientFrame::Stdin(Bytes::from_static(b"\x00\xffbinary")),
            ClientFrame::StdinEof,
        ];
        let server = [
            ServerFrame::Stdout(Bytes::from_static(b"out")),
            ServerFrame::Stderr(Bytes::new()),
            ServerFrame::Exit(ExecExit {
                code: Some(3),
                signal: None,
            }),
            ServerFrame::Error("gone".into()),
        ];
        let bytes: Vec<u8> = client.iter().flat_map(|f| f.encode().to_vec()).collect();
        // One byte at a time: every split point.
        let mut buf = FrameBuffer::default();
        let mut got = Vec::new();
        for b in &bytes {
            buf.extend(&[*b]);
            while let Some(frame) = buf.next_client().expect("decodes") {
                got.push(frame);
            }
        }
        assert_eq!(got, client);
        let bytes: Vec<u8> = server.iter().flat_map(|f| f.encode().to_vec()).collect();
        let mut buf = FrameBuffer::default();
        buf.extend(&bytes);
        let mut got = Vec::new();
        while let Some(frame) = buf.next_server().expect("decodes") {
            got.push(frame);
        }
        assert_eq!(got, server);
    }

    #[test]
    fn oversized_and_unknown_frames_are_refused() {
        let mut buf = FrameBuffer::default();
        buf.extend(&[STDIN, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(buf.next_client(), Err(FrameError::TooLong(_))));
        let mut buf = FrameBuffer::default();
        buf.extend(&[99, 0, 0, 0, 0]);
        assert_eq!(buf.next_client(), Err(FrameError::UnknownKind(99)));
        let mut buf = FrameBuffer::default();
        buf.extend(&frame(START, b"{not json"));
        assert!(matches!(buf.next_client(), Err(FrameError::Bad(_))));
    }
}
