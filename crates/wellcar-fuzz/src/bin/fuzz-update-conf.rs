//! Fuzz target `update-conf`: see [`wellcar_fuzz::targets::update_conf`] and the crate docs for the two modes.

fn main() -> std::process::ExitCode {
    wellcar_fuzz::main(&wellcar_fuzz::targets::update_conf::UPDATE_CONF)
}
