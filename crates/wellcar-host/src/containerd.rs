//! `check-containerd`: the default health check that containerd answers on its gRPC socket.
//!
//! Contract: the check passes once a connection to the socket (default
//! [`CONTAINERD_SOCKET`]) is answered with an HTTP/2 server connection preface, that is, after
//! the client's preface, a first frame of type SETTINGS on stream 0 (RFC 9113 §3.4). containerd's
//! gRPC server sends it only while it serves. A socket that does not exist yet or refuses the
//! connection is retried until the timeout; any other answer fails at once, naming what came.
//!
//! Why not `ctr version`, which Wellcar ran before: ctr is a 23 MB Go program. Run at every boot
//! it left 20 MiB of itself in the page cache (`free` counted about half of that as used) and
//! cost seconds of CPU in the middle of the boot under TCG (measured with `fincore` and
//! `scripts/bench-boot.sh`). What is exchanged here is the fixed 24-byte preface, an empty
//! SETTINGS frame and one 9-byte frame header: no protocol is implemented, so no HTTP/2 stack is
//! linked into `wellcar-update` for it.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Event;

/// containerd's default gRPC socket.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
/// The SETTINGS frame type.
const SETTINGS: u8 = 4;
/// How long to wait between tries while the socket is missing or refuses.
const RETRY: Duration = Duration::from_millis(250);

/// `check-containerd` options.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// containerd's gRPC socket.
    #[arg(long, default_value = CONTAINERD_SOCKET)]
    pub socket: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 240)]
    pub timeout: u64,
}

/// Why containerd did not answer.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The socket never accepted a connection within the timeout.
    #[error("{socket}: no connection within {timeout_s} s")]
    Unreachable {
        socket: PathBuf,
        timeout_s: u64,
        source: std::io::Error,
    },
    /// The connection failed after it was accepted.
    #[error("{socket}: {action}")]
    Io {
        socket: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// Something answered, but not an HTTP/2 server.
    #[error("{socket}: the first frame is not HTTP/2 SETTINGS on stream 0 (header {header:02x?})")]
    NotHttp2 { socket: PathBuf, header: [u8; 9] },
}

/// Connects to `socket` until `timeout` and checks that an HTTP/2 server answers.
pub fn check(socket: &Path, timeout: Duration) -> Result<(), CheckError> {
    let deadline = Instant::now() + timeout;
    let io = |action: &'static str| {
        move |source| CheckError::Io {
            socket: socket.to_path_buf(),
            action,
            source,
        }
    };
    let mut stream = loop {
        match UnixStream::connect(socket) {
            Ok(s) => break s,
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(RETRY);
            }
            Err(source) => {
                return Err(CheckError::Unreachable {
                    socket: socket.to_path_buf(),
                    timeout_s: timeout.as_secs(),
                    source,
                })
            }
        }
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    stream
        .set_read_timeout(Some(left))
        .map_err(io("setting a read timeout"))?;
    stream
        .set_write_timeout(Some(left))
        .map_err(io("setting a write timeout"))?;
    stream
        .write_all(&[CLIENT_PREFACE, &EMPTY_SETTINGS].concat())
        .map_err(io("sending the HTTP/2 preface"))?;
    let mut header = [0u8; 9];
    stream
        .read_exact(&mut header)
        .map_err(io("reading the server's first frame"))?;
    let stream_id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    if header[3] != SETTINGS || stream_id != 0 {
        return Err(CheckError::NotHttp2 {
            socket: socket.to_path_buf(),
            header,
        });
    }
    Ok(())
}

/// Runs `check-containerd`; reports [`Event::ContainerdAnswers`] when it passes.
pub fn run(opts: &Opts, on_event: &mut impl FnMut(Event)) -> anyhow::Result<()> {
    check(&opts.socket, Duration::from_secs(opts.timeout))?;
    on_event(Event::ContainerdAnswers {
        socket: opts.socket.clone(),
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A real HTTP/2 server (hyper's) on a unix socket, as containerd's gRPC server is.
    fn serve_http2(socket: PathBuf) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&socket).unwrap();
                let (stream, _) = listener.accept().await.unwrap();
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
                });
                // The check hangs up after the server's SETTINGS; that ends the connection.
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            })
        })
    }

    #[test]
    fn an_http2_server_passes_even_when_it_starts_late() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let late = socket.clone();
        // The server binds after the check started: the missing socket is retried.
        let server = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(600));
            serve_http2(late).join().unwrap();
        });
        let mut events = Vec::new();
        let opts = Opts {
            socket: socket.clone(),
            timeout: 30,
        };
        run(&opts, &mut |e| events.push(e)).unwrap();
        server.join().unwrap();
        let [Event::ContainerdAnswers { socket: answered }] = &events[..] else {
            panic!("{events:?}");
        };
        assert_eq!(answered, &socket);
        assert_eq!(
            events[0].to_string(),
            format!("containerd answers on {}", socket.display())
        );
    }

    #[test]
    fn an_http1_server_fails_naming_what_came() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 33];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        });
        let err = check(&socket, Duration::from_secs(30)).unwrap_err();
        assert!(matches!(err, CheckError::NotHttp2 { .. }), "{err}");
        assert!(err.to_string().contains("containerd.sock"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn a_missing_socket_fails_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let started = Instant::now();
        let err = check(&socket, Duration::from_millis(600)).unwrap_err();
        assert!(matches!(err, CheckError::Unreachable { .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(600));
        assert!(err.to_string().contains("absent.sock"), "{err}");
    }
}
