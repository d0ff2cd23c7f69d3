//! A private, throw-away PostgreSQL cluster for tests and benchmarks.
//!
//! Contract: [`shared_cluster`] returns the server named by `WELLCAR_TEST_POSTGRES_URL` if set
//! (an admin URL such as `postgres://postgres@127.0.0.1:5432/postgres`), otherwise it runs
//! `initdb` from `/usr/lib/postgresql/*/bin` into a temporary directory (as the `postgres` user when
//! running as root) and starts it on a free loopback port. A watchdog stops that cluster when
//! the calling process exits. If PostgreSQL is not installed this fails with an error that says
//! so: PostgreSQL tests must never skip silently.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Why a cluster could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL binaries.
    #[error("postgresql is not installed: no initdb under /usr/lib/postgresql/*/bin (Debian package `postgresql`; scripts/install-deps.sh installs it), and WELLCAR_TEST_POSTGRES_URL is not set")]
    NotInstalled,
    /// A command failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its output.
        output: String,
    },
    /// I/O error.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running cluster: an admin URL template.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `postgres://user@host:port` (no database).
    pub base_url: String,
    /// Data directory when private.
    pub data_dir: Option<PathBuf>,
    /// For a cluster from [`start_private_tls`]: the PEM file of the CA that issued the
    /// server's certificate (for `localhost` only, not `127.0.0.1`).
    pub tls_ca: Option<PathBuf>,
}

impl Cluster {
    /// Creates a fresh, uniquely named database and returns its URL.
    pub fn create_database(&self) -> Result<String, ClusterError> {
        let name = format!("wellcar_{}", uuid::Uuid::new_v4().simple());
        let admin = format!("{}/postgres", self.base_url);
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).map_err(|e| {
            ClusterError::Command {
                command: format!("connect {admin}"),
                output: e.to_string(),
            }
        })?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| ClusterError::Command {
                command: format!("CREATE DATABASE {name}"),
                output: e.to_string(),
            })?;
        Ok(format!("{}/{name}", self.base_url))
    }
}

fn find_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(mut cmd: Command) -> Result<(), ClusterError> {
    let line = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| ClusterError::Io {
        what: format!("running {line}"),
        source: e,
    })?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            command: line,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

fn as_pg_user(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ClusterError::Io {
            what: "finding a free port".into(),
            source: e,
        })
}

/// Starts a private cluster (see the module docs).
pub fn start_private() -> Result<Cluster, ClusterError> {
    start(false)
}

/// Starts a private cluster that also accepts TLS (`ssl=on`), with a server certificate for
/// `localhost` issued by a fresh CA ([`Cluster::tls_ca`]). Plain connections still work.
pub fn start_private_tls() -> Result<Cluster, ClusterError> {
    start(true)
}

fn write_file(path: &Path, contents: &str) -> Result<(), ClusterError> {
    std::fs::write(path, contents).map_err(|e| ClusterError::Io {
        what: format!("writing {}", path.display()),
        source: e,
    })
}

/// Writes `server.crt`/`server.key` into `data` and the CA to `dir/ca.pem`; returns the CA's path.
fn write_tls_files(dir: &Path, data: &Path) -> Result<PathBuf, ClusterError> {
    use std::os::unix::fs::PermissionsExt as _;
    let pki = crate::pki::TestPki::generate("wellcar test PostgreSQL CA", &["localhost"]).map_err(
        |e| ClusterError::Command {
            command: "generating test certificates".into(),
            output: e.to_string(),
        },
    )?;
    write_file(&data.join("server.crt"), &pki.server_cert_pem)?;
    let key = data.join("server.key");
    write_file(&key, &pki.server_key_pem)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        ClusterError::Io {
            what: format!("chmod 600 {}", key.display()),
            source: e,
        }
    })?;
    let ca = dir.join("ca.pem");
    write_file(&ca, &pki.ca_pem)?;
    Ok(ca)
}

fn start(tls: bool) -> Result<Cluster, ClusterError> {
    let bin = find_bin_dir().ok_or(ClusterError::NotInstalled)?;
    let root = is_root();
    let dir = std::env::temp_dir().join(format!("wellcar-pg-{}", uuid::Uuid::new_v4().simple()));
    let data = dir.join("data");
    std::fs::create_dir_all(&dir).map_err(|e| ClusterError::Io {
        what: format!("creating {}", dir.display()),
        source: e,
    })?;
    if root {
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:postgres"]).arg(&dir);
        run(chown)?;
    }
    let mut initdb = as_pg_user(root, &bin.join("initdb"));
    initdb
        .args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "-D",
        ])
        .arg(&data);
    run(initdb)?;
    let tls_ca = if tls {
        let ca = write_tls_files(&dir, &data)?;
        if root {
            let mut chown = Command::new("chown");
            chown
                .args(["postgres:postgres"])
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"));
            run(chown)?;
        }
        Some(ca)
    } else {
        None
    };
    let port = free_port()?;
    let mut ctl = as_pg_user(root, &bin.join("pg_ctl"));
    ctl.arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("log"))
        .arg("-o")
        .arg(format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on -c ssl={}",
            dir.display(),
            if tls { "on" } else { "off" }
        ))
        .args(["-w", "start"]);
    run(ctl)?;
    // Watchdog: stop the cluster (and remove it) once this process is gone.
    let pid = std::process::id();
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {} {} -D {} -m immediate stop >/dev/null 2>&1; rm -rf {}",
        if root { "runuser -u postgres --" } else { "" },
        bin.join("pg_ctl").display(),
        data.display(),
        dir.display()
    );
    Command::new("sh")
        .args(["-c", &stop])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| ClusterError::Io {
            what: "starting the cluster watchdog".into(),
            source: e,
        })?;
    Ok(Cluster {
        base_url: format!("postgres://postgres@127.0.0.1:{port}"),
        data_dir: Some(data),
        tls_ca,
    })
}

/// One cluster per process: `WELLCAR_TEST_POSTGRES_URL` or a private one.
pub fn shared_cluster() -> Result<Cluster, String> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("WELLCAR_TEST_POSTGRES_URL") {
                let base = url
                    .rsplit_once('/')
                    .filter(|(b, _)| b.contains("://") && b.len() > "postgres://".len())
                    .map_or(url.clone(), |(b, _)| b.to_owned());
                return Ok(Cluster {
                    base_url: base,
                    data_dir: None,
                    tls_ca: None,
                });
            }
            start_private().map_err(|e| e.to_string())
        })
        .clone()
}
