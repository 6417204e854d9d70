//! Query strings, read into typed parameters as Brigade's clients send
//! them: `limit` and `continue` for pages, `true` or `1` for flags, `k=v,...`
//! for qualifier and label filters, `A,B` for phases.

use std::collections::BTreeMap;
use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use mizzen_host_api::types::Phase;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{ApiError, ApiResult, DEFAULT_PAGE, MAX_PAGE};

/// A request's query parameters, read into `T`: form-decoded, a name `T`
/// does not know ignored, and a name given twice keeping its last value
/// (serde's derive would refuse that as a duplicate field; the handlers
/// read the query as a map before, where the last value won). `T`'s fields
/// are text or [`Flag`]s: the handlers check the values, with the messages
/// Brigade's clients see.
pub(super) struct Query<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let values: serde_json::Map<String, Value> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(name, value)| (name.into_owned(), Value::String(value.into_owned())))
            .collect();
        T::deserialize(Value::Object(values))
            .map(Query)
            .map_err(|e| ApiError::bad(format!("the query string: {e}")))
    }
}

/// A flag: set by `true` or `1`, unset by any other value or none.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flag(pub(super) bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(Flag(text == "true" || text == "1"))
    }
}

/// A page of a list: `limit` items, after `continue`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct PageQuery {
    limit: Option<String>,
    /// Where the page starts: what the previous page's `continue` said.
    #[serde(rename = "continue")]
    pub(super) after: Option<String>,
}

impl PageQuery {
    /// How many items the page holds: Brigade's 20 by default, at most 100.
    pub(super) fn limit(&self) -> ApiResult<i64> {
        match &self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
                _ => Err(ApiError::bad(format!(
                    "limit {text:?}: expected a number from 1 to {MAX_PAGE}"
                ))),
            },
        }
    }
}

/// `k=v,k2=v2`, as Brigade's clients encode qualifier and label filters;
/// `name` is the parameter's, for messages.
pub(super) fn pairs(name: &str, text: Option<&str>) -> ApiResult<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    if let Some(text) = text.filter(|t| !t.is_empty()) {
        for pair in text.split(',') {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                ApiError::bad(format!("{name}: {pair:?} is not of the form key=value"))
            })?;
            map.insert(k.to_string(), v.to_string());
        }
    }
    Ok(map)
}

/// `workerPhases`: phases, comma-separated.
pub(super) fn phases(text: Option<&str>) -> ApiResult<Vec<Phase>> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(Vec::new()),
        Some(text) => text
            .split(',')
            .map(|p| Phase::from_str(p).map_err(|e| ApiError::bad(format!("workerPhases: {e}"))))
            .collect(),
    }
}

/// A time filter (`createdAfter`, `createdBefore`): an RFC 3339 time in UTC,
/// as `2026-12-06T17:00:00Z` (fractions of a second allowed), read into the
/// store's microseconds; `name` is the parameter's, for messages.
pub(super) fn time(name: &str, text: Option<&str>) -> ApiResult<Option<i64>> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    humantime::parse_rfc3339(text)
        .map(|time| Some(crate::store::micros_at(time)))
        .map_err(|e| {
            ApiError::bad(format!(
                "{name} {text:?}: {e}; expected an RFC 3339 time in UTC such as 2026-12-06T17:00:00Z"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    #[derive(Debug, Default, Deserialize)]
    struct Sample {
        #[serde(rename = "projectID")]
        project_id: Option<String>,
        #[serde(default)]
        follow: Flag,
        #[serde(flatten)]
        page: PageQuery,
    }

    async fn read(uri: &str) -> Sample {
        let (mut parts, ()) = Request::get(uri).body(()).unwrap().into_parts();
        let Query(sample) = Query::<Sample>::from_request_parts(&mut parts, &())
            .await
            .unwrap();
        sample
    }

    #[tokio::test]
    async fn query_strings_are_read_as_the_handlers_read_them_before() {
        let sample = read("/v2/events?projectID=a%2Fb+c&follow=1&limit=5&continue=42&x=y").await;
        assert_eq!(sample.project_id.as_deref(), Some("a/b c"));
        assert_eq!(sample.follow, Flag(true));
        assert_eq!(sample.page.limit().unwrap(), 5);
        assert_eq!(sample.page.after.as_deref(), Some("42"));
        // A name given twice keeps its last value.
        assert_eq!(read("/?limit=1&limit=7").await.page.limit().unwrap(), 7);
        let none = read("/").await;
        assert_eq!((none.project_id, none.follow), (None, Flag(false)));
        assert_eq!(none.page.limit().unwrap(), DEFAULT_PAGE);
        assert_eq!(read("/?follow=yes").await.follow, Flag(false));
        for limit in ["0", "101", "ten", ""] {
            let page = read(&format!("/?limit={limit}")).await.page;
            assert!(page.limit().is_err(), "{limit}");
        }
    }

    #[test]
    fn filters_are_pairs_and_phases() {
        assert_eq!(
            pairs("labels", Some("a=1,b=2=3")).unwrap(),
            BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2=3".into())])
        );
        assert!(pairs("labels", Some("a")).is_err());
        assert!(pairs("labels", Some("")).unwrap().is_empty());
        assert_eq!(
            phases(Some("PENDING,RUNNING")).unwrap(),
            [Phase::Pending, Phase::Running]
        );
        assert!(phases(Some("DONE")).is_err());
    }
}
