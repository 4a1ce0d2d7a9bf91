//! The control socket: `<state>/daemon.sock`, mode 0600, one JSON request
//! and one JSON answer per line, one request per connection.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::report::{CandidateReport, Selection, StatusReport};

/// The socket's file name in the state dir.
pub const SOCKET: &str = "daemon.sock";

/// A request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// Is anyone there?
    Ping,
    /// `status` with the top `top` rows.
    Status {
        /// Leaderboard length.
        top: usize,
    },
    /// One candidate by id prefix or baseline name.
    Show {
        /// The key.
        id: String,
    },
    /// Candidates for `export`.
    Select {
        /// Which.
        selection: Selection,
    },
    /// Drain and exit.
    Stop,
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Answer {
    /// To `ping`.
    Pong {
        /// The daemon's pid.
        pid: u32,
    },
    /// To `status`.
    Status {
        /// The report.
        report: Box<StatusReport>,
    },
    /// To `show`.
    Show {
        /// The report.
        report: Box<CandidateReport>,
    },
    /// To `select`.
    Selected {
        /// Best first.
        candidates: Vec<CandidateReport>,
    },
    /// To `stop`.
    Stopping {
        /// The daemon's pid.
        pid: u32,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// The socket path of a state dir.
pub fn socket_path(state: &Path) -> PathBuf {
    state.join(SOCKET)
}

/// Sends one request and reads the answer. `Err` when nothing listens.
///
/// # Errors
/// No socket, no listener, a timeout, or a malformed answer.
pub fn request(state: &Path, req: &Request, timeout: Duration) -> io::Result<Answer> {
    let mut s = UnixStream::connect(socket_path(state))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req).expect("requests serialise");
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad answer: {e}")))
}

/// Wakes [`serve`] after `closing` was set: it returns at its next
/// connection. Errors mean nobody listens any more.
pub fn wake(state: &Path) {
    let _ = UnixStream::connect(socket_path(state));
}

/// Binds the socket (replacing a stale one: the caller holds the database
/// lock, so no other daemon serves this state dir) with mode 0600.
///
/// # Errors
/// Binding or setting the mode failed.
pub fn bind(state: &Path) -> io::Result<UnixListener> {
    let path = socket_path(state);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers connections, one line in and one line out, until `closing` is
/// set and a connection wakes it ([`wake`]).
pub fn serve(listener: UnixListener, handle: impl Fn(Request) -> Answer, closing: &AtomicBool) {
    for conn in listener.incoming() {
        if closing.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        let Ok(reader) = conn.try_clone() else {
            continue;
        };
        if BufReader::new(reader).read_line(&mut line).is_err() {
            continue;
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req),
            Err(e) => Answer::Error {
                message: format!("malformed request: {e}"),
            },
        };
        let mut out = serde_json::to_string(&answer).expect("answers serialise");
        out.push('\n');
        let _ = conn.write_all(out.as_bytes());
    }
}
