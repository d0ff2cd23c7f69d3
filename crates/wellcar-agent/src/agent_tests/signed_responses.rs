//! Signed Omaha answers (`SERVER_PUBLIC_KEY`, `--response-key`) and the fleet token, against
//! the real server over loopback HTTP. [`Mitm`] is a man in the middle on loopback that
//! forwards to the real server and can rewrite or replay its answers.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use wellcar_omaha::headers::{FLEET_TOKEN, REQUEST_NONCE, RESPONSE_SIGNATURE};
use wellcar_server::response_signing::ResponseSigner;

use super::*;
use crate::agent::AgentError;
use wellcar_omaha::signature::SignatureError;

/// The server's response key in these tests.
fn response_key() -> SigningKey {
    SigningKey::from_bytes(&[0x5e; 32])
}

/// A server that signs its answers with `key` (as `--response-key` does).
async fn signing_server(dir: &Path, key: &SigningKey) -> Server {
    let signer = ResponseSigner::new(key.clone());
    Server::start_with(dir, "127.0.0.1:0".parse().unwrap(), move |s| {
        s.response_signer = Some(signer)
    })
    .await
}

/// update.conf lines naming `key`'s public half (written next to the host) as the server key.
fn server_key_config(dir: &Path, key: &SigningKey) -> String {
    let path = dir.join("server-response.pub");
    std::fs::write(
        &path,
        wellcar_payload::keys::public_key_pem(&key.verifying_key()),
    )
    .unwrap();
    format!("SERVER_PUBLIC_KEY={}\n", path.display())
}

/// One Omaha request as the man in the middle saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// Header lines, names lowercased.
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An answer as relayed: body and signature header.
#[derive(Debug, Clone)]
struct Answer {
    body: Vec<u8>,
    signature: Option<String>,
}

/// What the man in the middle does with the server's answers.
#[derive(Clone)]
enum Mode {
    /// Relay them unchanged.
    Forward,
    /// Rewrite the body, keeping the server's signature header.
    Rewrite(Arc<dyn Fn(&str) -> String + Send + Sync>),
    /// Answer every request after the first with the first answer (recorded, signature and
    /// all), without asking the server.
    ReplayFirst,
}

/// A man in the middle on loopback in front of the Omaha endpoint (see the module docs).
struct Mitm {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Mitm {
    fn start(upstream: String, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/update/", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let recorded: Arc<Mutex<Option<Answer>>> = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (upstream, mode, log, recorded) = (
                    upstream.clone(),
                    mode.clone(),
                    log.clone(),
                    recorded.clone(),
                );
                std::thread::spawn(move || relay(stream, &upstream, &mode, &log, &recorded));
            }
        });
        Mitm { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves one request on `stream` (see [`Mode`]).
fn relay(
    mut stream: TcpStream,
    upstream: &str,
    mode: &Mode,
    log: &Mutex<Vec<Seen>>,
    recorded: &Mutex<Option<Answer>>,
) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let seen = Seen { headers };
    let length: usize = seen
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while raw.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let body = raw[head_end..head_end + length].to_vec();
    log.lock().unwrap().push(seen.clone());
    let replayed = match mode {
        Mode::ReplayFirst => recorded.lock().unwrap().clone(),
        _ => None,
    };
    let answer = replayed.unwrap_or_else(|| {
        let mut request = ureq::post(upstream).header("Content-Type", "text/xml");
        for name in [REQUEST_NONCE, FLEET_TOKEN] {
            if let Some(v) = seen.header(name) {
                request = request.header(name, v);
            }
        }
        let response = request.send(&body[..]).unwrap();
        let signature = response
            .headers()
            .get(RESPONSE_SIGNATURE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().read_to_vec().unwrap();
        let answer = Answer { body, signature };
        recorded.lock().unwrap().get_or_insert(answer.clone());
        answer
    });
    let body = match mode {
        Mode::Rewrite(f) => f(&String::from_utf8_lossy(&answer.body)).into_bytes(),
        _ => answer.body,
    };
    let mut reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(signature) = &answer.signature {
        reply.push_str(&format!("{RESPONSE_SIGNATURE}: {signature}\r\n"));
    }
    reply.push_str("\r\n");
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.write_all(&body);
}

/// The signature failure of a check, or a panic naming what came instead.
fn signature_failure(err: &AgentError, url: &str) -> SignatureError {
    match err {
        AgentError::UnauthenticatedResponse {
            url: named, reason, ..
        } => {
            assert_eq!(named, url, "the error names the server");
            assert!(err.to_string().contains(url), "{err}");
            assert!(err.to_string().contains("SERVER_PUBLIC_KEY"), "{err}");
            reason.clone()
        }
        other => panic!("expected UnauthenticatedResponse, got {other:?}"),
    }
}

/// Finding "signed responses" (issue part 4): a signed offer is accepted and installed end to
/// end (check, event reports, staging), and every Omaha request carries a fresh nonce and the
/// update.conf `FLEET_TOKEN` as `X-Wellcar-Fleet-Token`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_answers_are_accepted_and_requests_carry_nonce_and_fleet_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let payload = make_payload(dir.path(), "1.1.0", &key);
    let server = signing_server(dir.path(), &response_key()).await;
    server.publish("1.1.0", &payload.path).await;
    let mitm = Mitm::start(server.omaha_url(), Mode::Forward);
    let config = format!(
        "{}FLEET_TOKEN=fleet-7f3a\n",
        server_key_config(dir.path(), &response_key())
    );
    let host = Host::new(&mitm.url, &key, &config);
    let mut agent = host.agent();
    let (outcome, agent) =
        blocking(move || (agent.check(InstallSource::Scheduler).unwrap(), agent)).await;
    assert_eq!(
        outcome,
        CheckOutcome::Staged {
            version: "1.1.0".into(),
            poll_interval: Some(1800)
        }
    );
    asserts_staged(&host, &payload);
    assert!(
        agent.state().outbox.is_empty(),
        "signed acknowledgements taken"
    );
    assert_eq!(server.events().await, INSTALLED_EVENTS);
    let seen = mitm.seen();
    assert!(seen.len() >= 2, "the check and the event reports: {seen:?}");
    let mut nonces: Vec<&str> = seen
        .iter()
        .filter_map(|s| s.header(REQUEST_NONCE))
        .collect();
    assert_eq!(nonces.len(), seen.len(), "every request has a nonce");
    assert!(nonces
        .iter()
        .all(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit())));
    nonces.sort_unstable();
    nonces.dedup();
    assert_eq!(nonces.len(), seen.len(), "nonces are fresh");
    assert!(
        seen.iter()
            .all(|s| s.header(FLEET_TOKEN) == Some("fleet-7f3a")),
        "{seen:?}"
    );
}

/// Finding "signed responses": with `SERVER_PUBLIC_KEY` set, an answer from a server that does
/// not sign is rejected, names the server, and is not acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_answer_is_rejected_when_a_key_is_configured() {
    let (dir, _key, _payload, server, host) = offered("").await;
    host.put(
        host.paths.config_files.last().unwrap(),
        &server_key_config(dir.path(), &response_key()),
    );
    let url = server.omaha_url();
    let mut agent = host.agent();
    let (result, agent) = blocking(move || (agent.check(InstallSource::Scheduler), agent)).await;
    let err = result.expect_err("an unsigned answer is refused");
    assert_eq!(signature_failure(&err, &url), SignatureError::Missing);
    assert_eq!(
        agent.state().phase,
        Phase::Idle { paused: None },
        "offer not taken"
    );
    assert_eq!(agent.state().consecutive_failures(), 1);
    assert!(agent.state().outbox.is_empty());
    asserts_nothing_staged(&host);
    assert_eq!(server.relay.served.load(Ordering::SeqCst), 0, "no download");
}

/// Finding "signed responses": an answer signed with another key than `SERVER_PUBLIC_KEY`
/// names is rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_signed_with_another_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let server = signing_server(dir.path(), &SigningKey::from_bytes(&[0x77; 32])).await;
    let host = Host::new(
        &server.omaha_url(),
        &key(),
        &server_key_config(dir.path(), &response_key()),
    );
    let url = server.omaha_url();
    let mut agent = host.agent();
    let (result, agent) = blocking(move || (agent.check(InstallSource::Scheduler), agent)).await;
    let err = result.expect_err("another key's signature is refused");
    assert_eq!(signature_failure(&err, &url), SignatureError::Invalid);
    assert_eq!(
        agent.state().last_checked_time,
        0,
        "no check recorded as done"
    );
}

/// Finding "signed responses" (freeze attack by forgery): a man in the middle turns the
/// server's signed offer into "noupdate", keeping the signature header. The agent rejects it:
/// the check fails (it does not record "no update"), and nothing is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_answer_with_a_real_signature_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let payload = make_payload(dir.path(), "1.1.0", &key);
    let server = signing_server(dir.path(), &response_key()).await;
    server.publish("1.1.0", &payload.path).await;
    let forge = |body: &str| {
        let start = body.find("<updatecheck").expect("an updatecheck");
        let end = body.find("</updatecheck>").expect("its end") + "</updatecheck>".len();
        format!(
            "{}<updatecheck status=\"noupdate\"></updatecheck>{}",
            &body[..start],
            &body[end..]
        )
    };
    let mitm = Mitm::start(server.omaha_url(), Mode::Rewrite(Arc::new(forge)));
    let host = Host::new(
        &mitm.url,
        &key,
        &server_key_config(dir.path(), &response_key()),
    );
    let url = mitm.url.clone();
    let mut agent = host.agent();
    let (result, agent) = blocking(move || (agent.check(InstallSource::Scheduler), agent)).await;
    let err = result.expect_err("a forged noupdate is refused");
    assert_eq!(signature_failure(&err, &url), SignatureError::Invalid);
    assert_eq!(
        agent.state().last_checked_time,
        0,
        "not recorded as checked"
    );
    assert_eq!(agent.state().consecutive_failures(), 1);
    asserts_nothing_staged(&host);
}

/// Finding "signed responses" (freeze attack by replay): a man in the middle records the
/// server's validly signed "noupdate" and answers every later check with it. The first check
/// passes; the replay, whose signature is bound to the first request's nonce and body, is
/// rejected, so the agent keeps failing (and retrying) instead of believing it is current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_signed_answer_for_another_request_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let server = signing_server(dir.path(), &response_key()).await;
    let mitm = Mitm::start(server.omaha_url(), Mode::ReplayFirst);
    let host = Host::new(
        &mitm.url,
        &key(),
        &server_key_config(dir.path(), &response_key()),
    );
    let url = mitm.url.clone();
    let mut agent = host.agent();
    let (first, second, agent) = blocking(move || {
        let first = agent.check(InstallSource::Scheduler);
        let second = agent.check(InstallSource::Scheduler);
        (first, second, agent)
    })
    .await;
    assert_eq!(first.unwrap(), NO_UPDATE_POLL_1800);
    let err = second.expect_err("the replayed answer is refused");
    assert_eq!(signature_failure(&err, &url), SignatureError::Invalid);
    assert_eq!(agent.state().consecutive_failures(), 1);
    assert_eq!(mitm.seen().len(), 2);
}

/// Old agents keep working: without `SERVER_PUBLIC_KEY`, answers are taken as on Flatcar, from
/// a signing server and from one that does not sign; the "unauthenticated" warning is logged
/// once per agent process, not on every poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_answers_are_accepted_and_the_warning_is_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("signing")).unwrap();
    let signing = signing_server(&dir.path().join("signing"), &response_key()).await;
    let plain = Server::start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let host = Host::new(&plain.omaha_url(), &key(), "");
    let signing_url = signing.omaha_url();
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = {
        let logs = logs.clone();
        move || LogWriter(logs.clone())
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .finish();
    let outcomes = blocking_scope(|| {
        tracing::subscriber::with_default(subscriber, || {
            let mut agent = host.agent();
            let mut outcomes = vec![];
            for _ in 0..2 {
                outcomes.push(agent.check(InstallSource::Scheduler).unwrap());
            }
            host.put(
                host.paths.config_files.last().unwrap(),
                &format!("SERVER={signing_url}\n"),
            );
            outcomes.push(agent.check(InstallSource::Scheduler).unwrap());
            outcomes
        })
    });
    assert_eq!(outcomes, [NO_UPDATE_POLL_1800; 3]);
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert_eq!(
        logs.matches("Omaha answers are not authenticated").count(),
        1,
        "{logs}"
    );
}

/// Collects log output for [`without_a_key_answers_are_accepted_and_the_warning_is_logged_once`].
struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
