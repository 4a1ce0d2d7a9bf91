//! The control socket: `<state>/daemon.sock`, mode 0600, one JSON request
//! and one JSON answer per line, one request per connection.
//!
//! The daemon answers whatever a client does: a request is read with a size
//! cap ([`MAX_REQUEST`]) and a deadline for the whole of it
//! ([`REQUEST_DEADLINE`]), each connection has its own thread (at most
//! [`MAX_CONNECTIONS`] at once; more are told to retry), and a request whose
//! handling panics is answered with an error while the socket goes on
//! serving.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::report::{CandidateReport, Selection, StatusReport};

/// The socket's file name in the state dir.
pub const SOCKET: &str = "daemon.sock";

/// Longest request read, newline included, in bytes (a request is a few
/// dozen; a selection of ids a few KiB).
pub const MAX_REQUEST: usize = 64 * 1024;

/// Time a client has to send its whole request, however it trickles in.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Time an answer may take to be taken by its client.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);

/// Connections served at once; one more is told to retry.
pub const MAX_CONNECTIONS: usize = 16;

/// Most leaderboard rows one `status` answers with.
pub const MAX_TOP: usize = 10_000;

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
    /// Every candidate as a point, and the scaled ones' fits (the
    /// dashboard's plots).
    Points,
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
    /// To `points`.
    Points {
        /// Every candidate.
        points: Box<crate::dashboard::Points>,
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
/// No socket, no listener, a timeout, a connection closed without a byte
/// of answer ([`io::ErrorKind::ConnectionAborted`]: a daemon stopping or
/// crashed; a reset connection is `ConnectionReset`), an answer cut off before its newline
/// ([`io::ErrorKind::UnexpectedEof`]: the daemon gave up sending it within
/// its deadline, or went away), or a whole answer this version cannot read
/// ([`io::ErrorKind::InvalidData`]).
pub fn request(state: &Path, req: &Request, timeout: Duration) -> io::Result<Answer> {
    let mut s = UnixStream::connect(socket_path(state))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req).expect("requests serialise");
    line.push('\n');
    s.write_all(line.as_bytes())?;
    read_answer(BufReader::new(s))
}

/// One answer line from `from`. Every answer the daemon sends ends with a
/// newline, so a line without one was cut off (or never begun): neither is
/// a sign of another version, and the error says which it was. Read as
/// bytes, so a cut inside a multi-byte character is a cut, not bad UTF-8.
fn read_answer(mut from: impl BufRead) -> io::Result<Answer> {
    let mut answer = Vec::new();
    from.read_until(b'\n', &mut answer)?;
    if answer.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the daemon closed the connection without answering (stopping, crashed, or out of \
             resources)",
        ));
    }
    if answer.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the answer was cut off after {} bytes (the daemon gives a client {} s to take \
                 an answer, and went away or gave up before this one was read whole)",
                answer.len(),
                ANSWER_DEADLINE.as_secs()
            ),
        ));
    }
    serde_json::from_slice(&answer)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad answer: {e}")))
}

/// Wakes [`serve`] after `closing` was set: it returns at its next
/// connection. Errors mean nobody listens any more.
pub fn wake(state: &Path) {
    let _ = UnixStream::connect(socket_path(state));
}

/// Longest socket path a Unix socket address holds, in bytes (`sun_path`
/// is 108 bytes on Linux, the last one a NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Checks that `state`'s socket path fits a Unix socket address.
///
/// # Errors
/// The path is too long, said with the limit and what to do.
pub fn check_socket_path(state: &Path) -> Result<(), String> {
    let path = socket_path(state);
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "the control socket {} would be {len} bytes long, and a Unix socket path holds at \
             most {MAX_SOCKET_PATH}: give a shorter --state (a relative path, or one under /tmp)",
            path.display()
        ));
    }
    Ok(())
}

/// Binds the socket (replacing a stale one: the caller holds the database
/// lock, so no other daemon serves this state dir), never reachable by
/// others: it is bound inside a fresh directory of mode 0700, set to 0600,
/// then renamed into place (a socket keeps its listener when renamed).
///
/// # Errors
/// A path too long for a socket, or binding, setting the mode or renaming
/// failed.
pub fn bind(state: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    check_socket_path(state).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let path = socket_path(state);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // Shorter than the final path, so it fits too; one name (the caller
    // holds the lock), so a kill between here and its removal leaves
    // nothing that the next bind does not clear.
    let private = state.join(".sock.d");
    if let Err(e) = std::fs::remove_dir_all(&private)
        && e.kind() != io::ErrorKind::NotFound
    {
        return Err(e);
    }
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = (|| -> io::Result<UnixListener> {
        let tmp = private.join("s");
        let listener = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, &path)?;
        Ok(listener)
    })();
    let removed = std::fs::remove_dir_all(&private);
    let listener = bound?;
    removed?;
    Ok(listener)
}

/// Answers connections, one line in and one line out, each on its own
/// thread (at most [`MAX_CONNECTIONS`] at once), until `closing` is set and a
/// connection wakes it ([`wake`]). Returns once every connection is answered.
pub fn serve(
    listener: UnixListener,
    handle: impl Fn(Request) -> Answer + Sync,
    closing: &AtomicBool,
) {
    let active = AtomicUsize::new(0);
    let (handle, active) = (&handle, &active);
    std::thread::scope(|scope| {
        for conn in listener.incoming() {
            if closing.load(Ordering::SeqCst) {
                return;
            }
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to close.
                    super::log(format!(
                        "control socket: accepting a connection failed: {e}"
                    ));
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if !take_slot(active) {
                let busy = Answer::Error {
                    message: format!(
                        "the daemon is answering {MAX_CONNECTIONS} other requests; try again"
                    ),
                };
                send(&mut conn, &busy, Duration::from_millis(100));
                continue;
            }
            let spawned = std::thread::Builder::new()
                .name("control-connection".into())
                .spawn_scoped(scope, move || {
                    let _slot = Slot(active);
                    converse(conn, handle);
                });
            if let Err(e) = spawned {
                active.fetch_sub(1, Ordering::SeqCst);
                super::log(format!("control socket: no thread for a connection: {e}"));
            }
        }
    });
}

/// Takes one of the [`MAX_CONNECTIONS`] places, waiting up to a second for
/// one to free (answers take milliseconds, so a burst of clients is served;
/// only clients that hold every place past their deadline make others wait
/// and then be refused).
fn take_slot(active: &AtomicUsize) -> bool {
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        if active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_CONNECTIONS).then_some(n + 1)
            })
            .is_ok()
        {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A connection's place among the [`MAX_CONNECTIONS`], given back on drop
/// (also when its thread unwinds).
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why no request was read.
#[derive(Debug)]
enum ReadError {
    /// More than [`MAX_REQUEST`] bytes without a newline.
    TooLong,
    /// The deadline passed first.
    Deadline,
    /// The client went away or the socket failed (nobody to answer).
    Gone,
}

/// Reads one request line (without its newline) within `deadline` and
/// `cap` bytes, newline included. A client that closes its side after a request without
/// newline has sent that request.
fn read_request(
    conn: &mut UnixStream,
    deadline: Duration,
    cap: usize,
) -> Result<Vec<u8>, ReadError> {
    let until = Instant::now() + deadline;
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Deadline);
        }
        conn.set_read_timeout(Some(left))
            .map_err(|_| ReadError::Gone)?;
        let n = match conn.read(&mut chunk) {
            Ok(0) if line.is_empty() => return Err(ReadError::Gone),
            Ok(0) => return Ok(line),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Deadline);
            }
            Err(_) => return Err(ReadError::Gone),
        };
        let new = &chunk[..n];
        if let Some(end) = new.iter().position(|&b| b == b'\n') {
            if line.len() + end + 1 > cap {
                return Err(ReadError::TooLong);
            }
            line.extend_from_slice(&new[..end]);
            return Ok(line);
        }
        // No room left for the newline.
        if line.len() + n >= cap {
            return Err(ReadError::TooLong);
        }
        line.extend_from_slice(new);
    }
}

/// Reads one request from `conn`, answers it, and closes.
fn converse(mut conn: UnixStream, handle: &(impl Fn(Request) -> Answer + Sync)) {
    let answer = match read_request(&mut conn, REQUEST_DEADLINE, MAX_REQUEST) {
        Ok(line) => match serde_json::from_slice::<Request>(&line) {
            Ok(req) => answer_safely(handle, req),
            Err(e) => Answer::Error {
                message: format!("malformed request: {e}"),
            },
        },
        Err(ReadError::TooLong) => Answer::Error {
            message: format!(
                "request longer than {} KiB: one JSON request per line is expected",
                MAX_REQUEST / 1024
            ),
        },
        Err(ReadError::Deadline) => Answer::Error {
            message: format!(
                "no whole request within {} s: one JSON request per line is expected",
                REQUEST_DEADLINE.as_secs()
            ),
        },
        // The client left before its request was whole: nobody to answer.
        Err(ReadError::Gone) => return,
    };
    send(&mut conn, &answer, ANSWER_DEADLINE);
}

/// `handle(req)`, or an error answer if it panics (logged; the socket
/// goes on serving).
fn answer_safely(handle: &(impl Fn(Request) -> Answer + Sync), req: Request) -> Answer {
    let what = format!("{req:?}");
    catch_unwind(AssertUnwindSafe(|| handle(req))).unwrap_or_else(|panic| {
        let why = super::panic_text(panic.as_ref());
        super::log(format!(
            "control socket: answering {what} panicked ({why}); serving on"
        ));
        Answer::Error {
            message: format!("internal error answering the request: {why} (the daemon goes on)"),
        }
    })
}

/// Writes `answer` and a newline within `deadline` for the whole of it (a
/// client that reads a byte now and then cannot hold its thread longer). A
/// client that does not take it has gone away or stopped reading: nothing
/// is lost by dropping it, since answers change nothing.
fn send(conn: &mut UnixStream, answer: &Answer, deadline: Duration) {
    let mut out = serde_json::to_string(answer).expect("answers serialise");
    out.push('\n');
    let until = Instant::now() + deadline;
    let mut left = out.as_bytes();
    while !left.is_empty() {
        let time = until.saturating_duration_since(Instant::now());
        if time.is_zero() {
            return;
        }
        if let Err(e) = conn.set_write_timeout(Some(time)) {
            super::log(format!(
                "control socket: no write timeout on a connection ({e}); its answer is not sent"
            ));
            return;
        }
        match conn.write(left) {
            Ok(0) => return,
            Ok(n) => left = &left[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
