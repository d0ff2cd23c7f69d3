//! Builds an initramfs by hand, outside `wellcar build`:
//! `cargo run -p wellcar-initramfs --example build-initramfs -- <rootfs> <kver> <init> <output>`
//! with the default module list. Prints the summary.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [rootfs, kernel_version, init, output] = args.as_slice() else {
        eprintln!("usage: build-initramfs <rootfs> <kernel-version> <init-binary> <output>");
        return ExitCode::from(2);
    };
    let opts = wellcar_initramfs::InitramfsOptions {
        rootfs: PathBuf::from(rootfs),
        kernel_version: kernel_version.clone(),
        init_binary: PathBuf::from(init),
        modules: wellcar_contract::module_list::WANTED
            .iter()
            .map(|m| m.to_string())
            .collect(),
        output: PathBuf::from(output),
    };
    match wellcar_initramfs::build_initramfs(&opts) {
        Ok(summary) => {
            println!(
                "{output}: {} bytes, {:?}, modules: {}, not in this kernel: {}",
                summary.size,
                summary.compression,
                summary.modules.join(" "),
                summary.skipped.join(" ")
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            let mut cause = std::error::Error::source(&err);
            while let Some(c) = cause {
                eprintln!("  caused by: {c}");
                cause = c.source();
            }
            ExitCode::FAILURE
        }
    }
}
