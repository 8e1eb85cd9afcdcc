//! Pagination of list endpoints.

use serde_json::Value;

use super::body::invalid;
use super::Result;

/// Pagination from `current_page`/`currentPage` and `page_size`/`pageSize` (zero-based pages).
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub current: usize,
    pub size: usize,
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
        Ok(Page { current, size })
    }

    /// `{object:"list", total, data}` for a page of `items`.
    pub fn list(&self, items: Vec<Value>) -> Value {
        let total = items.len();
        let data: Vec<Value> = items
            .into_iter()
            .skip(self.current.saturating_mul(self.size))
            .take(self.size)
            .collect();
        serde_json::json!({"object": "list", "total": total, "data": data})
    }

    /// [`Page::list`] of `items`, each shown by `view`.
    pub fn render<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        view: impl FnMut(T) -> Value,
    ) -> Value {
        self.list(items.into_iter().map(view).collect())
    }
}
