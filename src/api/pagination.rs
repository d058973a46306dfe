//! `?limit=&cursor=` lists answering `{"items": [...], "next_cursor": ...}`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use uuid::Uuid;

pub use super::docs::Page;

/// `?limit=&cursor=` of a list with nothing else to filter.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}
use crate::commands::values::FieldErrors;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

/// Parses `limit` (1..=100, default 20) and an opaque cursor (the last id seen).
pub fn parse(
    limit: Option<&str>,
    cursor: Option<&str>,
    errors: &mut FieldErrors,
) -> (i64, Option<Uuid>) {
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                errors.add("limit", format!("must be an integer from 1 to {MAX_LIMIT}"));
                DEFAULT_LIMIT
            }
        },
    };
    let cursor = cursor.filter(|c| !c.is_empty()).and_then(|raw| {
        let decoded = URL_SAFE_NO_PAD
            .decode(raw)
            .ok()
            .and_then(|bytes| Uuid::from_slice(&bytes).ok());
        if decoded.is_none() {
            errors.add("cursor", "is not a cursor this API returned");
        }
        decoded
    });
    (limit, cursor)
}

/// Builds a page from `limit + 1` fetched rows.
pub fn page<T>(mut rows: Vec<T>, limit: i64, id_of: impl Fn(&T) -> Uuid) -> Page<T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last()
            .map(|last| URL_SAFE_NO_PAD.encode(id_of(last).as_bytes()))
    } else {
        None
    };
    Page {
        items: rows,
        next_cursor,
    }
}

/// `%` and `_` are literal in a search term.
pub fn like_pattern(term: &str) -> String {
    let escaped = term
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}
