//! The HTTP/1.1 protocol, free of I/O: request parsing, path normalisation,
//! response heads, conditional and range requests. The node (`crate::node`)
//! joins these to sockets, the cache and the runtime.

pub mod path;
pub mod range;
pub mod request;
pub mod response;

pub use range::{ByteRange, Selection, Validators};
pub use request::{parse_request, Method, ParseLimits, RequestError, RequestHead, Version};
pub use response::{DateCache, Status};
