//! (being built by h1)
