//! # tcc-coordinator
//!
//! A Try-Confirm/Cancel transaction coordinator behind a RESTful Job Control Language. A client
//! submits a *job*; each *task* is a participant whose Try yields a *participant link* with an
//! expiry; the coordinator then confirms every link or cancels them all. When participants end up
//! disagreeing the outcome is *heuristic* and the coordinator says so. State lives in PostgreSQL.
//!
//! ```text
//!  client ──HTTP──▶ api ──▶ store (PostgreSQL) ◀── engine ──HTTP──▶ participants
//!                    │                              ▲   │
//!                    └──────── wake(job) ───────────┘   └── domain::planner (pure)
//! ```
//!
//! ## Layout
//!
//! - [`config`]: every setting, typed and validated once.
//! - [`domain`]: statuses and transitions, the planner, retry policies, request parsing. Pure.
//! - [`store`]: the only module that speaks SQL; fenced writes after a claim.
//! - [`participant`]: the HTTP client for Try/confirm/cancel; classifies answers.
//! - [`check`]: the participant checker (`check-participant`): plays the coordinator against a
//!   participant, rule by rule.
//! - [`engine`]: claim → plan → persist → call loop; leases; wake-ups; shutdown.
//! - [`api`]: axum routes, problem+json errors, hypermedia.
//! - [`embedded_pg`]: the embedded PostgreSQL default.
//! - [`metrics`]: every metric name, described once.
//! - [`notify`]: callbacks, webhooks and email from the outbox.
//! - [`outbound`]: the HTTP client every outbound call uses, under the target policy.
//! - [`server`]: the HTTP/1.1 server loop and its connection limits.
//! - [`startup`]: building and running the whole.

pub mod api;
pub mod check;
pub mod config;
pub mod domain;
pub mod embedded_pg;
pub mod engine;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod participant;
pub mod server;
pub mod startup;
pub mod store;
