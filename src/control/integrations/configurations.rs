//! An integration's `configurations`: what each key may hold, and who may change what (a
//! stored credential never goes to a host it was not set for; metering is the organisation's).

use serde_json::{Map, Value};

use super::*;
use crate::domain::routing::{azure_name_ok, check_private_host, parse_url, PrivateHosts};

/// Checks `configurations`: `custom_host` must be a URL, `custom_headers` an object of strings and
/// `meter_unpriced_at_zero` (meter models without a price at $0 instead of refusing them on paths
/// with a cost budget) a boolean.
pub(super) fn configurations_of(
    b: &Body,
    hosts: PrivateHosts,
) -> Result<Option<Map<String, Value>>> {
    let Some(c) = b.object("configurations")? else {
        return Ok(None);
    };
    let mut c = c.clone();
    c.retain(|_, v| !v.is_null());
    check_custom_host(&mut c, hosts, "configurations.custom_host")?;
    if let Some(h) = c.get("custom_headers") {
        if !h
            .as_object()
            .is_some_and(|o| o.values().all(Value::is_string))
        {
            return Err(invalid(
                "configurations.custom_headers must be an object of strings",
            ));
        }
    }
    let flag = crate::domain::pricing::METER_UNPRICED_AT_ZERO;
    if c.get(flag).is_some_and(|v| !v.is_boolean()) {
        return Err(invalid(format!("configurations.{flag} must be a boolean")));
    }
    check_azure_names(&c)?;
    Ok(Some(c))
}

/// Takes the catalog's secret fields (credentials such as `aws_secret_access_key`) out of `c`:
/// they are sealed into the integration's `secrets`, never kept in `configurations`. A value
/// must be a non-empty string (a service-account JSON may be given as an object too).
pub(super) fn take_secrets(c: &mut Map<String, Value>) -> Result<Vec<(String, String)>> {
    let names: Vec<String> = c
        .keys()
        .filter(|k| crate::domain::catalog::is_secret_field(k))
        .cloned()
        .collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let text = match c.remove(&name) {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::Object(o)) if name == "vertex_service_account_json" => {
                Value::Object(o).to_string()
            }
            _ => {
                return Err(invalid(format!(
                    "configurations.{name} must be a non-empty string"
                )))
            }
        };
        if text.len() > MAX_SECRET_BYTES {
            return Err(invalid(format!(
                "configurations.{name} is larger than {MAX_SECRET_BYTES} bytes"
            )));
        }
        out.push((name, text));
    }
    Ok(out)
}

/// The largest secret field accepted (a service-account JSON is about 2.5 KB).
const MAX_SECRET_BYTES: usize = 16 * 1024;

/// Seals `secrets` into `i` (each bound to the integration and its field name, so a sealed
/// value cannot be moved to another field or integration).
pub(super) fn seal_secrets(ctl: &Control, i: &mut Integration, secrets: Vec<(String, String)>) {
    for (name, text) in secrets {
        let sealed = ctl.sealer.seal(
            &text,
            seal_scope(i),
            &crate::crypto::secret_id(&i.id, &name),
        );
        i.secrets.insert(name, sealed);
    }
}

/// Refuses an integration its provider cannot be called with: an `ai_provider_id` the catalog
/// does not have (only when `new`: ones stored before the catalog keep working), or a missing
/// credential or setting (the error names every missing field).
pub(super) fn check_provider(i: &Integration, new: bool) -> Result<()> {
    let Some(kind) = crate::domain::catalog::kind(&i.ai_provider_id) else {
        if !new {
            return Ok(());
        }
        return Err(invalid(format!(
            "unknown ai_provider_id {:?}; GET /v1/ai-providers lists the supported ones",
            i.ai_provider_id
        )));
    };
    let secrets: Vec<&str> = i.secrets.keys().map(String::as_str).collect();
    let missing = kind.missing(&i.configurations, &secrets, i.key.is_some());
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing
        .iter()
        .map(|m| match *m {
            "key" => "key".to_owned(),
            f => format!("configurations.{f}"),
        })
        .collect();
    Err(invalid(format!(
        "a {} integration needs {}",
        kind.name,
        names.join(", ")
    )))
}

/// Checks `c`'s `custom_host` (named `field` in errors), if any: a URL, and not a private host
/// unless `hosts` allows it; it is stored normalised.
pub fn check_custom_host(
    c: &mut Map<String, Value>,
    hosts: PrivateHosts,
    field: &str,
) -> Result<()> {
    if let Some(h) = c.get("custom_host") {
        let url = parse_url(h, field).map_err(invalid)?;
        check_private_host(&url, hosts, field).map_err(invalid)?;
        c.insert("custom_host".into(), Value::String(url));
    }
    Ok(())
}

/// Refuses a `resource_name`, `deployment_name` or `deployment_id` (also in the `deployments`
/// map) that is not a plain name (see [`azure_name_ok`]): they form the URL.
pub fn check_azure_names(c: &Map<String, Value>) -> Result<()> {
    check_deployments(c.get("deployments"))?;
    let host_names_a_deployment = c
        .get("custom_host")
        .and_then(Value::as_str)
        .is_some_and(|h| h.contains("/openai/deployments/"));
    if host_names_a_deployment && crate::domain::routing::has_azure_map(c) {
        return Err(invalid(
            "configurations.custom_host names a deployment (.../openai/deployments/...) and configurations.deployments maps models to deployments: set the endpoint's root as custom_host, or drop the map",
        ));
    }
    for field in ["resource_name", "deployment_name", "deployment_id"] {
        let ok = match c.get(field) {
            None => true,
            Some(v) => v.as_str().is_some_and(|s| azure_name_ok(field, s)),
        };
        if !ok {
            let shape = if field == "resource_name" {
                "[A-Za-z0-9-]+"
            } else {
                "[A-Za-z0-9._-]+"
            };
            return Err(invalid(format!("{field} must match ^{shape}$")));
        }
    }
    Ok(())
}

/// Checks an Azure `deployments` map: `{"model": "deployment", ...}` or a list of `{"model",
/// "deployment_id"}`, every deployment a plain name.
fn check_deployments(d: Option<&Value>) -> Result<()> {
    let plain = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .is_some_and(|n| azure_name_ok("deployment_name", n))
    };
    let ok = match d {
        None => true,
        Some(Value::Object(m)) => m.values().all(|v| plain(Some(v))),
        Some(Value::Array(list)) => list.iter().all(|e| {
            e.get("model").is_some_and(Value::is_string)
                && plain(e.get("deployment_id").or_else(|| e.get("deployment_name")))
        }),
        Some(_) => false,
    };
    if !ok {
        return Err(invalid(
            "configurations.deployments must map models to deployment names ^[A-Za-z0-9._-]+$: {\"gpt-4o\": \"prod-4o\"} or [{\"model\": \"gpt-4o\", \"deployment_id\": \"prod-4o\"}]",
        ));
    }
    Ok(())
}

/// Refuses a workspace key's change of `meter_unpriced_at_zero` (from `current` by `c`): it
/// decides whether unpriced models count against cost budgets, which the organisation may have
/// set on the workspace, so it is the organisation's to set.
pub(super) fn check_metering(
    caller: &Caller,
    current: &Map<String, Value>,
    c: &Map<String, Value>,
) -> Result<()> {
    let flag = crate::domain::pricing::METER_UNPRICED_AT_ZERO;
    let was = current.get(flag).and_then(Value::as_bool).unwrap_or(false);
    match c.get(flag).and_then(Value::as_bool) {
        Some(now) if now != was => caller.require_organisation(&format!(
            "setting configurations.{flag} (what cost budgets count)"
        )),
        _ => Ok(()),
    }
}

/// Refuses a workspace key's change of `configurations` (to `c`) that could send a stored
/// credential elsewhere unless it gives the key in the same update (`with_key`): any change of
/// custom_host, and any change at all to a credential the organisation entered (the Azure URL
/// is built from resource_name and deployment_name, for instance).
pub(super) fn check_reconfigure(
    caller: &Caller,
    i: &Integration,
    c: &Map<String, Value>,
    with_key: bool,
) -> Result<()> {
    if with_key || caller.authority() == Authority::Organisation {
        return Ok(());
    }
    let changed = |k: &str| c.get(k).is_some_and(|v| i.configurations.get(k) != Some(v));
    if changed("custom_host") {
        return Err(ControlError::Forbidden(
            "a workspace key that changes custom_host must give the integration's key in the same update: a stored credential never goes to a host it was not set for".into(),
        ));
    }
    let org_credential = i.has_credential() && i.credential_set_by == Authority::Organisation;
    if org_credential && c.keys().any(|k| changed(k)) {
        return Err(ControlError::Forbidden(
            "this integration's key was entered with an organisation key: a workspace key that changes its configurations must give the key in the same update".into(),
        ));
    }
    Ok(())
}
