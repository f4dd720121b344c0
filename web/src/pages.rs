//! Server-rendered pages (placeholder until the pages land).
use crate::AppShared;
use axum::Router;
pub(crate) fn router() -> Router<AppShared> {
    Router::new()
}
