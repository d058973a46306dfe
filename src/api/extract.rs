//! Extractors that own the JSON edge: their rejections are `ApiError`s.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::error::ApiError;
use crate::events::Metadata;

/// `Json<T>` whose rejections are answered in our error format: 400 malformed JSON, 415 wrong
/// content type, 413 too large, 422 wrong shape (a body that is not a JSON object included).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<Object<T>>::from_request(req, state).await {
            Ok(axum::Json(Object(value))) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// A value read from a JSON object only. Serde's derived structs also read an array by field
/// order (`[null, null]` was a valid plant patch), which no client means and the document
/// forbids: every request body is an object, and so is every nested one (see [`optional_object`]).
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Fields(std::marker::PhantomData))
            .map(Object)
    }
}

/// `#[serde(default, deserialize_with = "optional_object")]` on an `Option<Struct>` field: `null`
/// or absent is `None`, an object the struct, an array an error (see [`Object`]).
pub fn optional_object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Object<T>>::deserialize(deserializer).map(|value| value.map(|Object(inner)| inner))
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let message = rejection.body_text();
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge {
            message: "request body is too large".into(),
        },
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType {
            message: "expected `Content-Type: application/json`".into(),
        },
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Unprocessable {
            code: "invalid_body",
            message,
        },
        _ => ApiError::BadRequest {
            code: "malformed_json",
            message,
        },
    }
}

/// `Query<T>` answering 422 on a bad query string, and on a NUL character in any value (no
/// parameter means one, and PostgreSQL refuses it in text: it was a 500).
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // A NUL can only arrive percent-encoded (a URI cannot hold one raw).
        if parts.uri.query().is_some_and(|query| {
            query
                .as_bytes()
                .windows(3)
                .any(|w| w.eq_ignore_ascii_case(b"%00"))
        }) {
            return Err(ApiError::Unprocessable {
                code: "invalid_query",
                message: "a query parameter holds a NUL character".into(),
            });
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|rejection: QueryRejection| ApiError::Unprocessable {
                code: "invalid_query",
                message: rejection.body_text(),
            })
    }
}

/// `Path<T>`: an id that cannot exist is simply not found.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|_: PathRejection| ApiError::NotFound("resource"))
    }
}

/// Whether a client-sent `x-request-id` or `x-correlation-id` may be kept: 1 to 64 characters of
/// `[A-Za-z0-9._:-]`. They go into event metadata, logs and response headers.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=64).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b))
}

/// Request ids for event metadata: `x-request-id` (set by the request-id layer) and an inbound
/// `x-correlation-id` when a caller chains work. Ill-formed ones are replaced (a second guard
/// behind the router's sanitising layer).
pub struct RequestMeta(pub Metadata);

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .filter(|v| is_valid_request_id(v.as_bytes()))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let request_id = header("x-request-id").unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let correlation_id = header("x-correlation-id").unwrap_or_else(|| request_id.clone());
        Ok(RequestMeta(Metadata {
            actor_id: None,
            actor_role: "ANONYMOUS".into(),
            causation_id: request_id.clone(),
            request_id,
            correlation_id,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid_request_id;

    #[test]
    fn request_ids_are_short_and_plain() {
        for good in ["a", "0f8e-12.ab:CD_9", &"x".repeat(64)] {
            assert!(is_valid_request_id(good.as_bytes()), "{good}");
        }
        for bad in ["", "<script>", "a b", "a/b", "caf\u{e9}", &"x".repeat(65)] {
            assert!(!is_valid_request_id(bad.as_bytes()), "{bad}");
        }
    }
}
