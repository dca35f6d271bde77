//! `larder-server`: the HTTP/1.1 static-content node behind `larder serve`.
//!
//! (being built: protocol, config and node modules land in the next commits.)

pub mod cache;
