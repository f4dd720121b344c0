//! [`AppError`]: every refusal as a JSON body `{"error": "...", "status": N}` that says what was
//! expected and what was found.

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::view::ViewError;

/// Most bytes of a non-JSON error body (from a layer) quoted in the JSON error.
pub const ERROR_BODY_BYTES_MAX: usize = 4096;

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or credentials of the wrong form (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials or signer not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// Nothing at this path (404).
    #[error("{0}")]
    NotFound(String),
    /// The node refused a well-formed, signed entry (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than allowed (413).
    #[error("{0}")]
    TooLarge(String),
    /// The client sent too many requests (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// The node's store failed; not the client's fault (503).
    #[error("{0}")]
    Unavailable(String),
}

impl AppError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message, "status": status.as_u16() });
    (status, Json(body)).into_response()
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        json_error(self.status(), &self.to_string())
    }
}

impl From<ViewError> for AppError {
    fn from(e: ViewError) -> Self {
        match e {
            ViewError::UnknownLog { .. } => AppError::NotFound(e.to_string()),
            ViewError::Range(_) => AppError::BadRequest(e.to_string()),
            ViewError::Store(_) => AppError::Unavailable(e.to_string()),
        }
    }
}

/// Middleware: a 4xx/5xx response that a layer or axum itself produced with a non-JSON body
/// (body limit, timeout, method not allowed, extractor rejections) gets the same JSON error
/// form as the handlers' errors, quoting the original text.
pub async fn json_errors(req: Request<Body>, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = match axum::body::to_bytes(body, ERROR_BODY_BYTES_MAX).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => String::new(),
    };
    let reason = status.canonical_reason().unwrap_or("error");
    let message = match (status, text.is_empty()) {
        (StatusCode::PAYLOAD_TOO_LARGE, _) => format!(
            "request body too large: at most {} bytes are accepted here",
            crate::REQUEST_BODY_BYTES_MAX
        ),
        (StatusCode::REQUEST_TIMEOUT, _) => {
            format!("request timed out after {} ms", crate::REQUEST_TIMEOUT_MS)
        }
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            let allow = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            format!("method not allowed here; allowed: {allow}")
        }
        (_, true) => reason.to_owned(),
        (_, false) => format!("{reason}: {text}"),
    };
    let mut out = json_error(status, &message);
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out
}
