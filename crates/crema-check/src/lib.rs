//! # crema-check
//!
//! Test-only tools for crema's robustness suite (issue 5), kept out of the library's public API.
//! So far: [`linearizability`], a checker for per-key register histories, and [`history`], the
//! recorder concurrent clients write their operations into.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod history;
pub mod linearizability;
