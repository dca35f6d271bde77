//! (being built by h2)
