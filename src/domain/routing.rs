//! Routing configs (§4 of the contract): parsing, validation and inheritance. A config is a tree;
//! after [`Node::parse`] every node already carries what it inherits from its parents
//! (`override_params`, `retry`, `request_timeout`, `custom_host`), so execution never looks up.

use serde_json::{Map, Value};

/// How a strategy node uses its targets.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Single,
    /// Try targets in order; move on when the status is in `on_status_codes` (or is not 2xx when unset).
    Fallback {
        on_status_codes: Option<Vec<u16>>,
    },
    Loadbalance,
}

/// Retry the same target on these statuses, `attempts` more times at most.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    pub attempts: u32,
    pub on_status_codes: Vec<u16>,
}

/// The OSS gateway's retry defaults.
const DEFAULT_RETRY_CODES: [u16; 5] = [429, 500, 502, 503, 504];
const MAX_RETRY_ATTEMPTS: u32 = 5;

/// Where a leaf sends the request.
#[derive(Clone, Debug, PartialEq)]
pub enum Leaf {
    /// A virtual key slug.
    VirtualKey(String),
    /// A catalog provider slug (from `"@slug"`).
    Provider(String),
    /// A raw provider id with the caller's own key (BYOK).
    Byok { provider: String, api_key: String },
}

/// One node of a parsed config, with inherited settings applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// `config`, `config.targets[1]`, ... reported in `x-portkey-last-used-option-index`.
    pub path: String,
    pub mode: Option<Mode>,
    pub targets: Vec<Node>,
    pub leaf: Option<Leaf>,
    pub override_params: Map<String, Value>,
    pub weight: f64,
    pub retry: Option<Retry>,
    pub request_timeout_ms: Option<u64>,
    pub custom_host: Option<String>,
}

impl Node {
    /// Parses and validates a config object.
    pub fn parse(v: &Value) -> Result<Node, String> {
        let root = Node {
            path: "config".into(),
            mode: None,
            targets: Vec::new(),
            leaf: None,
            override_params: Map::new(),
            weight: 1.0,
            retry: None,
            request_timeout_ms: None,
            custom_host: None,
        };
        parse_node(v, root, 0)
    }

    /// A single-leaf plan (header routing: virtual key, `@provider`, `model="@slug/…"`).
    pub fn leaf(leaf: Leaf) -> Node {
        Node {
            path: "config".into(),
            mode: None,
            targets: Vec::new(),
            leaf: Some(leaf),
            override_params: Map::new(),
            weight: 1.0,
            retry: None,
            request_timeout_ms: None,
            custom_host: None,
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

const MAX_DEPTH: usize = 8;

fn parse_node(v: &Value, inherited: Node, depth: usize) -> Result<Node, String> {
    let at = inherited.path.clone();
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{at}: must be an object"))?;
    if depth > MAX_DEPTH {
        return Err(format!("{at}: configs nest at most {MAX_DEPTH} levels"));
    }
    let mut node = inherited;
    node.targets = Vec::new();
    node.mode = None;
    node.leaf = None;
    if let Some(p) = obj.get("override_params") {
        let p = p
            .as_object()
            .ok_or_else(|| format!("{at}.override_params: must be an object"))?;
        for (k, v) in p {
            node.override_params.insert(k.clone(), v.clone());
        }
    }
    if let Some(w) = obj.get("weight") {
        node.weight = w
            .as_f64()
            .filter(|w| *w >= 0.0)
            .ok_or_else(|| format!("{at}.weight: must be a number ≥ 0"))?;
    } else {
        node.weight = 1.0;
    }
    if let Some(r) = obj.get("retry") {
        node.retry = Some(parse_retry(r, &at)?);
    }
    if let Some(t) = obj.get("request_timeout") {
        node.request_timeout_ms = Some(
            t.as_u64()
                .ok_or_else(|| format!("{at}.request_timeout: must be milliseconds"))?,
        );
    }
    if let Some(h) = obj.get("custom_host") {
        node.custom_host = Some(parse_url(h, &format!("{at}.custom_host"))?);
    }
    node.leaf = parse_leaf(obj, &at)?;
    if let Some(s) = obj.get("strategy") {
        node.mode = Some(parse_mode(s, &at)?);
        let targets = obj
            .get("targets")
            .and_then(Value::as_array)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("{at}.targets: a strategy needs a non-empty targets array"))?;
        let mut children = Vec::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            let mut child = node.clone();
            child.path = format!("{at}.targets[{i}]");
            children.push(parse_node(t, child, depth + 1)?);
        }
        node.targets = children;
        node.leaf = None;
    } else if obj.contains_key("targets") {
        return Err(format!("{at}: targets need a strategy"));
    }
    if node.mode.is_none() && node.leaf.is_none() {
        return Err(format!(
            "{at}: a config node needs one of provider+api_key, virtual_key, provider \"@slug\", or strategy+targets"
        ));
    }
    Ok(node)
}

fn parse_leaf(obj: &Map<String, Value>, at: &str) -> Result<Option<Leaf>, String> {
    let text = |k: &str| -> Result<Option<String>, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(format!("{at}.{k}: must be a non-empty string")),
        }
    };
    if let Some(vk) = text("virtual_key")? {
        return Ok(Some(Leaf::VirtualKey(vk)));
    }
    match (text("provider")?, text("api_key")?) {
        (Some(p), _) if p.starts_with('@') => Ok(Some(Leaf::Provider(p[1..].to_owned()))),
        (Some(provider), Some(api_key)) => Ok(Some(Leaf::Byok { provider, api_key })),
        (Some(p), None) => Err(format!(
            "{at}.provider: \"{p}\" needs an api_key, or use \"@provider-slug\""
        )),
        (None, _) => Ok(None),
    }
}

fn parse_mode(v: &Value, at: &str) -> Result<Mode, String> {
    let mode = v
        .get("mode")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{at}.strategy.mode: required"))?;
    match mode {
        "single" => Ok(Mode::Single),
        "loadbalance" => Ok(Mode::Loadbalance),
        "fallback" => {
            let codes = match v.get("on_status_codes") {
                None | Some(Value::Null) => None,
                Some(c) => Some(status_list(c, &format!("{at}.strategy.on_status_codes"))?),
            };
            Ok(Mode::Fallback {
                on_status_codes: codes,
            })
        }
        other => Err(format!(
            "{at}.strategy.mode: \"{other}\" is not supported (single, fallback, loadbalance)"
        )),
    }
}

fn parse_retry(v: &Value, at: &str) -> Result<Retry, String> {
    let attempts = v
        .get("attempts")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{at}.retry.attempts: required, a whole number"))?;
    if attempts > u64::from(MAX_RETRY_ATTEMPTS) {
        return Err(format!("{at}.retry.attempts: at most {MAX_RETRY_ATTEMPTS}"));
    }
    let on_status_codes = match v.get("on_status_codes") {
        None | Some(Value::Null) => DEFAULT_RETRY_CODES.to_vec(),
        Some(c) => status_list(c, &format!("{at}.retry.on_status_codes"))?,
    };
    Ok(Retry {
        attempts: attempts as u32,
        on_status_codes,
    })
}

fn status_list(v: &Value, at: &str) -> Result<Vec<u16>, String> {
    v.as_array()
        .ok_or_else(|| format!("{at}: must be an array of status codes"))?
        .iter()
        .map(|c| {
            c.as_u64()
                .filter(|c| (100..=599).contains(c))
                .map(|c| c as u16)
                .ok_or_else(|| format!("{at}: {c} is not an HTTP status code"))
        })
        .collect()
}

/// Checks an upstream base URL (http or https, with a host).
pub fn parse_url(v: &Value, at: &str) -> Result<String, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("{at}: must be a URL string"))?;
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("{at}: must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') || s.chars().any(char::is_whitespace) {
        return Err(format!("{at}: not a valid URL"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fallback_with_inheritance() {
        let n = Node::parse(&json!({
            "strategy":{"mode":"fallback","on_status_codes":[500]},
            "retry":{"attempts":1},
            "override_params":{"model":"a","temperature":0},
            "targets":[
                {"virtual_key":"vk-1","override_params":{"model":"b"},"custom_host":"http://mock/v1/"},
                {"provider":"@team","retry":{"attempts":2,"on_status_codes":[429]}}]
        }))
        .unwrap();
        assert_eq!(
            n.mode,
            Some(Mode::Fallback {
                on_status_codes: Some(vec![500])
            })
        );
        let (a, b) = (&n.targets[0], &n.targets[1]);
        assert_eq!(a.path, "config.targets[0]");
        assert_eq!(a.leaf, Some(Leaf::VirtualKey("vk-1".into())));
        assert_eq!(a.override_params["model"], json!("b"));
        assert_eq!(a.override_params["temperature"], json!(0));
        assert_eq!(a.custom_host.as_deref(), Some("http://mock/v1"));
        assert_eq!(
            a.retry.as_ref().unwrap().on_status_codes,
            DEFAULT_RETRY_CODES.to_vec()
        );
        assert_eq!(b.leaf, Some(Leaf::Provider("team".into())));
        assert_eq!(b.override_params["model"], json!("a"));
        assert_eq!(
            b.retry,
            Some(Retry {
                attempts: 2,
                on_status_codes: vec![429]
            })
        );
        assert_eq!(b.custom_host, None);
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
                json!({"virtual_key":"a","custom_host":"ftp://x"}),
                "custom_host",
            ),
            (json!("pc-1"), "must be an object"),
        ] {
            let e = Node::parse(&bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
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
