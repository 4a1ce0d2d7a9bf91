//! `<state>/daemon.pid`: which process serves a state dir. Advisory: the
//! database lock is what keeps a second daemon out; the pid file names the
//! holder in messages and lets `stop` wait for it to exit. A daemon holds
//! its state dir open from its pid file's writing to its removal, so that a
//! process named by a pid file can be told to be that daemon ([`serves`]).

use std::os::unix::fs::MetadataExt as _;
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
    // 0 and 1 are no daemon (kill(0, …) signals our own process group).
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 1 {
        return false;
    }
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

/// Whether process `pid` holds `state` (a daemon's [`Presence`]) or its
/// database open: the daemon of that search, and not a process that got a
/// dead daemon's pid. `None` when this cannot be told (no `/proc/PID/fd` to
/// read: another user's process, or not Linux).
pub fn serves(pid: u32, state: &Path) -> Option<bool> {
    let Ok(dir) = std::fs::canonicalize(state) else {
        // No state dir: nobody serves it.
        return Some(false);
    };
    let db = dir.join("db");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        fds.flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|target| target == dir || target.starts_with(&db)),
    )
}

/// A daemon's marks on its state dir: the pid file, the state dir held open
/// (what [`serves`] looks for, until the very end) and, once bound, the
/// control socket. Dropping it removes the socket (if it is still the one
/// bound: not a newer daemon's) and the pid file (if it still names us).
pub struct Presence {
    state: PathBuf,
    pid: u32,
    _held: std::fs::File,
    socket: Option<(PathBuf, u64)>,
}

impl Presence {
    /// Writes the pid file and holds the state dir open.
    ///
    /// # Errors
    /// The pid file cannot be written or the dir opened.
    pub fn announce(state: &Path, pid: u32) -> std::io::Result<Presence> {
        let held = std::fs::File::open(state)?;
        write(state, pid)?;
        Ok(Presence {
            state: state.to_owned(),
            pid,
            _held: held,
            socket: None,
        })
    }

    /// Records the socket just bound at `path`, to remove it at the end.
    pub fn bound(&mut self, path: &Path) {
        self.socket = std::fs::metadata(path)
            .ok()
            .map(|m| (path.to_owned(), m.ino()));
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        if let Some((path, ino)) = &self.socket
            && std::fs::metadata(path).is_ok_and(|m| m.ino() == *ino)
            && let Err(e) = std::fs::remove_file(path)
        {
            crate::daemon::log(format!("could not remove the control socket: {e}"));
        }
        remove(&self.state, self.pid);
    }
}

/// Removes the pid file if it still names `pid`.
pub fn remove(state: &Path, pid: u32) {
    let p = path(state);
    if std::fs::read_to_string(&p).is_ok_and(|s| s.trim() == pid.to_string()) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn a_process_serves_a_state_dir_while_it_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::process::id();
        assert_eq!(serves(me, dir.path()), Some(false));
        let presence = Presence::announce(dir.path(), me).unwrap();
        assert_eq!(serves(me, dir.path()), Some(true));
        assert_eq!(live(dir.path()), Some(me));
        drop(presence);
        assert_eq!(serves(me, dir.path()), Some(false));
        assert!(!path(dir.path()).exists(), "the pid file stayed");
        assert_eq!(serves(me, &dir.path().join("missing")), Some(false));
        // Pids 0 and 1 are never a daemon.
        assert!(!alive(0) && !alive(1));
        write(dir.path(), 0).unwrap();
        assert_eq!(live(dir.path()), None);
    }

    #[test]
    fn presence_removes_its_own_socket_and_not_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("daemon.sock");
        let me = std::process::id();
        {
            let mut p = Presence::announce(dir.path(), me).unwrap();
            let _l = UnixListener::bind(&sock).unwrap();
            p.bound(&sock);
        }
        assert!(!sock.exists(), "its own socket stayed");
        let mut p = Presence::announce(dir.path(), me).unwrap();
        let _old = UnixListener::bind(&sock).unwrap();
        p.bound(&sock);
        // A newer daemon replaced the socket (and the pid file).
        std::fs::remove_file(&sock).unwrap();
        let _new = UnixListener::bind(&sock).unwrap();
        write(dir.path(), me + 1).unwrap();
        drop(p);
        assert!(sock.exists(), "a newer daemon's socket was removed");
        assert!(
            path(dir.path()).exists(),
            "a newer daemon's pid file was removed"
        );
    }
}
