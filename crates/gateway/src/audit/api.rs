//! `GET /api/v1/audit?userId=&vendorId=&connectionId=&since=&limit=&cursor=`:
//! audit rows for operators, behind the `ADMIN_TOKEN` bearer.
//!
//! An unknown or repeated parameter is a 400: a mistyped filter
//! (`userid=`) that was ignored would answer with every row.
//!
//! Without `ADMIN_TOKEN` the route answers 404: an endpoint no token can
//! open should look absent rather than invite guessing. Rows come in
//! (time, event id) order; `nextCursor`, when present, fetches the next page.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{AuditQuery, Cursor};
use crate::ingest::http::constant_time_eq;
use crate::protocol::{ErrorCode, UserId, VendorId};
use crate::state::Shared;

/// Rows per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 1000;

/// The parameters this API takes, as the 400 for any other lists them.
pub const PARAMETERS: [&str; 6] = ["userId", "vendorId", "connectionId", "since", "limit", "cursor"];

/// Longest parameter name quoted back in an error.
const MAX_NAME_ECHO: usize = 64;

/// Query parameters, all optional.
#[derive(Debug, Default)]
pub struct Params {
    user_id: Option<String>,
    vendor_id: Option<String>,
    connection_id: Option<String>,
    since: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

fn invalid(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, ErrorCode::InvalidField, message)
}

impl Params {
    /// Sorts `pairs` into the known parameters; refuses unknown and
    /// repeated names, naming the first one.
    fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, String> {
        let mut p = Self::default();
        for (name, value) in pairs {
            let slot = match name.as_str() {
                "userId" => &mut p.user_id,
                "vendorId" => &mut p.vendor_id,
                "connectionId" => &mut p.connection_id,
                "since" => &mut p.since,
                "limit" => &mut p.limit,
                "cursor" => &mut p.cursor,
                _ => {
                    return Err(format!("unknown parameter {:?}; accepted: {}", echo(&name), PARAMETERS.join(", ")));
                }
            };
            if slot.replace(value).is_some() {
                return Err(format!("{name}: given more than once"));
            }
        }
        Ok(p)
    }

    /// The query asked for, or what is wrong with the parameters.
    fn parse(self) -> Result<AuditQuery, String> {
        let user_id = match self.user_id {
            Some(u) => Some(UserId::parse(&u).map_err(|e| format!("userId: {e}"))?.as_str().to_owned()),
            None => None,
        };
        let vendor_id = match self.vendor_id {
            Some(v) => Some(VendorId::parse(&v).map_err(|e| format!("vendorId: {e}"))?.as_str().to_owned()),
            None => None,
        };
        let connection_id = match self.connection_id {
            Some(c) => {
                Some(parse_uuid(&c).ok_or("connectionId: must be a UUID, e.g. 0190a5b2-7c1e-7000-8000-000000000002")?)
            }
            None => None,
        };
        let since = match self.since {
            Some(s) => Some(
                OffsetDateTime::parse(&s, &Rfc3339)
                    .map_err(|_| "since: must be an RFC 3339 time, e.g. 2026-11-30T10:00:00Z".to_owned())?,
            ),
            None => None,
        };
        let limit = match self.limit {
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => return Err(format!("limit: must be an integer in [1, {MAX_LIMIT}]")),
            },
            None => DEFAULT_LIMIT,
        };
        let after = match self.cursor {
            Some(c) => Some(Cursor::decode(&c).ok_or("cursor: not a cursor this API returned")?),
            None => None,
        };
        Ok(AuditQuery { user_id, vendor_id, connection_id, since, after, limit })
    }
}

/// `GET /api/v1/audit`.
pub async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let Some(expected) = &shared.config.auth.admin_token else {
        return error(StatusCode::NOT_FOUND, ErrorCode::Unavailable, "the audit API is off: ADMIN_TOKEN is not set");
    };
    let given = crate::auth::bearer_token(&headers);
    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
        let mut resp =
            error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing or wrong bearer token (ADMIN_TOKEN)");
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return resp;
    }
    let params = match params {
        Ok(Query(pairs)) => Params::from_pairs(pairs),
        Err(e) => return invalid(&e.body_text()),
    };
    let mut query = match params.and_then(Params::parse) {
        Ok(q) => q,
        Err(why) => return invalid(&why),
    };
    let limit = query.limit;
    // One row more than asked tells whether another page exists.
    query.limit = limit + 1;
    match shared.audit.query(&query).await {
        Ok(mut rows) => {
            let more = rows.len() > limit;
            rows.truncate(limit);
            let next = if more { rows.last().map(|r| Cursor::after(r).encode()) } else { None };
            Json(json!({"rows": rows, "nextCursor": next})).into_response()
        }
        Err(e) => {
            tracing::warn!(error = %e, "audit query failed");
            error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, &format!("audit store unavailable: {e}"))
        }
    }
}

/// A UUID in its standard hyphenated form (RFC 9562 §4, any case): the form
/// every row and log line shows, and the one docs/openapi.yaml promises.
/// `Uuid::try_parse` alone also takes the simple, braced and URN forms.
fn parse_uuid(s: &str) -> Option<uuid::Uuid> {
    let hyphens = s.len() == 36 && s.char_indices().all(|(i, c)| (c == '-') == matches!(i, 8 | 13 | 18 | 23));
    hyphens.then(|| uuid::Uuid::try_parse(s).ok()).flatten()
}

/// `name` cut to [`MAX_NAME_ECHO`] characters: an error names the
/// parameter without echoing a client's megabyte back.
fn echo(name: &str) -> String {
    match name.char_indices().nth(MAX_NAME_ECHO) {
        Some((i, _)) => format!("{}…", &name[..i]),
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused_by_name() {
        let err = Params::from_pairs(pairs(&[("userid", "alice")])).err().unwrap_or_default();
        assert!(err.contains("\"userid\"") && err.contains(&PARAMETERS.join(", ")), "{err}");
        let err = Params::from_pairs(pairs(&[("userId", "a"), ("userId", "b")])).err().unwrap_or_default();
        assert!(err.starts_with("userId"), "{err}");
        let long = "x".repeat(10_000);
        let err = Params::from_pairs(pairs(&[(long.as_str(), "1")])).err().unwrap_or_default();
        assert!(err.len() < 300, "{err}");
        let ok = Params::from_pairs(pairs(&[("userId", "alice"), ("limit", "5")])).and_then(Params::parse);
        let id = "0190a5b2-7c1e-7000-8000-00000000002A";
        assert_eq!(parse_uuid(id).map(|u| u.to_string()), Some(id.to_lowercase()));
        for other_form in [id.replace('-', ""), format!("{{{id}}}"), format!("urn:uuid:{id}"), id.replacen('-', "+", 1)]
        {
            assert_eq!(parse_uuid(&other_form), None, "{other_form}");
        }
        assert_eq!(ok.map(|q| (q.user_id, q.limit)), Ok((Some("alice".to_owned()), 5)));
    }
}
