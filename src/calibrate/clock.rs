//! An evaluation's wall time across invocations.
//!
//! A calibration stopped part-way (Ctrl-C, a crash, `kill -9`, the end of a
//! login) resumes its runs from their checkpoints when it is run again; the
//! stage it resumes measures only its own invocation's time. The clock keeps
//! the time of every invocation in the evaluation's directory
//! (`clock.json`, under the evaluation's fingerprint), written when an
//! invocation starts and every [`TICK`] while it runs, so the finished
//! evaluation's wall time is the sum over its invocations, short by at most
//! one tick per kill. Work a kill throws away (a run's steps since its last
//! checkpoint) is redone and counted again: the sum is the time spent, not
//! the time an uninterrupted evaluation would take.

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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    /// The evaluation's identity ([`super::fingerprint`]): a clock of
    /// other settings, seeds or format counts nothing towards this one.
    pub fingerprint: String,
    /// Wall time, seconds, summed over invocations.
    pub seconds: f64,
    /// Invocations that worked on it (started, whether or not they
    /// finished); a lower bound where `undercounts`.
    pub invocations: u32,
    /// Whether some of its runs were left by an invocation no clock
    /// counted (a version before the clock, a clock lost or damaged):
    /// `seconds` then falls short of the truth.
    pub undercounts: bool,
}

impl Spent {
    /// Nothing spent yet on evaluation `fingerprint`.
    pub fn none(fingerprint: &str) -> Spent {
        Spent {
            fingerprint: fingerprint.to_owned(),
            seconds: 0.0,
            invocations: 0,
            undercounts: false,
        }
    }
}

/// Whether `name` is the clock's file or one of its temporary copies.
pub fn is_clock_file(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with(CLOCK_FILE))
}

/// The clock kept at `dir`, whatever evaluation it counts: `Ok(None)` where
/// none was kept.
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

/// What earlier invocations spent on evaluation `fingerprint` at `dir`,
/// where `has_runs` says whether runs (finished or checkpointed) lie there:
/// the clock when it counts this evaluation; otherwise nothing, or, beside
/// runs no clock of this evaluation counted, at least one invocation of
/// unknown time. The `String` says why a clock there was not used.
pub fn earlier(dir: &Path, fingerprint: &str, has_runs: bool) -> (Spent, Option<String>) {
    let why = match read(dir) {
        Ok(Some(s)) if s.fingerprint == fingerprint => return (s, None),
        Ok(_) => None,
        Err(why) => Some(why),
    };
    let mut spent = Spent::none(fingerprint);
    if has_runs {
        spent.invocations = 1;
        spent.undercounts = true;
    }
    (spent, why)
}

/// Writes `spent` as the clock at `dir` (a finished evaluation's, so that
/// the clock and its result agree).
///
/// # Errors
/// The file cannot be written.
pub fn keep(dir: &Path, spent: &Spent) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(spent).expect("a clock serialises");
    crate::fsutil::write_atomic(&dir.join(CLOCK_FILE), &bytes)
}

/// A running clock: one invocation's work on an evaluation, added to what
/// earlier invocations spent. Stopped (and written a last time) by
/// [`Clock::stop`] or when dropped.
#[derive(Debug)]
pub struct Clock {
    dir: PathBuf,
    /// Earlier invocations' time, this invocation counted.
    base: Spent,
    start: Instant,
    /// The ticker; `None` once stopped.
    tick: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Clock {
    /// Starts this invocation's clock on top of `earlier` (see
    /// [`earlier`]), writing it to `dir` now and every `every`.
    ///
    /// # Errors
    /// The clock cannot be written (nor, then, the evaluation's runs) or
    /// its thread cannot start.
    pub fn start(dir: &Path, earlier: Spent, every: Duration) -> std::io::Result<Clock> {
        let base = Spent {
            invocations: earlier.invocations.saturating_add(1),
            ..earlier
        };
        let start = Instant::now();
        keep(dir, &base)?;
        let (tx, rx) = mpsc::channel::<()>();
        let (ticks, at) = (dir.to_owned(), base.clone());
        let ticker = std::thread::Builder::new()
            .name("calibrate-clock".into())
            .spawn(move || {
                // Ends when the clock is stopped (its sender dropped).
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                    let now = Spent {
                        seconds: at.seconds + start.elapsed().as_secs_f64(),
                        ..at.clone()
                    };
                    // A failed write is retried at the next tick.
                    let _ = keep(&ticks, &now);
                }
            })?;
        Ok(Clock {
            dir: dir.to_owned(),
            base,
            start,
            tick: Some((tx, ticker)),
        })
    }

    /// The time spent so far: earlier invocations' and this one's.
    pub fn spent(&self) -> Spent {
        Spent {
            seconds: self.base.seconds + self.start.elapsed().as_secs_f64(),
            ..self.base.clone()
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
        if let Some((tx, handle)) = self.tick.take() {
            drop(tx);
            let _ = handle.join();
        }
        let spent = self.spent();
        let _ = keep(&self.dir, &spent);
        spent
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        if self.tick.is_some() {
            self.halt();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock is written when it starts, while it runs (what a kill -9
    /// leaves behind) and when it stops; a later invocation adds to it.
    #[test]
    fn a_clock_is_written_while_it_runs_and_adds_invocations() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        let (none, why) = earlier(dir.path(), "f", false);
        assert_eq!((none, why), (Spent::none("f"), None));
        let before = Spent {
            seconds: 5.0,
            invocations: 1,
            ..Spent::none("f")
        };
        let clock = Clock::start(dir.path(), before, Duration::from_millis(5)).unwrap();
        let first = read(dir.path()).unwrap().unwrap();
        assert_eq!(first.invocations, 2, "counted when it starts");
        assert!(first.seconds >= 5.0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while read(dir.path()).unwrap().unwrap().seconds < 5.02 {
            assert!(Instant::now() < deadline, "the clock was never rewritten");
            std::thread::sleep(Duration::from_millis(5));
        }
        let spent = clock.stop();
        assert_eq!(
            read(dir.path()).unwrap(),
            Some(spent.clone()),
            "written at stop"
        );
        assert!(spent.seconds >= 5.02 && spent.invocations == 2);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [CLOCK_FILE], "no temporary file left behind");

        // Dropped rather than stopped (an error path): still written, and
        // the next invocation starts from it, with or without runs beside
        // it (a kill before the first run file still counts).
        let again = Clock::start(dir.path(), spent.clone(), Duration::from_secs(3600)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        drop(again);
        for has_runs in [false, true] {
            let (last, why) = earlier(dir.path(), "f", has_runs);
            assert_eq!((last.invocations, last.undercounts, why), (3, false, None));
            assert!(last.seconds >= spent.seconds + 0.02);
        }
    }

    /// Runs no clock counted keep the evaluation marked through any number
    /// of later kills; a clock of another evaluation counts nothing.
    #[test]
    fn unclocked_runs_stay_marked_and_other_clocks_count_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (start, _) = earlier(dir.path(), "f", true);
        assert_eq!((start.invocations, start.undercounts), (1, true));
        // Killed after a tick: the next invocation still undercounts.
        let clock = Clock::start(dir.path(), start, Duration::from_secs(3600)).unwrap();
        drop(clock);
        let (next, _) = earlier(dir.path(), "f", true);
        assert_eq!((next.invocations, next.undercounts), (2, true));

        // Another evaluation (a new seed, preset or format) in the same
        // directory: its runs are there but its clock counts nothing here.
        let (other, why) = earlier(dir.path(), "g", true);
        assert_eq!(other.fingerprint, "g");
        assert_eq!((other.seconds, other.invocations, why), (0.0, 1, None));
        let (fresh, _) = earlier(dir.path(), "g", false);
        assert_eq!(fresh, Spent::none("g"));
    }

    /// A damaged or nonsensical clock is an error that names the file, and
    /// counts as no clock.
    #[test]
    fn a_bad_clock_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLOCK_FILE);
        std::fs::write(&path, b"{\"seconds\": 3").unwrap();
        assert!(read(dir.path()).unwrap_err().contains(CLOCK_FILE));
        std::fs::write(
            &path,
            b"{\"fingerprint\": \"f\", \"seconds\": -1, \"invocations\": 1, \"undercounts\": false}",
        )
        .unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(e.contains(CLOCK_FILE) && e.contains("seconds is -1"), "{e}");
        let (spent, why) = earlier(dir.path(), "f", true);
        assert!(spent.undercounts && why.is_some_and(|w| w.contains(CLOCK_FILE)));
        // A clock that cannot be written is an error, not a silent loss.
        let under_a_file = path.join("seed-0");
        assert!(Clock::start(&under_a_file, Spent::none("f"), TICK).is_err());
        assert!(is_clock_file(std::ffi::OsStr::new("clock.json.17-3.tmp")));
        assert!(!is_clock_file(std::ffi::OsStr::new("result.json")));
    }
}
