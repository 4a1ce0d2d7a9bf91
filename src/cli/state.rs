//! Which state dir a command works on, and how to reach its search: through
//! the daemon's socket when one answers, else by opening the database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::daemon::control::{Answer, Request, request};
use crate::daemon::pidfile;
use crate::store::{Store, StoreError};

/// `--state DIR` or `--name NAME` (→ `state/NAME`).
#[derive(Debug, Args, Clone)]
pub struct StateArgs {
    /// The search's state dir (default: state/<name>).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// The search's name, for the default state dir.
    #[arg(long, default_value = "default")]
    pub name: String,
}

impl StateArgs {
    /// The state dir.
    pub fn dir(&self) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(|| Path::new("state").join(&self.name))
    }

    /// The search's name: the state dir's last component when given.
    pub fn name(&self) -> String {
        match &self.state {
            Some(d) => d
                .file_name()
                .map_or_else(|| self.name.clone(), |n| n.to_string_lossy().into_owned()),
            None => self.name.clone(),
        }
    }
}

/// The pid of a daemon serving `state` (pid file names a live process).
pub fn daemon_pid(state: &Path) -> Option<u32> {
    pidfile::live(state)
}

/// Opens the database, waiting up to 10 s while it is locked by a process
/// that is exiting (a daemon's last threads release the lock after its pid
/// is already gone) or by a short-lived reader.
///
/// # Errors
/// As [`Store::open`]; `Locked` after the wait.
pub fn open_store(state: &Path) -> Result<Store, StoreError> {
    open_retrying(state, Store::open)
}

fn open_retrying(
    state: &Path,
    open: impl Fn(&Path) -> Result<Store, StoreError>,
) -> Result<Store, StoreError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match open(state) {
            Err(StoreError::Locked { .. })
                if daemon_pid(state).is_none() && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// How a read reaches the search.
pub enum Reach {
    /// The daemon answered.
    Daemon(Answer),
    /// No daemon: the database, opened read-write by us.
    Store(Store),
}

/// Asks the daemon, or opens the database when none runs.
///
/// # Errors
/// As [`ask_daemon`] and [`open_for_reading`].
pub fn reach(state: &Path, req: &Request) -> anyhow::Result<Reach> {
    match ask_daemon(state, req)? {
        Some(answer) => Ok(Reach::Daemon(answer)),
        None => open_for_reading(state).map(Reach::Store),
    }
}

/// The daemon's answer, or `None` when no daemon answers on the socket.
///
/// # Errors
/// No state dir, a daemon whose answer was cut off, or one whose answer this
/// version cannot read.
pub fn ask_daemon(state: &Path, req: &Request) -> anyhow::Result<Option<Answer>> {
    if !state.is_dir() {
        bail!(
            "no search in {}: the directory does not exist; start one with `mad-search start --state {}`",
            state.display(),
            state.display()
        );
    }
    match request(state, req, Duration::from_secs(10)) {
        Ok(answer) => Ok(Some(answer)),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => bail!(
            "the daemon on {} answered something this mad-search cannot read (is it another \
             version? restart it with `mad-search stop` and `start`): {e}",
            state.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => bail!(
            "the daemon on {} did not finish its answer: {e}; try again (on a busy machine a \
             large answer can take a client longer to read than the daemon waits)",
            state.display()
        ),
        Err(_) => Ok(None),
    }
}

/// Opens the database of a search whose daemon does not answer, for
/// reading ([`Store::open_for_reading`]); end with [`close_read_only`].
///
/// # Errors
/// A damaged or newer database, or a daemon that holds the database but does
/// not answer.
pub fn open_for_reading(state: &Path) -> anyhow::Result<Store> {
    match open_retrying(state, Store::open_for_reading) {
        Ok(store) => Ok(store),
        Err(StoreError::Locked { .. }) => match daemon_pid(state) {
            Some(pid) => bail!(
                "the daemon (pid {pid}) holds {} but does not answer on its socket; it may be \
                 starting or stopping: try again, or see {}",
                state.display(),
                state.join("daemon.log").display()
            ),
            None => bail!(
                "another process holds the database in {}; try again in a moment",
                state.display()
            ),
        },
        Err(e) => Err(e.into()),
    }
}

/// Ends a read-only use of the database without sled's shutdown work (a
/// flush and a snapshot, hundreds of milliseconds on a large store): nothing
/// was written, and sled recovers from any exit.
pub fn close_read_only(store: Store) {
    std::mem::forget(store);
}

/// The error text of an `Answer::Error`, or a complaint about an unexpected answer.
pub fn unexpected(answer: Answer) -> anyhow::Error {
    match answer {
        Answer::Error { message } => anyhow::anyhow!("{message}"),
        other => anyhow::anyhow!("unexpected answer from the daemon: {other:?}"),
    }
}
