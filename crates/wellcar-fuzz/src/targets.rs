//! The targets, one module per parser family. Each exports `Target` constants listed in
//! [`crate::TARGETS`].

pub mod cmdline;
pub mod envblock;
pub mod ignition;
pub mod omaha;
pub mod payload;
pub mod update_conf;
