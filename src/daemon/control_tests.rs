//! The control socket against hostile and careless clients: every test
//! speaks the raw protocol to a real listener served by [`serve`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;

/// A socket served by [`serve`] with a handler that answers `ping`, sleeps
/// 20 ms on `status` (a store read), and panics on `show` of `"panic"`.
struct Served {
    dir: tempfile::TempDir,
    closing: &'static AtomicBool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn new() -> Served {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = bind(dir.path()).expect("bind");
        let closing: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let thread = std::thread::spawn(move || {
            serve(
                listener,
                |req| match req {
                    Request::Show { id } if id == "panic" => panic!("a handler bug"),
                    Request::Status { top } => {
                        std::thread::sleep(Duration::from_millis(20));
                        Answer::Error {
                            message: format!("status {top}"),
                        }
                    }
                    _ => Answer::Pong { pid: 7 },
                },
                closing,
            );
        });
        Served {
            dir,
            closing,
            thread: Some(thread),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Sends `raw` as is and reads one answer line.
    fn raw(&self, raw: &[u8]) -> Answer {
        let mut s = UnixStream::connect(socket_path(self.path())).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        // The daemon may answer and close before all of a long request is
        // written: that write then fails, and the answer is still there.
        let _ = s.write_all(raw);
        read_answer(s)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        wake(self.dir.path());
        if let Some(t) = self.thread.take() {
            t.join().expect("serve returns");
        }
    }
}

fn read_answer(s: UnixStream) -> Answer {
    super::read_answer(BufReader::new(s)).expect("a whole, well-formed answer")
}

fn ping(path: &Path) -> Answer {
    request(path, &Request::Ping, Duration::from_secs(30)).expect("ping answered")
}

fn error_of(a: Answer) -> String {
    match a {
        Answer::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn malformed_and_unknown_requests_get_errors_and_serving_goes_on() {
    let s = Served::new();
    assert!(error_of(s.raw(b"{not json\n")).contains("malformed request"));
    assert!(error_of(s.raw(b"{\"cmd\":\"frobnicate\"}\n")).contains("malformed request"));
    assert!(error_of(s.raw(b"\n")).contains("malformed request"));
    // Without a newline but with the write side closed: a whole request.
    let mut c = UnixStream::connect(socket_path(s.path())).expect("connect");
    c.write_all(b"{\"cmd\":\"ping\"}").expect("write");
    c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_eq!(read_answer(c), Answer::Pong { pid: 7 });
    assert_eq!(ping(s.path()), Answer::Pong { pid: 7 });
}

#[test]
fn a_ten_megabyte_line_is_refused_by_its_size() {
    let s = Served::new();
    let huge = vec![b'x'; 10 << 20];
    let message = error_of(s.raw(&huge));
    assert!(message.contains("longer than 64 KiB"), "{message}");
    // Just over the cap, newline included, then just under.
    let mut over = vec![b' '; MAX_REQUEST];
    over.push(b'\n');
    assert!(error_of(s.raw(&over)).contains("longer than"));
    let mut under = b"{\"cmd\":\"ping\"}".to_vec();
    under.resize(MAX_REQUEST - 1, b' ');
    under.push(b'\n');
    assert_eq!(s.raw(&under), Answer::Pong { pid: 7 });
    assert_eq!(ping(s.path()), Answer::Pong { pid: 7 });
}

#[test]
fn a_panicking_handler_answers_an_error_and_the_socket_serves_on() {
    let s = Served::new();
    let show = Request::Show { id: "panic".into() };
    let message = error_of(request(s.path(), &show, Duration::from_secs(30)).expect("answered"));
    assert!(message.contains("a handler bug"), "{message}");
    assert_eq!(ping(s.path()), Answer::Pong { pid: 7 });
}

#[test]
fn a_trickling_client_meets_the_deadline_and_blocks_nobody() {
    let s = Served::new();
    let path = socket_path(s.path());
    // One byte now and one a second later, for longer than the deadline:
    // a per-read timeout would never fire.
    let trickle = std::thread::spawn(move || {
        let mut c = UnixStream::connect(path).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let reader = c.try_clone().expect("clone");
        let writer = std::thread::spawn(move || {
            for _ in 0..(REQUEST_DEADLINE.as_secs() + 3) {
                if c.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        let answer = read_answer(reader);
        let _ = writer.join();
        answer
    });
    // Silent clients too: they hold places but not the socket.
    let silent: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(socket_path(s.path())).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // Answered while the trickling client still trickles.
    assert_eq!(ping(s.path()), Answer::Pong { pid: 7 });
    assert!(
        !trickle.is_finished(),
        "the trickling client was answered first"
    );
    let message = error_of(trickle.join().expect("trickle thread"));
    assert!(message.contains("no whole request within"), "{message}");
    for c in silent {
        let message = error_of(read_answer(c));
        assert!(message.contains("no whole request within"), "{message}");
    }
}

#[test]
fn fifty_concurrent_status_calls_are_all_answered() {
    let s = Served::new();
    let path = s.path().to_path_buf();
    let answers: Vec<Answer> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let path = &path;
                scope.spawn(move || {
                    request(path, &Request::Status { top: i }, Duration::from_secs(30))
                        .expect("answered")
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().expect("call")).collect()
    });
    for (i, a) in answers.into_iter().enumerate() {
        assert_eq!(error_of(a), format!("status {i}"));
    }
    assert_eq!(ping(s.path()), Answer::Pong { pid: 7 });
}

#[test]
fn read_request_stops_at_the_newline_and_at_the_cap() {
    let (mut a, mut b) = UnixStream::pair().expect("pair");
    a.write_all(b"abc\ndef").expect("write");
    let line = read_request(&mut b, Duration::from_secs(5), 16).expect("a line");
    assert_eq!(line, b"abc");
    let (mut a, mut b) = UnixStream::pair().expect("pair");
    a.write_all(&[b'x'; 17]).expect("write");
    assert!(matches!(
        read_request(&mut b, Duration::from_secs(5), 16),
        Err(ReadError::TooLong)
    ));
    let (_a, mut b) = UnixStream::pair().expect("pair");
    assert!(matches!(
        read_request(&mut b, Duration::from_millis(50), 16),
        Err(ReadError::Deadline)
    ));
}

#[test]
fn an_answer_is_told_cut_off_never_begun_or_unreadable() {
    let whole = b"{\"answer\":\"pong\",\"pid\":3}\n";
    assert_eq!(
        super::read_answer(&whole[..]).expect("whole"),
        Answer::Pong { pid: 3 }
    );
    let cut = super::read_answer(&whole[..12]).expect_err("cut off");
    assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof);
    assert!(cut.to_string().contains("cut off after 12 bytes"), "{cut}");
    // Cut inside a multi-byte character: still a cut, not bad UTF-8.
    let dash = "{\"answer\":\"error\",\"message\":\"a — b\"}\n".as_bytes();
    let inside = dash.iter().position(|&b| b >= 0x80).expect("the dash") + 1;
    let cut = super::read_answer(&dash[..inside]).expect_err("cut in a character");
    assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof, "{cut}");
    assert!(super::read_answer(dash).is_ok());
    let none = super::read_answer(&b""[..]).expect_err("nothing");
    assert_eq!(none.kind(), io::ErrorKind::ConnectionAborted);
    let odd = super::read_answer(&b"{\"answer\":\"news\"}\n"[..]).expect_err("unknown");
    assert_eq!(odd.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn a_daemon_that_stops_mid_answer_is_reported_as_such_by_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = bind(dir.path()).expect("bind");
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("a client");
        let mut line = String::new();
        BufReader::new(&conn)
            .read_line(&mut line)
            .expect("its request");
        // Half of an answer, then gone (as `send` past its deadline).
        conn.write_all(b"{\"answer\":\"status\",\"rep")
            .expect("half written");
    });
    let e = request(dir.path(), &Request::Ping, Duration::from_secs(30)).expect_err("cut off");
    server.join().expect("server");
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
}
