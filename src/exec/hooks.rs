//! Test hooks: faults the daemon's tests inject through `MAD_SEARCH_TEST_*`
//! environment variables. They exist only with the `test-hooks` feature,
//! which the tests turn on (a dev-dependency of the package on itself); in
//! any other build the variables are ignored.

/// A job whose genome's layers string equals this variable's value panics
/// (to test that the daemon records it and keeps serving).
pub const PANIC_LAYERS: &str = "MAD_SEARCH_TEST_PANIC_LAYERS";

/// A job whose genome's layers string equals this variable's value trains
/// with the learning rate [`DIVERGING_LR`], so its loss becomes NaN (search
/// spaces cannot ask for that: learning rates are checked).
pub const NAN_LAYERS: &str = "MAD_SEARCH_TEST_NAN_LAYERS";

/// The scaling run with this index in its candidate's plan (`0` is the
/// first budget's smallest model) trains with the learning rate
/// [`DIVERGING_LR`] and diverges, to test that a stage goes on from its other runs.
pub const NAN_SCALE_RUN: &str = "MAD_SEARCH_TEST_NAN_SCALE_RUN";

/// A job whose genome's layers string equals this variable's value kills
/// its own process with SIGKILL, as the kernel's out-of-memory killer
/// would (meant for worker processes: under the thread executor it takes
/// the daemon down, which is what worker processes are for).
pub const KILL_LAYERS: &str = "MAD_SEARCH_TEST_KILL_LAYERS";

/// A job whose genome's layers string equals this variable's value hangs on
/// its first attempt (sleeps, deaf to its stop flag), to test that a worker
/// process past its lease is killed and the job retried (meant for worker
/// processes: a thread cannot be killed).
pub const HANG_LAYERS: &str = "MAD_SEARCH_TEST_HANG_LAYERS";

/// With this variable set, the daemon kills itself (SIGKILL) right after
/// `sbatch` returns a job id and before the id is written down (a kill -9
/// at the worst point): the next daemon must find the job by its name, not
/// submit it again.
pub const ABORT_AFTER_SUBMIT: &str = "MAD_SEARCH_TEST_ABORT_AFTER_SUBMIT";

/// The learning rate of the diverging hooks: finite (the settings a
/// result carries are JSON, which has no infinity) and large enough that
/// the first steps overflow the weights.
pub const DIVERGING_LR: f64 = 1e30;

/// The scheduler fails (as on a database error) once this many jobs are
/// settled, to test that the daemon drains, flushes and cleans up.
pub const SCHEDULER_ERROR_AFTER: &str = "MAD_SEARCH_TEST_SCHEDULER_ERROR_AFTER";

/// The hook variable `name`'s value, in a build with the hooks.
#[cfg(feature = "test-hooks")]
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Never set in a build without the hooks.
#[cfg(not(feature = "test-hooks"))]
fn var(_name: &str) -> Option<String> {
    None
}

/// Whether a job on `layers` is to panic ([`PANIC_LAYERS`]).
pub fn panics(layers: &str) -> bool {
    var(PANIC_LAYERS).is_some_and(|v| v == layers)
}

/// The faults only a process can have ([`KILL_LAYERS`], [`HANG_LAYERS`]),
/// acted out for a job on `layers` at `attempt`.
pub fn process_faults(layers: &str, attempt: u32) {
    if var(KILL_LAYERS).is_some_and(|v| v == layers) {
        // SAFETY: raising a signal on this process has no memory effects.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
    if attempt == 1 && var(HANG_LAYERS).is_some_and(|v| v == layers) {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Whether a job on `layers` is to diverge ([`NAN_LAYERS`]).
pub fn diverges(layers: &str) -> bool {
    var(NAN_LAYERS).is_some_and(|v| v == layers)
}

/// Whether the scaling run at `index` of its plan is to diverge
/// ([`NAN_SCALE_RUN`]).
pub fn scale_run_diverges(index: u32) -> bool {
    var(NAN_SCALE_RUN).is_some_and(|v| v.parse() == Ok(index))
}

/// After how many settled jobs the scheduler is to fail
/// ([`SCHEDULER_ERROR_AFTER`]).
pub fn scheduler_error_after() -> Option<u64> {
    var(SCHEDULER_ERROR_AFTER).and_then(|v| v.parse().ok())
}

/// Kills this process with SIGKILL ([`ABORT_AFTER_SUBMIT`]), as a kill -9
/// from outside would.
pub fn after_submit() {
    if var(ABORT_AFTER_SUBMIT).is_some() {
        // SAFETY: raising a signal on this process has no memory effects.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}
