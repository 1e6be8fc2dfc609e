//! What the agent and a `baton shim` say to each other, over the socket on the
//! shim's stdin: one JSON document per line, at most [`MAX_FRAME`] bytes.
//!
//! agent → shim: [`Request::Create`] once, then any number of
//! [`Request::Signal`]; closing the socket means "the agent is gone": the shim
//! kills the task and cleans up. shim → agent: [`Response::Started`] or
//! [`Response::Failed`], then [`Response::Exited`] once the task ended and its
//! container was deleted.

use std::io::{self, BufRead, Read, Write};
use std::path::PathBuf;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

/// Longest frame read (the spec of a task with a large environment fits).
pub const MAX_FRAME: usize = 1 << 20;

/// From the agent.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Create and start the container.
    Create {
        /// Container id (the task id).
        id: String,
        /// The runtime's state directory (one per agent).
        state_root: PathBuf,
        /// Where to write the bundle (`config.json`); kept while the task
        /// runs (`baton exec` reads the task's process from it), removed
        /// when it ends.
        bundle: PathBuf,
        /// The runtime spec. Its environment may hold secrets.
        spec: Box<Spec>,
    },
    /// Run a command inside the running container `id` (`baton exec`), as
    /// the task's user, with its capabilities, no new privileges and its
    /// seccomp filter, all read from the container's own spec. The shim's
    /// stdio is the command's.
    Exec {
        /// Container id (the task id).
        id: String,
        /// The runtime's state directory.
        state_root: PathBuf,
        /// argv.
        command: Vec<String>,
        /// Run it on a pseudo-terminal of (rows, columns).
        #[serde(default)]
        tty: Option<(u16, u16)>,
    },
    /// The exec'd command's terminal was resized.
    Resize {
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Send a signal to the process the shim watches.
    Signal {
        /// Signal number.
        signal: i32,
    },
}

// By hand: the spec's environment may hold secrets.
impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Create { id, .. } => f.debug_struct("Create").field("id", id).finish(),
            Request::Exec { id, command, .. } => f
                .debug_struct("Exec")
                .field("id", id)
                .field("program", &command.first())
                .finish_non_exhaustive(),
            Request::Resize { rows, cols } => f
                .debug_struct("Resize")
                .field("rows", rows)
                .field("cols", cols)
                .finish(),
            Request::Signal { signal } => f.debug_struct("Signal").field("signal", signal).finish(),
        }
    }
}

/// From the shim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// The task runs: its PID 1, as a host pid.
    Started {
        /// Host pid of the task's PID 1.
        pid: u32,
        /// Microseconds from the request to the started task.
        micros: u64,
    },
    /// The task could not be started.
    Failed {
        /// Why.
        message: String,
    },
    /// The task ended, and its container and cgroup are gone.
    Exited {
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if one killed it.
        signal: Option<i32>,
        /// How many of its processes the kernel killed for memory.
        oom_kills: u64,
    },
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(out: &mut impl Write, frame: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(frame).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)?;
    out.flush()
}

/// Reads one frame; `None` at the end of the stream.
pub fn read_frame<T: for<'de> Deserialize<'de>>(input: &mut impl BufRead) -> io::Result<Option<T>> {
    let mut line = Vec::new();
    let read = input
        .by_ref()
        .take(u64::try_from(MAX_FRAME).unwrap_or(u64::MAX) + 1)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame longer than {MAX_FRAME} bytes or cut short"),
        ));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut buf = Vec::new();
        let started = Response::Started { pid: 42, micros: 7 };
        write_frame(&mut buf, &started).expect("write");
        write_frame(
            &mut buf,
            &Response::Failed {
                message: "no".into(),
            },
        )
        .expect("write");
        let mut input = io::Cursor::new(buf);
        assert_eq!(
            read_frame::<Response>(&mut input).expect("read"),
            Some(started)
        );
        assert!(matches!(
            read_frame::<Response>(&mut input).expect("read"),
            Some(Response::Failed { .. })
        ));
        assert_eq!(read_frame::<Response>(&mut input).expect("eof"), None);
    }

    #[test]
    fn an_oversized_or_cut_frame_is_refused() {
        let mut big = vec![b'"'; MAX_FRAME + 10];
        big.push(b'\n');
        let err = read_frame::<Response>(&mut io::Cursor::new(big)).expect_err("too long");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err =
            read_frame::<Response>(&mut io::Cursor::new(b"{\"type\":".to_vec())).expect_err("cut");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn debug_of_a_create_request_names_only_the_id() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "env": ["TOKEN=s3cr3t"]},
        }))
        .expect("spec");
        let request = Request::Create {
            id: "t1".into(),
            state_root: "/run/x".into(),
            bundle: "/run/b".into(),
            spec: Box::new(spec),
        };
        let text = format!("{request:?}");
        assert!(text.contains("t1") && !text.contains("s3cr3t"), "{text}");
    }
}
