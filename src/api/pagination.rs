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

/// Keyset cursor of lists ordered by a number then an id (a position, a distance, a day): opaque
/// to clients.
pub fn encode_keyset(key: f64, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{key}~{id}"))
}

/// The key and id of a cursor from [`encode_keyset`]; `None` for anything else.
pub fn decode_keyset(raw: &str) -> Option<(f64, Uuid)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    let (key, id) = text.split_once('~')?;
    let key: f64 = key.parse().ok().filter(|k: &f64| k.is_finite())?;
    Some((key, id.parse().ok()?))
}

/// Builds a page from `limit + 1` rows in keyset order: the cursor names the sort key and id of
/// the page's last row (`key_of`).
pub fn keyset_page<T>(mut rows: Vec<T>, limit: i64, key_of: impl Fn(&T) -> (f64, Uuid)) -> Page<T> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = rows.last().filter(|_| more).map(|last| {
        let (key, id) = key_of(last);
        encode_keyset(key, id)
    });
    Page {
        items: rows,
        next_cursor,
    }
}

/// Parses an optional keyset cursor, recording a bad one in `errors`.
pub fn parse_keyset(raw: Option<&str>, errors: &mut FieldErrors) -> Option<(f64, Uuid)> {
    let raw = raw.filter(|c| !c.is_empty())?;
    let decoded = decode_keyset(raw);
    if decoded.is_none() {
        errors.add("cursor", "is not a cursor this API returned");
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_cursors_round_trip_and_refuse_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(
            decode_keyset(&encode_keyset(1234.5, id)),
            Some((1234.5, id))
        );
        assert_eq!(decode_keyset("not a cursor"), None);
        assert_eq!(decode_keyset(&URL_SAFE_NO_PAD.encode("NaN~x")), None);
    }
}
