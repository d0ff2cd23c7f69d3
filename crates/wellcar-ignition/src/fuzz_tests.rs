//! Property tests: the parser never panics, whatever the bytes.
