//! The dashboard's pages, one module per area, and what they share: the page chrome (who is
//! logged in, which buttons they get, the CSRF token) and the per-group summaries.

pub mod activity;
pub mod adoption;
pub mod channels;
pub mod group;
pub mod instances;
pub mod locks;
pub mod login;
pub mod overview;
mod summary;

use serde::Serialize;

use super::session::Viewer;

/// The application the dashboard shows.
pub const APP_ID: &str = wellcar_omaha::WELLCAR_APP_ID;

/// One day in milliseconds.
pub const DAY_MS: i64 = 24 * 3600 * 1000;

/// What every page's frame shows.
#[derive(Debug, Serialize)]
pub struct Chrome {
    /// Page title.
    pub title: String,
    /// Which navigation entry is current.
    pub nav: &'static str,
    /// The token's name.
    pub name: String,
    /// The token's scope.
    pub scope: String,
    /// Publish buttons shown.
    pub can_publish: bool,
    /// Group buttons shown.
    pub can_admin: bool,
    /// The session's CSRF token (forms and `<meta name="csrf-token">`).
    pub csrf: String,
}

impl Chrome {
    /// The frame for `viewer` on page `title`.
    pub fn new(viewer: &Viewer, nav: &'static str, title: impl Into<String>) -> Self {
        Chrome {
            title: title.into(),
            nav,
            name: viewer.name.clone(),
            scope: viewer.scope.to_string(),
            can_publish: viewer.can_publish(),
            can_admin: viewer.can_admin(),
            csrf: viewer.csrf.clone(),
        }
    }
}

/// `key=value&…` with values percent-encoded, for links that keep a page's filters.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A path segment, percent-encoded.
pub fn path_segment(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}
