//! Integration tests: they drive the built `baton` binary, with real processes,
//! real TLS and the real store. One test binary (modules below) so the suite
//! links once.

mod harness;

mod api;
mod attacks;
mod cluster;
mod crash;
mod ha;
mod isolation;
mod jobs;
mod placement;
mod rotation;
mod secrets;
mod validation;
