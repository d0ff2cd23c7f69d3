//! Fuzz target `grub-envblock`: see [`wellcar_fuzz::targets::envblock`] and the crate docs for the two modes.

fn main() -> std::process::ExitCode {
    wellcar_fuzz::main(&wellcar_fuzz::targets::envblock::GRUB_ENVBLOCK)
}
