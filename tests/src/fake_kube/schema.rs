//! Decoding a request's object as the API server does, into the resource's
//! type: a value of the wrong type is a 400, and a field the type does not
//! have is dropped, with a warning or (`fieldValidation=Strict`, what
//! kubectl sends by default) a 400. The types are k8s-openapi's, generated
//! from the same OpenAPI the API server serves, so "a field the type does
//! not have" is what a round trip through them loses.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::store::{ApiError, Resource};

/// The `fieldValidation` parameter of a create, update or patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldValidation {
    /// Unknown fields are dropped silently.
    Ignore,
    /// Unknown fields are dropped, each with a `Warning` header (the
    /// default since Kubernetes 1.27).
    Warn,
    /// An unknown field fails the request.
    Strict,
}

impl FieldValidation {
    pub(crate) fn parse(value: Option<&str>) -> Result<FieldValidation, ApiError> {
        match value {
            None | Some("" | "Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other}"
            ))),
        }
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Decodes `object` as `resource`'s type, dropping the fields it does not
/// have (and nulls, which decode to nothing); returns the warnings to send.
pub(crate) fn decode(
    resource: Resource,
    object: &mut Value,
    validation: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let kept = match resource {
        Resource::Pods => round_trip::<Pod>(object),
        Resource::Secrets => round_trip::<Secret>(object),
        Resource::PersistentVolumeClaims => round_trip::<PersistentVolumeClaim>(object),
        Resource::Services => round_trip::<Service>(object),
        Resource::NetworkPolicies => round_trip::<NetworkPolicy>(object),
    };
    // The API server's words (k8s.io/apiserver's transformDecodeError).
    let cannot = |why: &str| {
        let kind = resource.kind();
        let version = resource.api_version();
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {why}"
        ))
    };
    let kept = kept.map_err(|e| cannot(&e))?;
    quantities(resource, &kept).map_err(cannot)?;
    let mut unknown = Vec::new();
    drop_unknown(object, &kept, "", &mut unknown);
    let unknown: Vec<String> = unknown
        .into_iter()
        .map(|path| format!("unknown field \"{path}\""))
        .collect();
    match validation {
        FieldValidation::Strict if !unknown.is_empty() => Err(cannot(&format!(
            "strict decoding error: {}",
            unknown.join(", ")
        ))),
        FieldValidation::Warn => Ok(unknown),
        _ => Ok(Vec::new()),
    }
}

/// Removes from `sent` what is not in `kept`, naming each removed field's
/// path as Go's strict decoder does (`spec.containers[0].foo`) in
/// `unknown`; a null is removed without a name.
fn drop_unknown(sent: &mut Value, kept: &Value, path: &str, unknown: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(fields), Value::Object(kept)) => {
            fields.retain(|key, value| {
                let inner = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match kept.get(key) {
                    Some(kept) => {
                        drop_unknown(value, kept, &inner, unknown);
                        true
                    }
                    None => {
                        if !value.is_null() {
                            unknown.push(inner);
                        }
                        false
                    }
                }
            });
        }
        (Value::Array(items), Value::Array(kept)) => {
            for (i, (item, kept)) in items.iter_mut().zip(kept).enumerate() {
                drop_unknown(item, kept, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// The quantities of a resource's requests and limits, which k8s-openapi
/// keeps as strings but the API server parses while decoding
/// (`resource.ParseQuantity`): a claim's storage, a container's CPU and
/// memory.
fn quantities(resource: Resource, object: &Value) -> Result<(), &'static str> {
    let mut lists = Vec::new();
    match resource {
        Resource::PersistentVolumeClaims => lists.push(&object["spec"]["resources"]),
        Resource::Pods => {
            for kind in ["initContainers", "containers"] {
                for container in object["spec"][kind].as_array().into_iter().flatten() {
                    lists.push(&container["resources"]);
                }
            }
        }
        _ => {}
    }
    for resources in lists {
        for list in ["requests", "limits"] {
            for quantity in resources[list]
                .as_object()
                .into_iter()
                .flat_map(|q| q.values())
            {
                parse_quantity(quantity.as_str().unwrap_or_default())?;
            }
        }
    }
    Ok(())
}

/// k8s.io/apimachinery's ParseQuantity, as far as saying whether `text`
/// is one: a signed decimal number, then a binary (`Ki` … `Ei`) or decimal
/// (`n` … `E`) suffix or a decimal exponent (`e3`); its errors' words.
fn parse_quantity(text: &str) -> Result<(), &'static str> {
    const FORMAT: &str = "quantities must match the regular expression \
         '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";
    const SUFFIX: &str = "unable to parse quantity's suffix";
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let number_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    if !number.bytes().any(|b| b.is_ascii_digit()) || number.matches('.').count() > 1 {
        return Err(FORMAT);
    }
    let letters = suffix
        .find(|c: char| !"eEinumkKMGTP".contains(c))
        .unwrap_or(suffix.len());
    let exponent = &suffix[letters..];
    let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
    if !exponent.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FORMAT);
    }
    let known = [
        "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
    ];
    let decimal_exponent = suffix
        .strip_prefix(['e', 'E'])
        .is_some_and(|e| e.parse::<i32>().is_ok());
    if known.contains(&suffix) || decimal_exponent {
        Ok(())
    } else {
        Err(SUFFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_quantity;

    #[test]
    fn quantities_parse_as_the_api_server_parses_them() {
        for good in [
            "1",
            "1073741824",
            "2Gi",
            "100m",
            "0.5",
            "+1.5Ki",
            "1e3",
            "1E-3",
            "5M",
        ] {
            assert_eq!(parse_quantity(good), Ok(()), "{good}");
        }
        for bad in ["", "Gi", "10 GB", "1.2.3", "-", "1GB", "1iG", "1e"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_quantity("1mi"),
            Err("unable to parse quantity's suffix")
        );
        assert!(parse_quantity("1GB").is_err_and(|e| e.starts_with("quantities must match")));
    }
}
