//! JSON as Go's `encoding/json` reads flannel's values: field names matched case-insensitively,
//! `null` as absent. Errors name the field in its Go spelling.
//!
//! Invariant: no input (it comes from etcd) panics; a wrong type is an error naming the field.

use std::net::Ipv4Addr;

use serde_json::{Map, Value};

use super::FlannelError;

/// A JSON object with its keys lower-cased, as Go's case-insensitive field matching sees it
/// (for duplicate keys the last one wins, as in Go). `null` is an absent object, as in Go.
pub(super) fn folded(value: &Value, key: &str) -> Result<Option<Map<String, Value>>, FlannelError> {
    match value {
        Value::Null => Ok(None),
        Value::Object(m) => Ok(Some(
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
        )),
        other => Err(FlannelError::new(
            key,
            format!("is {}, not a JSON object", kind(other)),
        )),
    }
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field `name` (its Go spelling, used in errors) of a folded object; `null` counts as absent.
pub(super) fn field<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(&name.to_ascii_lowercase()).filter(|v| !v.is_null())
}

pub(super) fn string_field<'a>(
    m: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, FlannelError> {
    match field(m, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(FlannelError::new(
            name,
            format!("is {}, not a string", kind(other)),
        )),
    }
}

pub(super) fn uint_field(m: &Map<String, Value>, name: &str) -> Result<Option<u64>, FlannelError> {
    match field(m, name) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| FlannelError::new(name, format!("{v} is not a non-negative integer"))),
    }
}

pub(super) fn addr_field(
    m: &Map<String, Value>,
    name: &str,
) -> Result<Option<Ipv4Addr>, FlannelError> {
    string_field(m, name)?
        .map(|s| {
            s.parse()
                .map_err(|_| FlannelError::new(name, format!("{s:?} is not an IPv4 address")))
        })
        .transpose()
}

pub(super) fn prefixed(parent: &str, e: FlannelError) -> FlannelError {
    FlannelError::new(format!("{parent}.{}", e.key), e.reason)
}
