//! `mad-search dashboard`: the search in a browser. One page (HTML, CSS
//! and JavaScript embedded in the binary: no CDN, nothing fetched at run
//! time) and a read-only JSON API, served by `tiny_http` on loopback by
//! default:
//!
//! | path | answer |
//! |---|---|
//! | `/` | the page |
//! | `/api/status` | `status --json` (schema `mad-search.status/N`), top 50 |
//! | `/api/points` | every candidate and every scaling fit ([`POINTS_SCHEMA`]) |
//! | `/api/candidate/ID` | `show --json` of the candidate whose id starts `ID` |
//! | `/api/candidate/ID/export/FORMAT` | `export` as a download: `json`, `toml`, `layers`, `card` |
//!
//! The data come from a [`Source`]: the daemon through its control socket
//! when it runs, else the store (see `cli::dashboard`). A bad request (an
//! unknown path or candidate, a malformed id, a method other than GET or
//! HEAD) gets a 4xx answer and the server goes on.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;

mod data;

pub use data::{Law, Optimum, POINTS_SCHEMA, Point, Points, Scaling, ScalingRun, points};

use crate::daemon::control::{Answer, Request};
use crate::daemon::report::{CandidateReport, ShowError, show, status};
use crate::export::Format;
use crate::store::Store;

/// The page, served at `/`.
pub const PAGE: &str = include_str!("page.html");

/// Leaderboard rows `/api/status` answers with.
pub const STATUS_TOP: usize = 50;

/// Where the dashboard reads the search: a daemon's control socket or a
/// store, behind one question-and-answer interface.
pub trait Source: Send + Sync {
    /// The answer to `req` (one of `Status`, `Show`, `Points`).
    ///
    /// # Errors
    /// The search cannot be reached (no state dir, a database in use, …).
    fn ask(&self, req: &Request) -> anyhow::Result<Answer>;
}

/// Answers `req` from `store`, as the daemon would (without its live part).
pub fn answer_from_store(store: &Store, req: &Request) -> Answer {
    let error = |e: &dyn std::fmt::Display| Answer::Error {
        message: e.to_string(),
    };
    match req {
        Request::Status { top } => match status(store, None, *top) {
            Ok(r) => Answer::Status {
                report: Box::new(r),
            },
            Err(e) => error(&e),
        },
        Request::Show { id } => match show(store, id) {
            Ok(r) => Answer::Show {
                report: Box::new(r),
            },
            Err(e) => error(&e),
        },
        Request::Points => match points(store) {
            Ok(p) => Answer::Points {
                points: Box::new(p),
            },
            Err(e) => error(&e),
        },
        other => Answer::Error {
            message: format!("the dashboard does not ask {other:?}"),
        },
    }
}

/// A [`Source`] over an open store (tests, and tools that hold one).
impl Source for Store {
    fn ask(&self, req: &Request) -> anyhow::Result<Answer> {
        Ok(answer_from_store(self, req))
    }
}

/// An HTTP answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
    /// A download's file name (`Content-Disposition: attachment`).
    pub attachment: Option<String>,
}

impl Reply {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type,
            body: body.into(),
            attachment: None,
        }
    }

    /// `value` as JSON.
    fn json<T: serde::Serialize>(value: &T) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply::new(200, "application/json", body),
            Err(e) => Reply::error(500, &format!("the answer does not serialise: {e}")),
        }
    }

    /// An error as `{"error": message}`.
    fn error(status: u16, message: &str) -> Reply {
        let body = serde_json::json!({ "error": message }).to_string();
        Reply::new(status, "application/json", body)
    }
}

/// Whether `id` is a candidate id prefix the API takes: 4 to 32 hex digits.
fn is_id(id: &str) -> bool {
    (4..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The export format named `name` in a URL.
fn format_named(name: &str) -> Option<Format> {
    match name {
        "json" => Some(Format::Json),
        "toml" => Some(Format::Toml),
        "layers" => Some(Format::Layers),
        "card" => Some(Format::Card),
        _ => None,
    }
}

/// The candidate `id` from `source`: its report, or the reply that says why
/// not (404 unknown, 409 ambiguous, 503 unreachable).
fn candidate(source: &dyn Source, id: &str) -> Result<CandidateReport, Reply> {
    match source.ask(&Request::Show { id: id.into() }) {
        Ok(Answer::Show { report }) => Ok(*report),
        Ok(Answer::Error { message }) => {
            // The daemon sends errors as text; `show`'s are recognised by
            // their words (the same code made them).
            let unknown = ShowError::Unknown(id.into()).to_string();
            let status = if message == unknown {
                404
            } else if message.contains("matches several candidates") {
                409
            } else {
                // The daemon busy, or the database unreadable: the search
                // cannot answer now.
                503
            };
            Err(Reply::error(status, &message))
        }
        Ok(other) => Err(Reply::error(
            500,
            &format!("unexpected answer from the daemon: {other:?}"),
        )),
        Err(e) => Err(Reply::error(503, &crate::cli::error_text(&e))),
    }
}

/// Answers one request: `method` and `url` (path and query) as received.
pub fn route(source: &dyn Source, method: &str, url: &str) -> Reply {
    if method != "GET" && method != "HEAD" {
        return Reply::error(405, "the dashboard is read-only: GET only");
    }
    let path = url.split(['?', '#']).next().unwrap_or("");
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [] | ["index.html"] => Reply::new(200, "text/html; charset=utf-8", PAGE),
        ["api", "status"] => match source.ask(&Request::Status { top: STATUS_TOP }) {
            Ok(Answer::Status { report }) => Reply::json(&report),
            Ok(Answer::Error { message }) => Reply::error(503, &message),
            Ok(other) => Reply::error(500, &format!("unexpected answer: {other:?}")),
            Err(e) => Reply::error(503, &crate::cli::error_text(&e)),
        },
        ["api", "points"] => match source.ask(&Request::Points) {
            Ok(Answer::Points { points }) => Reply::json(&points),
            Ok(Answer::Error { message }) => Reply::error(503, &message),
            Ok(other) => Reply::error(500, &format!("unexpected answer: {other:?}")),
            Err(e) => Reply::error(503, &crate::cli::error_text(&e)),
        },
        ["api", "candidate", id] if is_id(id) => match candidate(source, id) {
            Ok(r) => Reply::json(&r),
            Err(reply) => reply,
        },
        ["api", "candidate", id, "export", format] if is_id(id) => {
            let Some(format) = format_named(format) else {
                return Reply::error(
                    404,
                    &format!("no export format `{format}`: json, toml, layers or card"),
                );
            };
            match candidate(source, id) {
                Ok(r) => {
                    let mut reply = Reply::new(
                        200,
                        "text/plain; charset=utf-8",
                        crate::export::render(&r, format),
                    );
                    reply.attachment =
                        Some(format!("{}.{}", r.candidate.id.short(), format.extension()));
                    reply
                }
                Err(reply) => reply,
            }
        }
        ["api", "candidate", id, ..] if is_id(id) => Reply::error(
            404,
            "no such page: a candidate has /export/json|toml|layers|card",
        ),
        ["api", "candidate", id, ..] => Reply::error(
            400,
            &format!(
                "`{}` is not a candidate id (4 to 32 hex digits)",
                id.chars().take(64).collect::<String>()
            ),
        ),
        _ => Reply::error(404, "no such page: the dashboard serves / and /api/…"),
    }
}

/// Requests answered at once; one more is told to come back (503). A
/// client that never reads its answer holds its thread (tiny_http writes
/// without a timeout), so this also bounds what stalled clients can hold.
pub const MAX_CONCURRENT: usize = 8;

/// Whether a request's `Host` header names this machine's loopback
/// (`localhost`, `127.0.0.1`, `[::1]`, any port). A loopback-only server
/// answers nothing else: a web page whose name rebinds to 127.0.0.1 would
/// otherwise read the search through the visitor's browser.
pub fn loopback_host(host: Option<&str>) -> bool {
    let Some(host) = host else {
        // HTTP/1.0 clients (curl -0, scripts) may send none.
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "localhost" | "127.0.0.1" | "::1"
    )
}

/// Answers `request` from `source` (`Host` checked unless `public`).
fn respond(request: tiny_http::Request, source: &dyn Source, public: bool) {
    let host = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Host"))
        .map(|h| h.value.as_str().to_string());
    let reply = if !public && !loopback_host(host.as_deref()) {
        Reply::error(
            403,
            "this dashboard serves loopback only: open it as http://127.0.0.1:PORT/ or \
             http://localhost:PORT/ (start it with --public to serve other names)",
        )
    } else {
        route(source, request.method().as_str(), request.url())
    };
    send(request, reply);
}

/// Sends `reply`; a client that went away is its own business.
fn send(request: tiny_http::Request, reply: Reply) {
    // tiny_http leaves the body out of an answer to HEAD itself.
    let length = reply.body.len();
    let mut response = tiny_http::Response::new(
        tiny_http::StatusCode(reply.status),
        Vec::new(),
        Cursor::new(reply.body),
        Some(length),
        None,
    );
    let header = |k: &str, v: &str| {
        tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("ASCII header")
    };
    response.add_header(header("Content-Type", reply.content_type));
    response.add_header(header("Cache-Control", "no-store"));
    response.add_header(header("X-Content-Type-Options", "nosniff"));
    if let Some(name) = &reply.attachment {
        response.add_header(header(
            "Content-Disposition",
            &format!("attachment; filename=\"{name}\""),
        ));
    }
    let _ = request.respond(response);
}

/// Serves `source` on `server` until `stop` is set (checked twice a
/// second), each request on its own thread, at most [`MAX_CONCURRENT`] at
/// once; `public`: answer any `Host` (else loopback names only). Returns
/// without waiting for requests in flight (a stalled client's thread ends
/// with the process).
///
/// # Errors
/// The server's socket fails.
pub fn serve(
    server: &tiny_http::Server,
    source: Arc<dyn Source>,
    stop: &std::sync::atomic::AtomicBool,
    public: bool,
) -> anyhow::Result<()> {
    let busy = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        let Some(request) = server
            .recv_timeout(std::time::Duration::from_millis(500))
            .context("the dashboard's socket failed")?
        else {
            continue;
        };
        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONCURRENT {
            busy.fetch_sub(1, Ordering::AcqRel);
            send(
                request,
                Reply::error(
                    503,
                    "the dashboard is answering too many requests; try again",
                ),
            );
            continue;
        }
        let (busy, source) = (Arc::clone(&busy), Arc::clone(&source));
        std::thread::spawn(move || {
            respond(request, &*source, public);
            busy.fetch_sub(1, Ordering::AcqRel);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
