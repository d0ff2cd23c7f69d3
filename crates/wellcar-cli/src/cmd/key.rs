//! `wellcar key`: update-payload signing keys (crate `wellcar-payload`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

/// Subcommands of `wellcar key`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write a new ed25519 keypair: DIR/update-key (private, mode 0600) and DIR/update-key.pub.
    Generate(GenerateOpts),
}

/// Options of `wellcar key generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateOpts {
    /// Directory to write the keypair into (created if missing).
    pub dir: PathBuf,
    /// Replace an existing keypair.
    #[arg(long)]
    pub force: bool,
}

/// Runs `wellcar key`.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Generate(opts) => {
            let files = wellcar_payload::generate_keypair(&opts.dir, opts.force)
                .with_context(|| format!("generating a keypair in {}", opts.dir.display()))?;
            println!("private key: {}", files.private_key.display());
            println!("public key:  {}", files.public_key.display());
            println!("fingerprint: {}", files.fingerprint);
            Ok(ExitCode::SUCCESS)
        }
    }
}
