//! A private, throw-away etcd for tests: locksmith's etcd-lock against the real thing.
//!
//! Contract: [`Etcd::start`] runs Debian's `etcd` (package `etcd-server`, 3.4) as a one-member
//! cluster in a fresh temporary directory, listening on free loopback ports, with the **v2 keys
//! API enabled** (`--enable-v2=true`, what locksmith speaks). It returns once etcd logs that it
//! serves client requests (a condition, never a fixed sleep), and fails the test with etcd's log
//! if it exits or does not get there within [`START_TIMEOUT`]. [`Etcd::start_tls`] serves
//! `https://` with a certificate for `localhost` and `127.0.0.1` and **requires client
//! certificates** (`--client-cert-auth`), all issued by a fresh CA ([`crate::pki::TestCa`]);
//! the PEM files are in [`EtcdTls`].
//!
//! Dropping the [`Etcd`] kills the process, removes the directory and stops the watchdog that
//! does the same if the test process dies first (`kill -9`). A missing `etcd` fails the test naming its
//! package (no silent skip).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long etcd gets to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What etcd 3.4 (`--logger=zap`) logs once it is ready and serves clients
/// ("serving client traffic securely" / "… insecurely; …"), after `ReadyNotify`.
const READY_MESSAGE: &str = "serving client traffic";

/// The TLS files of an etcd from [`Etcd::start_tls`].
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA that issued the server and client certificates (what a client trusts).
    pub ca_file: PathBuf,
    /// A client certificate etcd accepts.
    pub client_cert_file: PathBuf,
    /// Its key (PKCS#8 PEM).
    pub client_key_file: PathBuf,
}

/// A running private etcd; killed and removed on drop.
#[derive(Debug)]
pub struct Etcd {
    /// The client URL (`http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS).
    pub url: String,
    /// The TLS files, for an etcd from [`Etcd::start_tls`].
    pub tls: Option<EtcdTls>,
    dir: PathBuf,
    child: Child,
    watchdog: Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("finding a free loopback port")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

impl Etcd {
    /// A plain-http etcd (see the module docs).
    pub fn start() -> Etcd {
        Self::launch(false)
    }

    /// An https etcd that requires client certificates (see the module docs).
    pub fn start_tls() -> Etcd {
        Self::launch(true)
    }

    /// etcd's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// The process id (to stop it in a test: an unreachable etcd).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn launch(tls: bool) -> Etcd {
        let program = crate::tools::require("etcd");
        let dir =
            std::env::temp_dir().join(format!("wellcar-etcd-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let (client_port, peer_port) = (free_port(), free_port());
        let scheme = if tls { "https" } else { "http" };
        let listen = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(program);
        cmd.arg("--name=wellcar-test")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={listen}"))
            .arg(format!("--advertise-client-urls={listen}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=wellcar-test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--enable-v2=true")
            .arg("--logger=zap")
            .arg(format!("--log-outputs={}", dir.join("etcd.log").display()));
        let tls_files = tls.then(|| {
            let ca = crate::pki::TestCa::new("wellcar test etcd CA").expect("generating a test CA");
            let (server_cert, server_key) = ca
                .issue(&["localhost", "127.0.0.1"], "etcd")
                .expect("issuing the etcd server certificate");
            let (client_cert, client_key) = ca
                .issue(&["wellcar-test-client"], "wellcar-test-client")
                .expect("issuing the etcd client certificate");
            let files = EtcdTls {
                ca_file: dir.join("ca.pem"),
                client_cert_file: dir.join("client.pem"),
                client_key_file: dir.join("client-key.pem"),
            };
            write(&files.ca_file, &ca.pem());
            write(&files.client_cert_file, &client_cert);
            write(&files.client_key_file, &client_key);
            write(&dir.join("server.pem"), &server_cert);
            write(&dir.join("server-key.pem"), &server_key);
            cmd.arg(format!("--cert-file={}", dir.join("server.pem").display()))
                .arg(format!(
                    "--key-file={}",
                    dir.join("server-key.pem").display()
                ))
                .arg(format!("--trusted-ca-file={}", files.ca_file.display()))
                .arg("--client-cert-auth=true");
            files
        });
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        // Watchdog: kill etcd and remove its directory once this process is gone.
        let stop = format!(
            "while kill -0 {test} 2>/dev/null; do sleep 1; done; kill -9 {etcd} 2>/dev/null; rm -rf {dir}",
            test = std::process::id(),
            etcd = child.id(),
            dir = dir.display()
        );
        let watchdog = Command::new("sh")
            .args(["-c", &stop])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the etcd watchdog");
        let url = if tls {
            format!("https://localhost:{client_port}")
        } else {
            listen
        };
        let mut etcd = Etcd {
            url,
            tls: tls_files,
            dir,
            child,
            watchdog,
        };
        crate::wait::wait_until("etcd to serve client requests", START_TIMEOUT, || {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                panic!(
                    "etcd exited ({status}) before serving; its log:\n{}",
                    etcd.log()
                );
            }
            etcd.log().contains(READY_MESSAGE).then_some(())
        });
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        // Its work is done; it would only wait for this process to end.
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    /// A plain HTTP/1.0 GET on loopback (no client crate here: this is the helper's own check).
    fn http_get(url: &str, path: &str) -> String {
        let authority = url.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(authority).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn serves_the_v2_keys_api_and_is_gone_after_drop() {
        let etcd = Etcd::start();
        let answer = http_get(&etcd.url, "/v2/keys/");
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(answer.contains("\"action\":\"get\""), "{answer}");
        let dir = etcd.dir.clone();
        let url = etcd.url.clone();
        drop(etcd);
        assert!(!dir.exists(), "{} is left behind", dir.display());
        let authority = url.trim_start_matches("http://");
        assert!(
            std::net::TcpStream::connect(authority).is_err(),
            "etcd still listens on {url}"
        );
    }

    #[test]
    fn tls_writes_the_client_files() {
        let etcd = Etcd::start_tls();
        let tls = etcd.tls.clone().unwrap();
        assert!(etcd.url.starts_with("https://localhost:"), "{}", etcd.url);
        for f in [&tls.ca_file, &tls.client_cert_file, &tls.client_key_file] {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.starts_with("-----BEGIN"), "{}", f.display());
        }
        assert!(etcd.log().contains("client-cert-auth"), "{}", etcd.log());
    }
}
