//! Never-panic property tests.
