//! Integration tests: the coordinator over real HTTP against real participants and a real
//! PostgreSQL.

mod helpers;
mod participant;
/// The rules a correct participant keeps, shared with the chaos suite's participant.
#[path = "../../chaos/rules.rs"]
mod rules;

mod actions;
mod atomikos;
mod auth;
mod browser;
mod check;
mod console;
mod definitions;
mod docs;
mod dtm;
mod embedded;
mod events;
mod hardening;
mod lifecycle;
mod notify;
mod observability;
mod openapi;
mod operator;
mod own_urls;
mod put;
mod recovery;
mod refusals;
mod review;
mod shared_state;
mod store;
mod surface;
mod takeover;
mod targets;
mod try_first;
mod validation;
