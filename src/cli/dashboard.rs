//! `mad-search dashboard`: serves the search's page and JSON API
//! ([`crate::dashboard`]) until Ctrl-C, reading through the daemon when it
//! runs and from the database when it does not (opened per request and
//! closed at once, so that a `start` meanwhile finds it free; what a page
//! polls is kept until the database's files change).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context as _, bail};
use clap::Args;

use super::state::{StateArgs, ask_daemon, open_for_reading};
use crate::daemon::control::{Answer, Request};
use crate::daemon::report::{StatusReport, status};
use crate::daemon::snapshot;
use crate::dashboard::{Points, STATUS_TOP, Source, answer_from_store, points, serve};

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

/// The search in a state dir, reached per request: the daemon's answer
/// when it runs; else the database's, opened and closed per request, with
/// the status and the points kept until the database's files change (a
/// page polls both; at 10,000 candidates the status alone takes most of a
/// second to build).
struct StateDir {
    dir: PathBuf,
    cache: Mutex<Option<Cached>>,
}

/// Answers built from the database while its files had `files`.
struct Cached {
    files: Vec<u8>,
    status: StatusReport,
    points: Points,
}

impl StateDir {
    fn new(dir: PathBuf) -> StateDir {
        StateDir {
            dir,
            cache: Mutex::new(None),
        }
    }

    /// Status (`top` rows) or points from the cache, rebuilt from the
    /// database when its files changed.
    fn cached(&self, req: &Request) -> anyhow::Result<Answer> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let files = snapshot::db_fingerprint(&self.dir);
        if cache.as_ref().map(|c| Some(&c.files)) != Some(files.as_ref()) {
            let store = open_for_reading(&self.dir)?;
            let built = (|| -> anyhow::Result<(StatusReport, Points)> {
                Ok((status(&store, None, STATUS_TOP)?, points(&store)?))
            })();
            // Closed, not forgotten: a long-lived process must let go of
            // the database's lock.
            drop(store);
            let (status, points) = built?;
            let Some(files) = snapshot::db_fingerprint(&self.dir) else {
                // Files unreadable: answer this once, cache nothing.
                *cache = None;
                return Ok(match req {
                    Request::Points => Answer::Points {
                        points: Box::new(points),
                    },
                    _ => Answer::Status {
                        report: Box::new(status),
                    },
                });
            };
            *cache = Some(Cached {
                files,
                status,
                points,
            });
        }
        let c = cache.as_ref().expect("filled above");
        Ok(match req {
            Request::Points => Answer::Points {
                points: Box::new(c.points.clone()),
            },
            Request::Status { top } => {
                let mut report = c.status.clone();
                report.leaderboard.truncate(*top);
                Answer::Status {
                    report: Box::new(report),
                }
            }
            other => answer_from_store_unreachable(other),
        })
    }
}

/// What a request the cache does not hold gets (none reaches it).
fn answer_from_store_unreachable(req: &Request) -> Answer {
    Answer::Error {
        message: format!("the dashboard does not cache {req:?}"),
    }
}

impl Source for StateDir {
    fn ask(&self, req: &Request) -> anyhow::Result<Answer> {
        if let Some(answer) = ask_daemon(&self.dir, req)? {
            return Ok(answer);
        }
        match req {
            Request::Status { top } if *top <= STATUS_TOP => self.cached(req),
            Request::Points => self.cached(req),
            _ => {
                // Holding the cache's lock keeps its files' fingerprint
                // true: this open and close are the only change.
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                let before = snapshot::db_fingerprint(&self.dir);
                let store = open_for_reading(&self.dir)?;
                let answer = answer_from_store(&store, req);
                drop(store);
                if let Some(c) = cache.as_mut() {
                    match (before, snapshot::db_fingerprint(&self.dir)) {
                        (Some(b), Some(after)) if b == c.files => c.files = after,
                        _ => *cache = None,
                    }
                }
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
    let source = Arc::new(StateDir::new(state.clone()));
    source
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
    serve(&server, source, &stop, args.public)?;
    Ok(ExitCode::SUCCESS)
}
