//! One module per subcommand; each owns its `Opts`/`Command` and `run`.

pub mod build;
pub mod butane;
pub mod ignition;
pub mod install;
pub mod key;
pub mod payload;
pub mod run;
pub mod server;
