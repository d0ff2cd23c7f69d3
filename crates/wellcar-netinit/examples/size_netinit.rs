//! A minimal /init-shaped program linking wellcar-netinit: parse the kernel's `ip=`, bring the
//! network up, tear it down. Built static to measure the crate's cost against
//! `size_baseline.rs`:
//!
//! ```sh
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build --profile initramfs \
//!     --target x86_64-unknown-linux-gnu -p wellcar-netinit --example size_netinit --example size_baseline
//! ```

use wellcar_netinit::{bring_up, BringUpOptions, NetConfig};

fn main() -> std::process::ExitCode {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let result = NetConfig::from_cmdline(&cmdline)
        .map_err(|error| error.to_string())
        .and_then(|config| {
            bring_up(&config, &BringUpOptions::default()).map_err(|error| error.to_string())
        })
        .and_then(|state| {
            for configured in &state.configured {
                eprintln!("network: {configured}");
            }
            state.teardown().map_err(|error| error.to_string())
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("network: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
