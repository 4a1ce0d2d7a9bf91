//! `mad-search stop`: ask the daemon to drain (running jobs checkpoint and
//! go back to the queue) and wait for it to exit.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;

use super::state::{StateArgs, daemon_pid};
use crate::daemon::control::{Answer, Request, request};
use crate::daemon::pidfile;

/// Arguments of `stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    #[command(flatten)]
    pub at: StateArgs,
    /// Seconds to wait for the daemon to exit.
    #[arg(long, default_value_t = 600)]
    pub wait: u64,
}

/// Runs `stop`.
///
/// # Errors
/// A daemon that does not exit in time.
pub fn run(args: StopArgs) -> anyhow::Result<ExitCode> {
    let state = args.at.dir();
    let pid = match request(&state, &Request::Stop, Duration::from_secs(10)) {
        Ok(Answer::Stopping { pid }) => pid,
        Ok(other) => return Err(super::state::unexpected(other)),
        Err(_) => {
            if let Some(pid) = daemon_pid(&state) {
                // Alive but not answering: signal it (SIGTERM drains too),
                // once it is sure to be this search's daemon.
                if pidfile::serves(pid, &state).is_none() {
                    bail!(
                        "the daemon of {} (pid {pid}) does not answer, and whether pid {pid} \
                         is that daemon cannot be told (no access to /proc/{pid}/fd); nothing \
                         was signalled: if it is, stop it with `kill {pid}`",
                        state.display()
                    );
                }
                let pid_t = libc::pid_t::try_from(pid)?;
                // SAFETY: SIGTERM to a live process that holds this search's
                // database open (`pidfile::serves`).
                if unsafe { libc::kill(pid_t, libc::SIGTERM) } != 0 {
                    bail!(
                        "signalling the daemon (pid {pid}) failed: {}",
                        std::io::Error::last_os_error()
                    );
                }
                pid
            } else {
                eprintln!("no daemon is running on {}", state.display());
                return Ok(ExitCode::from(1));
            }
        }
    };
    eprintln!("stopping the daemon (pid {pid}): running jobs checkpoint and requeue");
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    while pidfile::alive(pid) {
        if Instant::now() > deadline {
            bail!(
                "the daemon (pid {pid}) is still running after {} s; see {}",
                args.wait,
                state.join("daemon.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // It closes the database before it removes its pid file: nothing to wait for.
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}
