//! The pure parts of Wellcar's initramfs `/init` (the binary, `src/main.rs`), as a library so
//! that they can be tested and fuzzed from other crates (`wellcar-fuzz`).
//!
//! Contract: only modules that do no I/O and no syscalls belong here; the binary uses them
//! from here rather than compiling its own copy, so `/init` behaves and links as before.
//! The exception is [`os_reset`], Flatcar's selective OS reset, shared with the host's
//! `flatcar-reset` (its preview) and carried out by `/init` on ROOT.

pub mod cmdline;
pub mod failure;
pub mod os_reset;
