//! Routing configs (§4 of the contract): parsing, validation and inheritance. A config is a tree;
//! after [`Node::parse`] every node already carries what it inherits from its parents
//! (`override_params`, `retry`, `request_timeout`), so execution never looks up. Inherited values
//! are shared, not copied ([`Params`]), and a config is bounded in bytes, depth and targets, so
//! the memory a config costs is linear in its size.
//!
//! A stored credential (a `virtual_key` or a provider `"@slug"`) only ever goes to the host its
//! integration names: a `custom_host`, or any other field that says where a call goes or what it
//! carries, is refused on every target that resolves to one, whether set on the target or
//! inherited from a parent node. Only a target with its own `provider` + `api_key` may set
//! `custom_host`.

mod params;
mod strategy;
mod url;

use std::sync::Arc;

use serde_json::{Map, Value};

use strategy::{parse_mode, parse_retry};

pub use params::Params;
pub use strategy::{Mode, Retry};
pub use url::{
    azure_deployment, azure_name_ok, check_private_host, has_azure_map, host_of_url, is_private,
    parse_url, private_refusal, PrivateHosts,
};

/// The largest config, in bytes of JSON text (an `x-portkey-config` header or a saved config).
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;
/// How deep strategy nodes may nest below the root.
pub const MAX_DEPTH: usize = 8;
/// The most targets a config may have, counted over every `targets` array of the tree.
pub const MAX_TARGETS: usize = 100;

/// Fields that would choose the host, path or headers of an upstream call. They belong to the
/// integration (set by an admin); on a target that uses a stored credential they are refused.
const ENDPOINT_FIELDS: [&str; 14] = [
    "custom_headers",
    "base_url",
    "resource_name",
    "deployment_id",
    "api_version",
    "azure_resource_name",
    "azure_deployment_id",
    "azure_endpoint_name",
    "azure_foundry_url",
    "aws_region",
    "vertex_region",
    "vertex_project_id",
    "openai_organization",
    "openai_project",
];

/// Where a leaf sends the request.
#[derive(Clone, Debug, PartialEq)]
pub enum Leaf {
    /// A virtual key slug.
    VirtualKey(String),
    /// A catalog provider slug (from `"@slug"`).
    Provider(String),
    /// A raw provider id with the caller's own key (BYOK): the only target that may name its host.
    Byok {
        provider: String,
        api_key: String,
        custom_host: Option<String>,
    },
}

/// One node of a parsed config, with inherited settings applied.
#[derive(Clone, Debug)]
pub struct Node {
    /// `config`, `config.targets[1]`, ... reported in `x-portkey-last-used-option-index`.
    pub path: String,
    pub mode: Option<Mode>,
    pub targets: Vec<Node>,
    pub leaf: Option<Leaf>,
    pub override_params: Params,
    pub weight: f64,
    pub retry: Option<Arc<Retry>>,
    pub request_timeout_ms: Option<u64>,
}

/// What a node inherits from its ancestors while the tree is parsed.
#[derive(Clone, Default)]
struct Inherited {
    params: Params,
    retry: Option<Arc<Retry>>,
    request_timeout_ms: Option<u64>,
    /// The `custom_host` in force and the node that set it.
    custom_host: Option<(String, String)>,
    /// An endpoint field in force (see [`ENDPOINT_FIELDS`]) and the node that set it.
    endpoint_field: Option<(&'static str, String)>,
}

/// Counts over the whole tree, for the bounds.
struct Budget {
    targets: usize,
}

impl Node {
    /// Parses and validates a config given as JSON text (an `x-portkey-config` header), checking
    /// its size before anything is allocated for it.
    pub fn parse_text(text: &str) -> Result<Node, String> {
        check_size(text.len())?;
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("config is not valid JSON: {e}"))?;
        parse_tree(&v)
    }

    /// Parses and validates a config object.
    pub fn parse(v: &Value) -> Result<Node, String> {
        check_size(json_len(v))?;
        parse_tree(v)
    }

    /// A single-leaf plan (header routing: virtual key, `@provider`, `model="@slug/…"`).
    pub fn leaf(leaf: Leaf) -> Node {
        Node {
            path: "config".into(),
            mode: None,
            targets: Vec::new(),
            leaf: Some(leaf),
            override_params: Params::default(),
            weight: 1.0,
            retry: None,
            request_timeout_ms: None,
        }
    }

    /// Whether `status` should move a fallback on to its next target.
    pub fn falls_back_on(on_status_codes: &Option<Vec<u16>>, status: u16) -> bool {
        match on_status_codes {
            Some(codes) => codes.contains(&status),
            None => !(200..300).contains(&status),
        }
    }

    /// The index chosen by weight for a uniform draw `r` in [0, 1).
    pub fn pick_weighted(targets: &[Node], r: f64) -> usize {
        let total: f64 = targets.iter().map(|t| t.weight).sum();
        if total <= 0.0 {
            return 0;
        }
        let mut acc = 0.0;
        for (i, t) in targets.iter().enumerate() {
            acc += t.weight / total;
            if r < acc {
                return i;
            }
        }
        targets.len() - 1
    }
}

fn check_size(bytes: usize) -> Result<(), String> {
    if bytes > MAX_CONFIG_BYTES {
        return Err(format!(
            "config: {bytes} bytes is more than the {MAX_CONFIG_BYTES} bytes a config may have"
        ));
    }
    Ok(())
}

/// The length of `v` as compact JSON, measured without building the text (and given up as soon
/// as it passes the bound, so a huge value costs no more than the bound to measure).
fn json_len(v: &Value) -> usize {
    let mut w = Counter(0);
    // The counter fails only once past the bound; its count is the answer either way.
    let _ = serde_json::to_writer(&mut w, v);
    w.0
}

struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        if self.0 > MAX_CONFIG_BYTES {
            return Err(std::io::Error::other("config too large"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn parse_tree(v: &Value) -> Result<Node, String> {
    let mut budget = Budget { targets: 0 };
    parse_node(v, "config".into(), &Inherited::default(), 0, &mut budget)
}

fn parse_node(
    v: &Value,
    at: String,
    parent: &Inherited,
    depth: usize,
    budget: &mut Budget,
) -> Result<Node, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{at}: must be an object"))?;
    if depth > MAX_DEPTH {
        return Err(format!("{at}: configs nest at most {MAX_DEPTH} levels"));
    }
    let inherited = inherit(obj, &at, parent)?;
    let weight = match obj.get("weight") {
        None => 1.0,
        Some(w) => w
            .as_f64()
            .filter(|w| *w >= 0.0)
            .ok_or_else(|| format!("{at}.weight: must be a number ≥ 0"))?,
    };
    let mut node = Node {
        path: at,
        mode: None,
        targets: Vec::new(),
        leaf: None,
        override_params: inherited.params.clone(),
        weight,
        retry: inherited.retry.clone(),
        request_timeout_ms: inherited.request_timeout_ms,
    };
    if let Some(s) = obj.get("strategy") {
        node.mode = Some(parse_mode(s, &node.path)?);
        node.targets = parse_targets(obj, &node.path, &inherited, depth, budget)?;
    } else if obj.contains_key("targets") {
        return Err(format!("{}: targets need a strategy", node.path));
    } else {
        let leaf = parse_leaf(obj, &node.path, &inherited)?;
        node.leaf = Some(leaf.ok_or_else(|| format!(
            "{}: a config node needs one of provider+api_key, virtual_key, provider \"@slug\", or strategy+targets",
            node.path
        ))?);
    }
    Ok(node)
}

/// A node's own settings laid over what it inherits.
fn inherit(obj: &Map<String, Value>, at: &str, parent: &Inherited) -> Result<Inherited, String> {
    let mut out = parent.clone();
    if let Some(p) = obj.get("override_params") {
        let p = p
            .as_object()
            .ok_or_else(|| format!("{at}.override_params: must be an object"))?;
        out.params = parent.params.with(p.clone());
    }
    if let Some(r) = obj.get("retry") {
        out.retry = Some(Arc::new(parse_retry(r, at)?));
    }
    if let Some(t) = obj.get("request_timeout") {
        out.request_timeout_ms = Some(
            t.as_u64()
                .ok_or_else(|| format!("{at}.request_timeout: must be milliseconds"))?,
        );
    }
    if let Some(h) = obj.get("custom_host") {
        out.custom_host = Some((parse_url(h, &format!("{at}.custom_host"))?, at.to_owned()));
    }
    if let Some(f) = ENDPOINT_FIELDS.iter().find(|f| obj.contains_key(**f)) {
        out.endpoint_field = Some((f, at.to_owned()));
    }
    Ok(out)
}

fn parse_targets(
    obj: &Map<String, Value>,
    at: &str,
    inherited: &Inherited,
    depth: usize,
    budget: &mut Budget,
) -> Result<Vec<Node>, String> {
    let targets = obj
        .get("targets")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| format!("{at}.targets: a strategy needs a non-empty targets array"))?;
    budget.targets += targets.len();
    if budget.targets > MAX_TARGETS {
        return Err(format!(
            "{at}.targets: a config may have at most {MAX_TARGETS} targets in all"
        ));
    }
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            parse_node(
                t,
                format!("{at}.targets[{i}]"),
                inherited,
                depth + 1,
                budget,
            )
        })
        .collect()
}

fn parse_leaf(
    obj: &Map<String, Value>,
    at: &str,
    inherited: &Inherited,
) -> Result<Option<Leaf>, String> {
    let text = |k: &str| -> Result<Option<String>, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(format!("{at}.{k}: must be a non-empty string")),
        }
    };
    let stored = if let Some(vk) = text("virtual_key")? {
        Leaf::VirtualKey(vk)
    } else {
        match (text("provider")?, text("api_key")?) {
            (Some(p), _) if p.starts_with('@') => Leaf::Provider(p[1..].to_owned()),
            (Some(provider), Some(api_key)) => {
                return Ok(Some(Leaf::Byok {
                    provider,
                    api_key,
                    custom_host: inherited.custom_host.clone().map(|(h, _)| h),
                }))
            }
            (Some(p), None) => {
                return Err(format!(
                    "{at}.provider: \"{p}\" needs an api_key, or use \"@provider-slug\""
                ))
            }
            (None, _) => return Ok(None),
        }
    };
    refuse_endpoint(at, inherited)?;
    Ok(Some(stored))
}

/// A target with a stored credential may not say where its call goes or what it carries.
fn refuse_endpoint(at: &str, inherited: &Inherited) -> Result<(), String> {
    let (field, set_at) = match (&inherited.custom_host, &inherited.endpoint_field) {
        (Some((_, set_at)), _) => ("custom_host", set_at),
        (None, Some((field, set_at))) => (*field, set_at),
        (None, None) => return Ok(()),
    };
    let whence = if set_at == at {
        String::new()
    } else {
        format!(" (inherited from {set_at})")
    };
    Err(format!(
        "{at}: {field}{whence} is not accepted on a target that uses a stored credential \
         (virtual_key or provider \"@slug\"): a stored credential is only sent to the host its \
         integration names, set by an admin. Only a target with its own provider and api_key may \
         set custom_host"
    ))
}

#[cfg(test)]
mod tests {
    use super::strategy::DEFAULT_RETRY_CODES;
    use super::*;
    use serde_json::json;

    #[test]
    fn fallback_with_inheritance() {
        let n = Node::parse(&json!({
            "strategy":{"mode":"fallback","on_status_codes":[500]},
            "retry":{"attempts":1},
            "override_params":{"model":"a","temperature":0},
            "targets":[
                {"virtual_key":"vk-1","override_params":{"model":"b"}},
                {"provider":"@team","retry":{"attempts":2,"on_status_codes":[429,429]}},
                {"provider":"openai","api_key":"sk-own","custom_host":"http://mock/v1/"}]
        }))
        .unwrap();
        assert_eq!(
            n.mode,
            Some(Mode::Fallback {
                on_status_codes: Some(vec![500])
            })
        );
        let (a, b, c) = (&n.targets[0], &n.targets[1], &n.targets[2]);
        assert_eq!(a.path, "config.targets[0]");
        assert_eq!(a.leaf, Some(Leaf::VirtualKey("vk-1".into())));
        assert_eq!(a.override_params.get("model"), Some(&json!("b")));
        assert_eq!(a.override_params.get("temperature"), Some(&json!(0)));
        assert_eq!(
            a.retry.as_ref().unwrap().on_status_codes,
            DEFAULT_RETRY_CODES.to_vec()
        );
        assert_eq!(b.leaf, Some(Leaf::Provider("team".into())));
        assert_eq!(b.override_params.get("model"), Some(&json!("a")));
        assert_eq!(
            b.retry.as_deref(),
            Some(&Retry {
                attempts: 2,
                on_status_codes: vec![429]
            })
        );
        assert_eq!(
            c.leaf,
            Some(Leaf::Byok {
                provider: "openai".into(),
                api_key: "sk-own".into(),
                custom_host: Some("http://mock/v1".into())
            })
        );
    }

    #[test]
    fn invalid_configs_say_where() {
        for (bad, needle) in [
            (json!({}), "config: a config node needs"),
            (json!({"strategy":{"mode":"fallback"}}), "targets"),
            (
                json!({"strategy":{"mode":"conditional"},"targets":[{"virtual_key":"a"}]}),
                "not supported",
            ),
            (
                json!({"strategy":{"mode":"single"},"targets":[{"weight":1}]}),
                "config.targets[0]",
            ),
            (json!({"provider":"openai"}), "needs an api_key"),
            (
                json!({"virtual_key":"a","retry":{"attempts":9}}),
                "at most 5",
            ),
            (
                json!({"provider":"openai","api_key":"k","custom_host":"ftp://x"}),
                "custom_host",
            ),
            (json!("pc-1"), "must be an object"),
        ] {
            let e = Node::parse(&bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn stored_credentials_never_take_a_request_host() {
        let host = "http://127.0.0.1:9/v1";
        for (bad, needle) in [
            (
                json!({"provider":"@team","custom_host":host}),
                "config: custom_host is not accepted",
            ),
            (
                json!({"virtual_key":"vk","custom_host":host}),
                "config: custom_host is not accepted",
            ),
            (
                json!({"strategy":{"mode":"fallback"},"targets":[{"provider":"@team"},{"provider":"@team","custom_host":host}]}),
                "config.targets[1]: custom_host is not accepted",
            ),
            (
                json!({"strategy":{"mode":"single"},"custom_host":host,"targets":[{"strategy":{"mode":"single"},"targets":[{"provider":"@team"}]}]}),
                "config.targets[0].targets[0]: custom_host (inherited from config) is not accepted",
            ),
            (
                json!({"provider":"@team","custom_headers":{"x":"y"}}),
                "custom_headers is not accepted",
            ),
            (
                json!({"virtual_key":"vk","resource_name":"evil"}),
                "resource_name is not accepted",
            ),
            (
                json!({"provider":"@team","openai_project":"proj_other"}),
                "openai_project is not accepted",
            ),
        ] {
            let e = Node::parse(&bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    /// A config as wide and deep as the bounds allow, with a large root `override_params`, stores
    /// that object once: every node shares it.
    #[test]
    fn inherited_params_are_shared_not_copied() {
        let leaf = json!({"provider":"@team"});
        let mut node =
            json!({"strategy":{"mode":"fallback"},"targets":[leaf.clone(), leaf.clone()]});
        for _ in 0..MAX_DEPTH - 1 {
            node = json!({"strategy":{"mode":"fallback"},"targets":[node, leaf.clone()]});
        }
        node["override_params"] = json!({"big": "x".repeat(100_000)});
        let root = Node::parse(&node).unwrap();
        let mut n = &root;
        while let Some(first) = n.targets.first() {
            assert!(first.override_params.shares_with(&root.override_params));
            assert!(n.targets[1]
                .override_params
                .shares_with(&root.override_params));
            n = first;
        }
    }

    #[test]
    fn configs_are_bounded() {
        let big =
            json!({"provider":"@team","override_params":{"pad":"x".repeat(MAX_CONFIG_BYTES)}});
        let e = Node::parse(&big).unwrap_err();
        assert!(
            e.contains("bytes") && e.contains(&MAX_CONFIG_BYTES.to_string()),
            "{e}"
        );
        let e = Node::parse_text(&big.to_string()).unwrap_err();
        assert!(e.contains(&MAX_CONFIG_BYTES.to_string()), "{e}");
        let wide: Vec<Value> = (0..=MAX_TARGETS)
            .map(|_| json!({"provider":"@team"}))
            .collect();
        let e =
            Node::parse(&json!({"strategy":{"mode":"loadbalance"},"targets":wide})).unwrap_err();
        assert!(e.contains(&format!("at most {MAX_TARGETS} targets")), "{e}");
        let mut deep = json!({"provider":"@team"});
        for _ in 0..=MAX_DEPTH {
            deep = json!({"strategy":{"mode":"single"},"targets":[deep]});
        }
        let e = Node::parse(&deep).unwrap_err();
        assert!(e.contains(&format!("at most {MAX_DEPTH} levels")), "{e}");
        let ok =
            Node::parse_text(r#"{"strategy":{"mode":"single"},"targets":[{"provider":"@team"}]}"#);
        assert!(ok.is_ok());
    }

    #[test]
    fn weighted_pick() {
        let n = Node::parse(&json!({"strategy":{"mode":"loadbalance"},"targets":[
            {"virtual_key":"a","weight":1},{"virtual_key":"b","weight":3}]}))
        .unwrap();
        assert_eq!(Node::pick_weighted(&n.targets, 0.0), 0);
        assert_eq!(Node::pick_weighted(&n.targets, 0.2499), 0);
        assert_eq!(Node::pick_weighted(&n.targets, 0.25), 1);
        assert_eq!(Node::pick_weighted(&n.targets, 0.9999), 1);
    }

    #[test]
    fn fallback_trigger() {
        assert!(Node::falls_back_on(&None, 500));
        assert!(!Node::falls_back_on(&None, 200));
        assert!(!Node::falls_back_on(&Some(vec![429]), 500));
        assert!(Node::falls_back_on(&Some(vec![429]), 429));
    }
}
