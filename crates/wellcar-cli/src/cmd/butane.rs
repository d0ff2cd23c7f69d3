//! `wellcar butane [--strict] [--files-dir DIR] [-o OUT] [IN]`: Butane YAML to Ignition JSON.
//!
//! Exit 0 with the JSON on stdout (or in OUT) and warnings on stderr; exit 1 with one
//! `line:column: error at $.yaml.path: message` line per problem on stderr.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use wellcar_butane::{ButaneError, Options};

/// Options of `wellcar butane`.
#[derive(Debug, clap::Args)]
pub struct Opts {
    /// Fail on warnings (unknown keys, decimal-looking modes).
    #[arg(short, long)]
    pub strict: bool,
    /// Directory that `local`, `contents_local`, `ssh_authorized_keys_local` and `trees` read
    /// from; paths may not leave it.
    #[arg(short = 'd', long)]
    pub files_dir: Option<PathBuf>,
    /// Write the Ignition config here instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Butane config; stdin when absent or `-`.
    pub input: Option<PathBuf>,
}

/// Reads a Butane file (or stdin for `-`) as UTF-8 text.
pub fn read_text(input: Option<&Path>) -> anyhow::Result<String> {
    let mut text = String::new();
    match input {
        None => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading Butane config from stdin")?;
        }
        Some(p) if p.as_os_str() == "-" => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading Butane config from stdin")?;
        }
        Some(p) => {
            text = std::fs::read_to_string(p)
                .with_context(|| format!("reading Butane config {}", p.display()))?;
        }
    }
    Ok(text)
}

/// Prints the findings of a failed translation; returns the exit code.
pub fn report_failure(err: &ButaneError) -> ExitCode {
    match err {
        ButaneError::Syntax { .. } => eprintln!("{err}"),
        ButaneError::Invalid { findings, .. } => {
            for f in findings {
                eprintln!("{f}");
            }
        }
    }
    ExitCode::FAILURE
}

/// Runs `wellcar butane`.
pub fn run(o: &Opts) -> anyhow::Result<ExitCode> {
    let text = read_text(o.input.as_deref())?;
    let options = Options {
        files_dir: o.files_dir.clone(),
        strict: o.strict,
    };
    let translated = match wellcar_butane::translate(&text, &options) {
        Ok(t) => t,
        Err(err) => return Ok(report_failure(&err)),
    };
    for w in &translated.warnings {
        eprintln!("{w}");
    }
    let json = translated.to_json();
    match &o.output {
        Some(path) => std::fs::write(path, json)
            .with_context(|| format!("writing Ignition config {}", path.display()))?,
        None => std::io::stdout()
            .write_all(json.as_bytes())
            .context("writing Ignition config to stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}
