//! # crema-server
//!
//! The Redis-protocol front door of crema. Work in progress (issue 3): so far the RESP request
//! parser and reply encoder, pure code over byte buffers; the connection loop, the command table
//! and the `crema` binary come next.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod resp;
