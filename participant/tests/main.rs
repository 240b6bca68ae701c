//! The library's tests, on a real PostgreSQL (`DATABASE_URL`, else a private cluster started from
//! the PostgreSQL server binaries) and over real HTTP: the example service `inventory`, served
//! in-process, is the participant under test.

mod check;
mod common;
mod http;
mod properties;
mod service;
