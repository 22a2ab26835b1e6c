//! Pure parsers over captured bytes: no I/O, no panic on any input.

pub mod http1;
pub mod route;
