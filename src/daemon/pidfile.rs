//! `<state>/daemon.pid`: which process serves a state dir. Advisory: the
//! database lock is what keeps a second daemon out; the pid file names the
//! holder in messages and lets `stop` wait for it to exit.

use std::path::{Path, PathBuf};

/// The pid file's name in the state dir.
pub const PID_FILE: &str = "daemon.pid";

/// The pid file of a state dir.
pub fn path(state: &Path) -> PathBuf {
    state.join(PID_FILE)
}

/// Writes our pid.
///
/// # Errors
/// The file cannot be written.
pub fn write(state: &Path, pid: u32) -> std::io::Result<()> {
    crate::fsutil::write_atomic(&path(state), format!("{pid}\n").as_bytes())
}

/// The pid recorded, if the file exists, that process is alive, and it is
/// not known to be a stranger ([`serves`]: a process that reused the pid of
/// a daemon killed without cleaning up).
pub fn live(state: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path(state))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (alive(pid) && serves(pid, state) != Some(false)).then_some(pid)
}

/// Whether a process with this pid exists (and is not a zombie we could reap).
pub fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => true,
    }
}

/// Whether process `pid` holds `state`'s database open: the daemon of that
/// search, and not a process that got a dead daemon's pid. `None` when this
/// cannot be told (no `/proc/PID/fd` to read: another user's process, or
/// not Linux).
pub fn serves(pid: u32, state: &Path) -> Option<bool> {
    let Ok(db) = std::fs::canonicalize(state.join("db")) else {
        // No database: nobody serves it.
        return Some(false);
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        fds.flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| target.starts_with(&db)),
    )
}

/// Removes the pid file if it still names `pid`.
pub fn remove(state: &Path, pid: u32) {
    let p = path(state);
    if std::fs::read_to_string(&p).is_ok_and(|s| s.trim() == pid.to_string()) {
        let _ = std::fs::remove_file(p);
    }
}
