//! HTTP plumbing shared by every Strata gateway: OpenStack style faults, request ids,
//! a JSON body extractor that answers with faults, format negotiation and the
//! authenticated caller's context.

pub mod auth;
pub mod fault;
pub mod format;
pub mod http1;
pub mod json;
pub mod request_id;

pub use auth::{auth_token, AuthContext, TokenValidator};
pub use fault::{Fault, FaultStyle};
pub use format::{negotiate, Format};
pub use json::{Json, DEFAULT_JSON_LIMIT};
pub use request_id::{with_request_id, RequestId};
