//! An evaluation's wall time across invocations.
//!
//! A calibration stopped part-way (Ctrl-C, a crash, `kill -9`, the end of a
//! login) resumes its runs from their checkpoints when it is run again; the
//! stage it resumes measures only its own invocation's time. The clock keeps
//! the time of every invocation in the evaluation's directory
//! (`clock.json`), written when the invocation starts and every few seconds
//! while it runs, so the finished evaluation's wall time is the sum over its
//! invocations, short by at most one interval per kill.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The clock's file in an evaluation's directory.
pub const CLOCK_FILE: &str = "clock.json";

/// How often a running clock is written.
pub const TICK: Duration = Duration::from_secs(10);

/// Time spent on one evaluation so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    /// Wall time, seconds, summed over invocations.
    pub seconds: f64,
    /// Invocations that worked on it (started, whether or not they finished).
    pub invocations: u32,
}

/// Whether `name` is the clock's file or one of its temporary copies.
pub fn is_clock_file(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with(CLOCK_FILE))
}

/// The time kept at `dir`: `Ok(None)` where no clock was kept.
///
/// # Errors
/// The file cannot be read or does not parse (named in the message).
pub fn read(dir: &Path) -> Result<Option<Spent>, String> {
    let path = dir.join(CLOCK_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let spent: Spent =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if !(spent.seconds.is_finite() && spent.seconds >= 0.0) {
        return Err(format!(
            "{}: seconds is {}, expected a finite time ≥ 0",
            path.display(),
            spent.seconds
        ));
    }
    Ok(Some(spent))
}

fn write(path: &Path, spent: Spent) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&spent).expect("a clock serialises");
    crate::fsutil::write_atomic(path, &bytes)
}

/// A running clock: one invocation's work on an evaluation, added to what
/// earlier invocations spent. Stopped (and written a last time) by
/// [`Clock::stop`] or when dropped.
#[derive(Debug)]
pub struct Clock {
    path: PathBuf,
    before: Spent,
    start: Instant,
    tick: Option<(Sender<()>, JoinHandle<()>)>,
    stopped: bool,
}

impl Clock {
    /// Starts this invocation's clock on top of `before` (what earlier
    /// invocations spent), writing it to `dir` now and every `every`.
    ///
    /// # Errors
    /// The clock cannot be written (nor, then, the evaluation's runs) or
    /// its thread cannot start.
    pub fn start(dir: &Path, before: Spent, every: Duration) -> std::io::Result<Clock> {
        let before = Spent {
            seconds: before.seconds,
            invocations: before.invocations.saturating_add(1),
        };
        let start = Instant::now();
        let path: PathBuf = dir.join(CLOCK_FILE);
        write(&path, before)?;
        let (tx, rx) = mpsc::channel::<()>();
        let ticks = path.clone();
        let ticker = std::thread::Builder::new()
            .name("calibrate-clock".into())
            .spawn(move || {
                // Ends when the clock is stopped (its sender dropped).
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    let now = Spent {
                        seconds: before.seconds + start.elapsed().as_secs_f64(),
                        invocations: before.invocations,
                    };
                    // A failed write is retried at the next tick.
                    let _ = write(&ticks, now);
                }
            })?;
        Ok(Clock {
            path,
            before,
            start,
            tick: Some((tx, ticker)),
            stopped: false,
        })
    }

    /// The time spent so far: earlier invocations' and this one's.
    pub fn spent(&self) -> Spent {
        Spent {
            seconds: self.before.seconds + self.start.elapsed().as_secs_f64(),
            invocations: self.before.invocations,
        }
    }

    /// What earlier invocations spent, and how many there were.
    pub fn before(&self) -> Spent {
        Spent {
            seconds: self.before.seconds,
            invocations: self.before.invocations.saturating_sub(1),
        }
    }

    /// Stops the clock, writing it a last time; returns the time spent.
    /// (A failed last write loses this invocation's time since its last
    /// tick, should the evaluation be resumed: the result it ends with is
    /// written beside it, and fails loudly where this one would.)
    pub fn stop(mut self) -> Spent {
        self.halt()
    }

    fn halt(&mut self) -> Spent {
        self.stopped = true;
        if let Some((tx, handle)) = self.tick.take() {
            drop(tx);
            let _ = handle.join();
        }
        let spent = self.spent();
        let _ = write(&self.path, spent);
        spent
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        if !self.stopped {
            self.halt();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock is written when it starts, while it runs and when it stops;
    /// a later invocation adds to it.
    #[test]
    fn a_clock_adds_invocations_and_survives_a_kill() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        let before = Spent {
            seconds: 5.0,
            invocations: 1,
        };
        let clock = Clock::start(dir.path(), before, Duration::from_millis(5)).unwrap();
        assert_eq!(clock.before(), before);
        let first = read(dir.path()).unwrap().unwrap();
        assert_eq!(first.invocations, 2, "counted when it starts");
        assert!(first.seconds >= 5.0);
        // The ticker writes while it runs: what a kill -9 leaves behind.
        let deadline = Instant::now() + Duration::from_secs(10);
        while read(dir.path()).unwrap().unwrap().seconds < 5.02 {
            assert!(Instant::now() < deadline, "the clock was never rewritten");
            std::thread::sleep(Duration::from_millis(5));
        }
        let spent = clock.stop();
        assert_eq!(read(dir.path()).unwrap(), Some(spent), "written at stop");
        assert!(spent.seconds >= 5.02 && spent.invocations == 2);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [CLOCK_FILE], "no temporary file left behind");

        // Dropped rather than stopped (an error path): still written.
        let again = Clock::start(dir.path(), spent, Duration::from_secs(3600)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drop(again);
        let last = read(dir.path()).unwrap().unwrap();
        assert_eq!(last.invocations, 3);
        assert!(last.seconds >= spent.seconds + 0.02);
    }

    /// A damaged or nonsensical clock is an error that names the file.
    #[test]
    fn a_bad_clock_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLOCK_FILE);
        std::fs::write(&path, b"{\"seconds\": 3").unwrap();
        assert!(read(dir.path()).unwrap_err().contains(CLOCK_FILE));
        std::fs::write(&path, b"{\"seconds\": -1, \"invocations\": 1}").unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(e.contains(CLOCK_FILE) && e.contains("seconds is -1"), "{e}");
        // A clock that cannot be written is an error, not a silent loss.
        let under_a_file = path.join("seed-0");
        assert!(Clock::start(&under_a_file, Spent::default(), TICK).is_err());
        assert!(is_clock_file(std::ffi::OsStr::new("clock.json.17-3.tmp")));
        assert!(!is_clock_file(std::ffi::OsStr::new("result.json")));
    }
}
