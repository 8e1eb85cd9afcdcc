//! What the security suite's tests share: calls made with a given Tollgate key (and the 403 a
//! refused one answers) and workspace keys
//! minted by the admin.

use serde_json::{json, Value};

use crate::harness::{call, Server};

/// A call to `/v1{path}` on `server` with `key`; returns status and JSON.
pub async fn as_key(
    server: &Server,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (s, _, v) = call(method, &format!("{}/v1{path}", server.url), Some(key), body).await;
    (s, v)
}

/// The calls one key makes to one server ([`WithKey::with_key`]).
pub struct Caller<'a> {
    server: &'a Server,
    key: &'a str,
}

impl Caller<'_> {
    /// A call to `/v1{path}`; returns status and JSON.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        as_key(self.server, self.key, method, path, body).await
    }

    /// `GET /v1{path}`.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, None).await
    }

    /// `DELETE /v1{path}` without a body.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call("DELETE", path, None).await
    }

    /// `PUT /v1{path}` with `body`.
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("PUT", path, Some(body)).await
    }

    /// `POST /v1{path}` with `body`.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(body)).await
    }
}

/// Calls with a key other than the server's admin key.
pub trait WithKey {
    /// The calls `key` makes to this server.
    fn with_key<'a>(&'a self, key: &'a str) -> Caller<'a>;
    /// The calls the bootstrap admin key makes, answers not checked (unlike `Server::admin`).
    fn as_admin(&self) -> Caller<'_>;
}

impl WithKey for Server {
    fn with_key<'a>(&'a self, key: &'a str) -> Caller<'a> {
        Caller { server: self, key }
    }

    fn as_admin(&self) -> Caller<'_> {
        self.with_key(&self.admin_key)
    }
}

/// Asserts `got` is the refusal of a missing scope or authority (403, `AB03`).
pub fn assert_forbidden(got: (u16, Value), what: &str) {
    assert_eq!(got.0, 403, "{what}: {}", got.1);
    assert_eq!(got.1["data"]["errorCode"], "AB03", "{what}: {}", got.1);
}

/// A workspace service key named `name` in `ws` made by the admin, with the fields of `extra`;
/// returns (id, secret).
pub async fn ws_key(server: &Server, ws: &str, name: &str, extra: Value) -> (String, String) {
    let mut b = json!({"name": name, "workspace_id": ws});
    b.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let k = server
        .admin("POST", "/api-keys/workspace/service", Some(b))
        .await;
    (
        k["id"].as_str().unwrap().to_owned(),
        k["key"].as_str().unwrap().to_owned(),
    )
}

/// A workspace service key named `name` in `ws` made by the admin with exactly `scopes`; returns
/// (id, secret).
pub async fn scoped_key(
    server: &Server,
    ws: &str,
    name: &str,
    scopes: &[&str],
) -> (String, String) {
    ws_key(server, ws, name, json!({"scopes": scopes})).await
}
