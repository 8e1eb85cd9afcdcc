//! API key scopes: the management scopes Tollgate enforces, the data-plane ones, and which
//! scopes a key type may hold.

use super::entities::ApiKeyType;

/// The scope that lists the audit trail.
pub const AUDIT_LOGS_LIST: &str = "audit_logs.list";

/// Every management scope; the bootstrap admin key holds them all.
pub const ADMIN_SCOPES: &[&str] = &[
    "workspaces.create",
    "workspaces.read",
    "workspaces.update",
    "workspaces.delete",
    "workspaces.list",
    "workspace_service_api_keys.create",
    "workspace_service_api_keys.read",
    "workspace_service_api_keys.update",
    "workspace_service_api_keys.delete",
    "workspace_service_api_keys.list",
    "workspace_user_api_keys.create",
    "workspace_user_api_keys.read",
    "workspace_user_api_keys.update",
    "workspace_user_api_keys.delete",
    "workspace_user_api_keys.list",
    "organisation_service_api_keys.create",
    "organisation_service_api_keys.read",
    "organisation_service_api_keys.update",
    "organisation_service_api_keys.delete",
    "organisation_service_api_keys.list",
    "virtual_keys.create",
    "virtual_keys.read",
    "virtual_keys.update",
    "virtual_keys.delete",
    "virtual_keys.list",
    "virtual_keys.duplicate",
    "virtual_keys.copy",
    "providers.create",
    "providers.read",
    "providers.update",
    "providers.delete",
    "providers.list",
    "configs.create",
    "configs.read",
    "configs.update",
    "configs.delete",
    "configs.list",
    "organisation_integrations.create",
    "organisation_integrations.read",
    "organisation_integrations.update",
    "organisation_integrations.delete",
    "organisation_integrations.list",
    "workspace_integrations.create",
    "workspace_integrations.read",
    "workspace_integrations.update",
    "workspace_integrations.delete",
    "workspace_integrations.list",
    "analytics.view",
    "logs.view",
    "logs.list",
    "logs.export",
    AUDIT_LOGS_LIST,
];

/// Scopes that only make sense on workspace keys (an organisation key never calls the data
/// plane), so an organisation key, which cannot hold them, may still grant them.
pub const DATA_PLANE_SCOPES: &[&str] = &[
    "completions.write",
    "logs.write",
    "prompts.render",
    "mcp.invoke",
    "agents.invoke",
    "guardrails.invoke",
];

/// Management scopes valid on organisation keys only: they act on the organisation itself or on
/// more than one workspace.
fn organisation_only(scope: &str) -> bool {
    scope.starts_with("organisation_") || matches!(scope, "workspaces.create" | "workspaces.delete")
}

/// Whether a scope Tollgate knows (and enforces).
pub fn known(scope: &str) -> bool {
    ADMIN_SCOPES.contains(&scope) || DATA_PLANE_SCOPES.contains(&scope)
}

/// The one place that says which scopes a key type may hold: organisation-only scopes on
/// organisation keys, data-plane scopes on workspace keys, everything else on either.
pub fn scope_valid_for(kind: ApiKeyType, scope: &str) -> bool {
    if kind.is_workspace() {
        !organisation_only(scope)
    } else {
        !DATA_PLANE_SCOPES.contains(&scope)
    }
}
