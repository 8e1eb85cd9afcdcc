//! Pagination of list endpoints.

use serde_json::Value;

use super::body::invalid;
use super::Result;

/// Pagination from `current_page`/`currentPage` and `page_size`/`pageSize` (zero-based pages),
/// and the `search` text a list's items are matched against (case-insensitive, any part of a
/// name, slug or id).
#[derive(Clone, Debug)]
pub struct Page {
    pub current: usize,
    pub size: usize,
    pub search: Option<String>,
}

impl Page {
    /// The page a query asks for; `default_size` when it names none (at most 1000).
    pub fn from_query(
        q: &std::collections::HashMap<String, String>,
        default_size: usize,
    ) -> Result<Page> {
        let num = |a: &str, b: &str| -> Result<Option<usize>> {
            match q.get(a).or_else(|| q.get(b)) {
                None => Ok(None),
                Some(v) if v.is_empty() => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| invalid(format!("{a} must be a whole number"))),
            }
        };
        let current = num("current_page", "currentPage")?.unwrap_or(0);
        let size = num("page_size", "pageSize")?.unwrap_or(default_size);
        if size == 0 || size > 1000 {
            return Err(invalid("page_size must be between 1 and 1000"));
        }
        let search = q
            .get("search")
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty());
        Ok(Page {
            current,
            size,
            search,
        })
    }

    /// Whether an item with these texts (its name, slug, id...) matches the search, if any.
    pub fn matches(&self, texts: &[&str]) -> bool {
        match &self.search {
            None => true,
            Some(s) => texts.iter().any(|t| t.to_lowercase().contains(s.as_str())),
        }
    }

    /// `{object:"list", total, data}` for a page of `items`.
    pub fn list(&self, items: Vec<Value>) -> Value {
        self.render(items, |v| v)
    }

    /// [`Page::list`] of `items`, each shown by `view`: only the page's items are viewed, so a
    /// page of a long list costs what the page shows.
    pub fn render<T>(&self, items: Vec<T>, view: impl FnMut(T) -> Value) -> Value {
        let total = items.len();
        let data: Vec<Value> = items
            .into_iter()
            .skip(self.current.saturating_mul(self.size))
            .take(self.size)
            .map(view)
            .collect();
        serde_json::json!({"object": "list", "total": total, "data": data})
    }
}
