//! RESP, the Redis serialization protocol: requests in ([`request`]), replies out ([`reply`]).
//!
//! Pure code: bytes in, values out. Only the connection module (to come) touches sockets.

pub mod reply;
pub mod request;
