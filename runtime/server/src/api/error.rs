//! API errors, with Brigade's error kinds and bodies.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::API_VERSION;
use crate::auth::NoRandomness;
use crate::store::StoreError;

/// An API error, with Brigade's error kinds and bodies.
#[derive(Debug)]
pub enum ApiError {
    /// 400 BadRequestError.
    BadRequest {
        /// What was wrong.
        reason: String,
        /// Each problem, naming its field.
        details: Vec<String>,
    },
    /// 401 AuthenticationError.
    Unauthenticated(String),
    /// 403 AuthorizationError.
    Forbidden(String),
    /// 404 NotFoundError.
    NotFound {
        /// The kind of thing, e.g. `Project`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// 409 ConflictError.
    Conflict {
        /// The kind of thing.
        kind: &'static str,
        /// Its id.
        id: String,
        /// Why.
        reason: String,
    },
    /// 501 NotSupportedError.
    NotSupported(String),
    /// 503 UnavailableError: what the request needs (the container engine,
    /// the cluster) did not answer.
    Unavailable(String),
    /// 500 InternalServerError (the cause goes to the server's log only).
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub(super) fn bad(reason: impl Into<String>) -> Self {
        ApiError::BadRequest {
            reason: reason.into(),
            details: Vec::new(),
        }
    }

    pub(super) fn forbidden(role: &str, scope: &str) -> Self {
        let scope = if scope.is_empty() {
            String::new()
        } else {
            format!(" for {scope:?}")
        };
        ApiError::Forbidden(format!("this requires the {role} role{scope}"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(Box::new(e))
    }
}

impl From<NoRandomness> for ApiError {
    fn from(e: NoRandomness) -> Self {
        ApiError::Internal(Box::new(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest { reason, details } => (
                StatusCode::BAD_REQUEST,
                json!({"kind": "BadRequestError", "reason": reason, "details": details}),
            ),
            ApiError::Unauthenticated(reason) => (
                StatusCode::UNAUTHORIZED,
                json!({"kind": "AuthenticationError", "reason": reason}),
            ),
            ApiError::Forbidden(reason) => (
                StatusCode::FORBIDDEN,
                json!({"kind": "AuthorizationError", "reason": reason}),
            ),
            ApiError::NotFound { kind, id } => (
                StatusCode::NOT_FOUND,
                json!({"kind": "NotFoundError", "type": kind, "id": id,
                       "reason": format!("{kind} {id:?} not found")}),
            ),
            ApiError::Conflict { kind, id, reason } => (
                StatusCode::CONFLICT,
                json!({"kind": "ConflictError", "type": kind, "id": id, "reason": reason}),
            ),
            ApiError::NotSupported(details) => (
                StatusCode::NOT_IMPLEMENTED,
                json!({"kind": "NotSupportedError", "details": details}),
            ),
            ApiError::Unavailable(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"kind": "UnavailableError", "reason": reason}),
            ),
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"kind": "InternalServerError"}),
                )
            }
        };
        let mut body = body;
        body["apiVersion"] = json!(API_VERSION);
        (status, axum::Json(body)).into_response()
    }
}

pub(super) type ApiResult<T = Response> = Result<T, ApiError>;
