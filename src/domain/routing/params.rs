//! Inherited `override_params` without copies. Each config node that sets `override_params` adds
//! one layer holding only its own keys over its parent's (shared, reference-counted) layers, so a
//! large object at the root is stored once however many targets inherit it: memory is linear in
//! the config's size, never in size × targets.

use std::sync::Arc;

use serde_json::{Map, Value};

/// The effective `override_params` of a node: its own keys over its ancestors' (a child wins).
#[derive(Clone, Debug, Default)]
pub struct Params(Option<Arc<Layer>>);

#[derive(Debug)]
struct Layer {
    own: Map<String, Value>,
    parent: Params,
}

impl Params {
    /// These params with `own` laid over them; no new layer when `own` is empty.
    pub fn with(&self, own: Map<String, Value>) -> Params {
        if own.is_empty() {
            return self.clone();
        }
        Params(Some(Arc::new(Layer {
            own,
            parent: self.clone(),
        })))
    }

    /// The innermost value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.layers().find_map(|l| l.own.get(key))
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Every effective key once, with its innermost value (innermost layer's keys first).
    pub fn entries(&self) -> Vec<(&String, &Value)> {
        let layers: Vec<&Layer> = self.layers().collect();
        let mut out = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            for (k, v) in &layer.own {
                if !layers[..i].iter().any(|inner| inner.own.contains_key(k)) {
                    out.push((k, v));
                }
            }
        }
        out
    }

    /// Innermost first.
    fn layers(&self) -> impl Iterator<Item = &Layer> {
        std::iter::successors(self.0.as_deref(), |l| l.parent.0.as_deref())
    }

    /// Whether two params share their storage (tests: inheritance must not copy).
    pub fn shares_with(&self, other: &Params) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl From<Map<String, Value>> for Params {
    fn from(own: Map<String, Value>) -> Self {
        Params::default().with(own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn child_keys_win_and_each_key_appears_once() {
        let root = Params::from(map(json!({"model": "a", "temperature": 0})));
        let child = root.with(map(json!({"model": "b", "max_tokens": 5})));
        assert_eq!(child.get("model"), Some(&json!("b")));
        assert_eq!(child.get("temperature"), Some(&json!(0)));
        assert_eq!(root.get("max_tokens"), None);
        let mut keys: Vec<_> = child
            .entries()
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            keys,
            vec![
                ("max_tokens".into(), json!(5)),
                ("model".into(), json!("b")),
                ("temperature".into(), json!(0))
            ]
        );
    }

    #[test]
    fn an_empty_layer_shares_its_parent() {
        let root = Params::from(map(json!({"big": "x".repeat(1000)})));
        assert!(root.with(Map::new()).shares_with(&root));
        assert!(Params::default().is_empty());
        assert!(Params::default().with(Map::new()).is_empty());
    }
}
