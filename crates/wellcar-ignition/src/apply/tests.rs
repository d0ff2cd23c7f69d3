//! Apply tests on temporary roots.
