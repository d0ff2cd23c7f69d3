//! Corpus table test.
