//! `mad-search dashboard`: serves the search's page and JSON API
//! ([`crate::dashboard`]) until Ctrl-C, reading through the daemon when it
//! runs and from the database (opened per request and closed at once, so
//! that a `start` meanwhile finds it free) when it does not.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, bail};
use clap::Args;

use super::state::{Reach, StateArgs, reach};
use crate::daemon::control::{Answer, Request};
use crate::daemon::snapshot;
use crate::dashboard::{Source, answer_from_store, serve};

/// Arguments of `dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub at: StateArgs,
    /// Address to serve on (port 0: any free port; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:8484")]
    pub bind: SocketAddr,
    /// Serve on an address other than loopback. The page has no
    /// authentication: anyone who reaches the address reads the search.
    #[arg(long)]
    pub public: bool,
    /// Open the page in the default browser (`xdg-open` / `open`).
    #[arg(long)]
    pub open: bool,
}

/// The search in a state dir, reached per request.
struct StateDir(PathBuf);

impl Source for StateDir {
    fn ask(&self, req: &Request) -> anyhow::Result<Answer> {
        // A daemon that is not running leaves its last status snapshot,
        // which spares the database.
        if let Request::Status { top } = req
            && super::state::daemon_pid(&self.0).is_none()
            && let Some(report) = snapshot::read(&self.0, *top)
        {
            return Ok(Answer::Status {
                report: Box::new(report),
            });
        }
        match reach(&self.0, req)? {
            Reach::Daemon(answer) => Ok(answer),
            Reach::Store(store) => {
                let answer = answer_from_store(&store, req);
                // Closed, not forgotten: a long-lived process must let go
                // of the database's lock.
                drop(store);
                Ok(answer)
            }
        }
    }
}

/// Runs `dashboard`.
///
/// # Errors
/// A non-loopback address without `--public`, an address that cannot be
/// bound, or no search in the state dir.
pub fn run(args: DashboardArgs) -> anyhow::Result<ExitCode> {
    if !args.bind.ip().is_loopback() && !args.public {
        bail!(
            "--bind {} is not a loopback address, and the dashboard has no authentication: add \
             --public to serve it there anyway, or reach a loopback one through an SSH tunnel \
             (ssh -L 8484:127.0.0.1:8484 HOST)",
            args.bind
        );
    }
    let state = args.at.dir();
    // Fail now, not on the first page load, when there is no search.
    StateDir(state.clone())
        .ask(&Request::Status { top: 1 })
        .with_context(|| format!("reading the search in {}", state.display()))?;
    let server = tiny_http::Server::http(args.bind)
        .map_err(|e| anyhow::anyhow!("cannot serve on {}: {e}", args.bind))?;
    let addr = server
        .server_addr()
        .to_ip()
        .context("the dashboard's socket has no IP address")?;
    let url = format!("http://{addr}/");
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: serving on {addr}, which is not loopback: the dashboard has no \
             authentication, and anyone who reaches this address can read the search"
        );
    }
    println!("dashboard of {} at {url} (Ctrl-C to stop)", state.display());
    if args.open {
        let opener = if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        };
        if let Err(e) = std::process::Command::new(opener).arg(&url).spawn() {
            eprintln!("warning: could not open a browser ({opener}: {e}); open {url} yourself");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed))
            .context("installing the Ctrl-C handler")?;
    }
    serve(&server, &StateDir(state), &stop)?;
    Ok(ExitCode::SUCCESS)
}
