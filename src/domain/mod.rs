//! The pure core: statuses and their transitions, the planner, retry policies, request parsing.
//!
//! Nothing here does I/O or reads the clock: callers pass `now` in. That is what lets the
//! planner be tested exhaustively without a database or a network.

/// Declares a fieldless enum with `ALL`, every variant in declaration order, generated from the
/// same list: a new variant cannot be left out of it.
macro_rules! enum_with_all {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident,)*
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$(stringify!($variant)),*].len()] = [$($name::$variant,)*];
        }
    };
}

pub mod actions;
pub mod definition;
pub mod event;
pub mod job;
pub mod mapping;
pub mod notify;
pub mod planner;
pub mod policy;
pub mod request;
pub mod retry;
pub mod status;
pub mod target;
pub mod timestamp;

pub use event::{ActionKind, Event, EventKind, What};
pub use job::{
    Callbacks, ConfirmState, Job, JobSource, Link, Requested, Resolution, Submission, Task, TrySpec,
};
pub use planner::{Answer, Op, Plan, PlannerSettings, Step};
pub use status::{FailureReason, JobState, JobStatus, TaskStatus};
pub use target::{DefinitionName, JobId, TargetUrl, TaskId};
pub use timestamp::rfc3339;
