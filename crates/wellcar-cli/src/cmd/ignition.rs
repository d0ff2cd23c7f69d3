//! `wellcar ignition`: validate Ignition configs and apply them to a directory.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use wellcar_ignition::{ParseError, Severity};

/// Subcommands of `wellcar ignition`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check a config (spec 2.0.0-2.3.0 and 3.0.0-3.6.0, or a Butane `.bu` file): exit 0 when valid (warnings on stderr), exit 1 with
    /// one `<json path>: <message>` line per error on stdout when invalid.
    Validate(ValidateOpts),
    /// Apply configs (merged in order, references resolved) to a root directory.
    Apply(ApplyOpts),
}

/// Options of `wellcar ignition validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateOpts {
    /// Config file; `-` reads stdin.
    pub file: PathBuf,
}

/// Options of `wellcar ignition apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyOpts {
    /// Target root directory (its /etc/passwd and /etc/group resolve owner names).
    #[arg(long)]
    pub root: PathBuf,
    /// Config files, merged in order (later ones override earlier ones).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Runs `wellcar ignition`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Validate(o) => validate(&o),
        Command::Apply(o) => apply(&o),
    }
}

fn read_input(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading config from stdin")?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("reading config {}", path.display()))
    }
}

fn validate(o: &ValidateOpts) -> anyhow::Result<ExitCode> {
    if wellcar_butane::is_butane_path(&o.file) {
        return validate_butane(o);
    }
    let bytes = read_input(&o.file)?;
    match wellcar_ignition::parse_config(&bytes) {
        Ok(parsed) => {
            for w in &parsed.warnings {
                eprintln!("warning: {}: {}", w.path, w.message);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ParseError::Invalid { entries }) => {
            for e in &entries {
                match e.severity {
                    Severity::Error => println!("{}: {}", e.path, e.message),
                    Severity::Warning => eprintln!("warning: {}: {}", e.path, e.message),
                }
            }
            Ok(ExitCode::FAILURE)
        }
        Err(other) => {
            println!("$: {other}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// A Butane file (`.bu`, `.yaml`, `.yml`): translated (local files relative to the file's
/// directory), then Ignition's validation at the variant's spec; findings carry YAML
/// `line:column` and path.
fn validate_butane(o: &ValidateOpts) -> anyhow::Result<ExitCode> {
    let text = super::butane::read_text(Some(&o.file))?;
    let options = wellcar_butane::Options {
        files_dir: o.file.parent().map(|p| p.to_path_buf()),
        strict: false,
    };
    match wellcar_butane::translate(&text, &options) {
        Ok(translated) => {
            for w in &translated.warnings {
                eprintln!("{w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Ok(super::butane::report_failure(&err)),
    }
}

fn apply(o: &ApplyOpts) -> anyhow::Result<ExitCode> {
    if !o.root.is_dir() {
        bail!("--root {} is not a directory", o.root.display());
    }
    let mut merged: Option<wellcar_ignition::Config> = None;
    for file in &o.files {
        let bytes = read_input(file)?;
        let parsed = match wellcar_ignition::parse_config(&bytes) {
            Ok(p) => p,
            Err(ParseError::Invalid { entries }) => {
                for e in entries.iter().filter(|e| e.is_error()) {
                    eprintln!("{}: {}: {}", file.display(), e.path, e.message);
                }
                bail!("{} is not a valid Ignition config", file.display());
            }
            Err(e) => return Err(e).with_context(|| format!("parsing {}", file.display())),
        };
        for w in &parsed.warnings {
            eprintln!("warning: {}: {}: {}", file.display(), w.path, w.message);
        }
        let resolved = wellcar_ignition::resolve_references(parsed.config).with_context(|| {
            format!("resolving ignition.config references of {}", file.display())
        })?;
        merged = Some(match merged {
            None => resolved,
            Some(parent) => wellcar_ignition::merge(parent, resolved),
        });
    }
    let config = merged.context("no config given")?;
    let errors: Vec<_> = wellcar_ignition::validate(&config)
        .into_iter()
        .filter(|e| e.is_error())
        .collect();
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("merged config: {}: {}", e.path, e.message);
        }
        bail!("merging the configs resulted in an invalid config");
    }
    let report = wellcar_ignition::apply(&config, &o.root)
        .with_context(|| format!("applying to {}", o.root.display()))?;
    for action in &report.actions {
        println!("{action}");
    }
    Ok(ExitCode::SUCCESS)
}
