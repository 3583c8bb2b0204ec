//! RESP, the Redis serialization protocol: requests in ([`request`]), replies out ([`reply`]).
//!
//! Pure code: bytes in, values out. Only `server::connection` touches sockets.

pub mod output;
pub mod reply;
pub mod request;

pub use output::{Output, ReplySink};
pub use reply::{Protocol, Reply};
pub use request::{
    detached, parse_request, take_request, take_request_resuming, Progress, RequestError, RequestLimits,
};
