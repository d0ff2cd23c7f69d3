//! Unit tests of the shared path and unit-name helpers; the rules themselves are exercised
//! through the Ignition corpus (`corpus_tests`).

use super::*;

#[test]
fn clean_path_matches_go_path_clean() {
    assert_eq!(clean_path("/foo/../bar"), "/bar");
    assert_eq!(clean_path("/foo//bar/"), "/foo/bar");
    assert_eq!(clean_path("/.."), "/");
    assert_eq!(clean_path("/"), "/");
    assert_eq!(path_problem("/etc/foo"), None);
    assert_eq!(
        path_problem("/etc/foo/"),
        Some("path is not fully simplified")
    );
    assert_eq!(path_problem("etc"), Some("path not absolute"));
    assert_eq!(path_problem(""), Some("path not specified"));
}

#[test]
fn template_names() {
    assert_eq!(
        template_of("echo@bar.service").as_deref(),
        Some("echo@.service")
    );
    assert_eq!(template_of("echo@.service"), None);
    assert_eq!(template_of("plain.service"), None);
}
