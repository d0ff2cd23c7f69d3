//! `locksmithctl`'s commands, shared by the `locksmithctl` binary and `wellcar-update lock`.
//!
//! | command | does | prints (stdout, as locksmith) |
//! |---|---|---|
//! | `status` | reads the semaphore | `Available: N`, `Max: M`, and if held a blank line, `MACHINE ID` and one holder a line |
//! | `lock [ID]` | takes a slot for ID (default: `/etc/machine-id`) | nothing |
//! | `unlock [ID]` | gives ID's slot back | nothing |
//! | `set-max N` | sets the number of slots | `Old-Max: X`, `Max: N` |
//!
//! Failures carry locksmith's messages (`Error initializing etcd client: …`, `Error locking: …`,
//! `Error unlocking: …`, `Error setting value: …`, `Cannot read machine-id …`); the binaries
//! print them on stderr and exit 1.
//!
//! Options are locksmith's global flags ([`EtcdArgs`]), also read from `LOCKSMITHCTL_*`
//! environment variables when not given. locksmith parses them with Go's `flag` package, which
//! takes `-name` as well as `--name`: [`go_style_args`] turns the single-dash long forms into
//! double-dash ones before clap sees them.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::{machine_id, Error, EtcdConfig, EtcdLock, LocksmithSettings, Semaphore};

/// locksmith's global etcd flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoint; repeat it, or give a comma-separated list [default: http://127.0.0.1:2379,http://127.0.0.1:4001]
    #[arg(
        long = "endpoint",
        value_name = "URL",
        env = "LOCKSMITHCTL_ENDPOINT",
        value_delimiter = ',',
        global = true
    )]
    pub endpoints: Vec<String>,
    /// CA file (PEM) that signed etcd's certificate
    #[arg(
        long = "etcd-cafile",
        value_name = "FILE",
        env = "LOCKSMITHCTL_ETCD_CAFILE",
        global = true
    )]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication
    #[arg(
        long = "etcd-certfile",
        value_name = "FILE",
        env = "LOCKSMITHCTL_ETCD_CERTFILE",
        global = true
    )]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM)
    #[arg(
        long = "etcd-keyfile",
        value_name = "FILE",
        env = "LOCKSMITHCTL_ETCD_KEYFILE",
        global = true
    )]
    pub key_file: Option<PathBuf>,
    /// Username for etcd's authentication
    #[arg(
        long = "etcd-username",
        value_name = "USER",
        env = "LOCKSMITHCTL_ETCD_USERNAME",
        global = true
    )]
    pub username: Option<String>,
    /// Password for etcd's authentication
    #[arg(
        long = "etcd-password",
        value_name = "PASSWORD",
        env = "LOCKSMITHCTL_ETCD_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub password: Option<String>,
    /// Lock group (default: the cluster-wide semaphore)
    #[arg(
        long = "group",
        value_name = "GROUP",
        env = "LOCKSMITHCTL_GROUP",
        global = true
    )]
    pub group: Option<String>,
}

impl EtcdArgs {
    /// The settings these flags name (empty values count as unset).
    pub fn settings(&self) -> LocksmithSettings {
        let set = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
        let endpoints: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        let mut etcd = if endpoints.is_empty() {
            EtcdConfig::default()
        } else {
            EtcdConfig::with_endpoints(endpoints)
        };
        etcd.ca_file = self.ca_file.clone();
        etcd.cert_file = self.cert_file.clone();
        etcd.key_file = self.key_file.clone();
        etcd.username = set(&self.username);
        etcd.password = set(&self.password);
        LocksmithSettings {
            etcd,
            group: set(&self.group),
        }
    }
}

/// The commands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CtlCommand {
    /// Get the status of the cluster wide reboot lock.
    Status,
    /// Lock this machine or a given machine-id for reboot.
    Lock {
        /// The holder id (default: this machine's /etc/machine-id).
        machine_id: Option<String>,
    },
    /// Unlock this machine or a given machine-id for reboot.
    Unlock {
        /// The holder id (default: this machine's /etc/machine-id).
        machine_id: Option<String>,
    },
    /// Set the maximum number of lock holders.
    SetMax {
        /// The number of machines that may reboot at a time.
        max: i64,
    },
}

/// What a command did; `Display` is locksmithctl's output (empty for lock and unlock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// `status`.
    Status(Semaphore),
    /// `lock`: the holder and the semaphore as stored.
    Locked {
        /// The holder id.
        holder: String,
        /// The semaphore after.
        semaphore: Semaphore,
    },
    /// `unlock`.
    Unlocked {
        /// The holder id.
        holder: String,
        /// The semaphore after.
        semaphore: Semaphore,
    },
    /// `set-max`.
    MaxSet {
        /// The max before.
        old_max: i64,
        /// The semaphore after.
        semaphore: Semaphore,
    },
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Report::Status(s) => {
                write!(f, "Available: {}\nMax: {}", s.semaphore, s.max)?;
                if !s.holders().is_empty() {
                    f.write_str("\n\nMACHINE ID")?;
                    for h in s.holders() {
                        write!(f, "\n{h}")?;
                    }
                }
                Ok(())
            }
            Report::Locked { .. } | Report::Unlocked { .. } => Ok(()),
            Report::MaxSet { old_max, semaphore } => {
                write!(f, "Old-Max: {old_max}\nMax: {}", semaphore.max)
            }
        }
    }
}

/// A command's failure, with locksmithctl's wording; the cause is the source.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Connecting or creating the semaphore failed.
    #[error("Error initializing etcd client")]
    Init(#[source] Error),
    /// No ID given and the machine-id is unreadable.
    #[error("Cannot read machine-id")]
    MachineId(#[source] Error),
    /// `lock` failed.
    #[error("Error locking")]
    Lock(#[source] Error),
    /// `unlock` failed.
    #[error("Error unlocking")]
    Unlock(#[source] Error),
    /// `status` or `set-max` failed (locksmith says "setting value" for both).
    #[error("Error setting value")]
    Value(#[source] Error),
}

/// Runs `command` against `settings`' semaphore. `root` is where `etc/machine-id` (the
/// default holder id) is read (`/` on a host).
pub fn run(
    settings: &LocksmithSettings,
    command: &CtlCommand,
    root: &Path,
) -> Result<Report, CtlError> {
    let holder = |id: &Option<String>| match id {
        Some(id) => Ok(id.clone()),
        None => machine_id(root).map_err(CtlError::MachineId),
    };
    let connect =
        || EtcdLock::new(&settings.etcd, settings.group.as_deref()).map_err(CtlError::Init);
    match command {
        CtlCommand::Status => Ok(Report::Status(connect()?.get().map_err(CtlError::Value)?)),
        CtlCommand::Lock { machine_id } => {
            let lock = connect()?;
            let holder = holder(machine_id)?;
            let semaphore = lock.lock(&holder).map_err(CtlError::Lock)?;
            Ok(Report::Locked { holder, semaphore })
        }
        CtlCommand::Unlock { machine_id } => {
            let lock = connect()?;
            let holder = holder(machine_id)?;
            let semaphore = lock.unlock(&holder).map_err(CtlError::Unlock)?;
            Ok(Report::Unlocked { holder, semaphore })
        }
        CtlCommand::SetMax { max } => {
            let (old_max, semaphore) = connect()?.set_max(*max).map_err(CtlError::Value)?;
            Ok(Report::MaxSet { old_max, semaphore })
        }
    }
}

/// Long options that take a value, as locksmithctl names them (plus `root`).
const VALUE_FLAGS: &[&str] = &[
    "endpoint",
    "etcd-cafile",
    "etcd-certfile",
    "etcd-keyfile",
    "etcd-username",
    "etcd-password",
    "group",
    "root",
];

/// Long options without a value.
const SWITCHES: &[&str] = &["debug", "version", "help"];

/// Go's `flag` syntax to clap's: `-endpoint URL`, `-endpoint=URL`, `-debug` become
/// `--endpoint URL`, `--endpoint=URL`, `--debug`. Only the names above are rewritten, a value
/// after a value flag is left alone, and nothing after `--` is touched.
pub fn go_style_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            out.extend(args);
            break;
        }
        let single_dash = text.strip_prefix('-').filter(|rest| !rest.starts_with('-'));
        let long = single_dash.or_else(|| text.strip_prefix("--"));
        let Some(long) = long else {
            out.push(arg);
            continue;
        };
        let (name, inline_value) = match long.split_once('=') {
            Some((name, _)) => (name, true),
            None => (long, false),
        };
        let takes_value = VALUE_FLAGS.contains(&name);
        if !takes_value && !SWITCHES.contains(&name) {
            out.push(arg);
            continue;
        }
        out.push(OsString::from(format!("--{long}")));
        if takes_value && !inline_value {
            if let Some(value) = args.next() {
                out.push(value);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn go_style_flags_become_double_dash() {
        assert_eq!(
            go_style_args(os(&[
                "locksmithctl",
                "-endpoint",
                "http://a:2379",
                "-endpoint=http://b:2379,http://c:2379",
                "--group",
                "-weird",
                "-debug",
                "-h",
                "-unknown",
                "set-max",
                "3",
                "--",
                "-group",
            ])),
            os(&[
                "locksmithctl",
                "--endpoint",
                "http://a:2379",
                "--endpoint=http://b:2379,http://c:2379",
                "--group",
                "-weird",
                "--debug",
                "-h",
                "-unknown",
                "set-max",
                "3",
                "--",
                "-group",
            ])
        );
    }

    #[test]
    fn status_and_set_max_print_as_locksmith() {
        let mut s = Semaphore::default();
        assert_eq!(
            Report::Status(s.clone()).to_string(),
            "Available: 1\nMax: 1"
        );
        s.set_max(3);
        s.lock("b").unwrap();
        s.lock("a").unwrap();
        assert_eq!(
            Report::Status(s.clone()).to_string(),
            "Available: 1\nMax: 3\n\nMACHINE ID\na\nb"
        );
        assert_eq!(
            Report::MaxSet {
                old_max: 3,
                semaphore: Semaphore {
                    max: 5,
                    ..s.clone()
                }
            }
            .to_string(),
            "Old-Max: 3\nMax: 5"
        );
        assert_eq!(
            Report::Locked {
                holder: "a".into(),
                semaphore: s
            }
            .to_string(),
            ""
        );
    }

    #[test]
    fn flags_become_settings() {
        let args = EtcdArgs {
            endpoints: vec![" http://a:2379".into(), "".into(), "http://b:2379".into()],
            group: Some(String::new()),
            username: Some("root".into()),
            ..EtcdArgs::default()
        };
        let s = args.settings();
        assert_eq!(s.etcd.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(s.group, None);
        assert_eq!(s.etcd.username.as_deref(), Some("root"));
        assert_eq!(
            EtcdArgs::default().settings().etcd.endpoints,
            crate::DEFAULT_ENDPOINTS
        );
    }
}
