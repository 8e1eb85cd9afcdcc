//! Slugs (user-chosen and generated) and new ids.

use rand::Rng;

use super::body::invalid;
use super::Result;

/// Checks a user-chosen slug (`^[a-zA-Z0-9_-]+$`, at most 100 characters).
pub fn check_slug(slug: &str) -> Result<()> {
    let ok = !slug.is_empty()
        && slug.len() <= 100
        && slug
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then_some(())
        .ok_or_else(|| invalid(format!("slug {slug:?} must match ^[a-zA-Z0-9_-]+$")))
}

/// Checks a slug chosen for a new integration or provider: the shape of [`check_slug`], and
/// never an id (`taken_as_id`: an existing object has it as its id) nor shaped like one (a
/// UUID): lookups take ids first, and a slug must not stand for another object.
pub fn check_new_slug(slug: &str, taken_as_id: bool) -> Result<()> {
    check_slug(slug)?;
    if taken_as_id || uuid::Uuid::try_parse(slug).is_ok() {
        return Err(invalid(format!(
            "slug {slug:?} is shaped like an id, or is one: choose a name"
        )));
    }
    Ok(())
}

/// A readable unique slug: `prefix` + the name's letters and digits + a random suffix.
pub fn make_slug(prefix: &str, name: &str) -> String {
    let base: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let base: String = base.chars().take(40).collect();
    let suffix: String = (0..6)
        .map(|_| {
            char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rand::thread_rng().gen_range(0..36)])
        })
        .collect();
    match (prefix.is_empty(), base.is_empty()) {
        (true, true) => suffix,
        (true, false) => format!("{base}-{suffix}"),
        (false, true) => format!("{prefix}{suffix}"),
        (false, false) => format!("{prefix}{base}-{suffix}"),
    }
}

/// A new random id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        let s = make_slug("ws-", "Team Alpha!");
        assert!(s.starts_with("ws-team-alpha-"), "{s}");
        assert!(check_slug(&s).is_ok());
        assert!(check_slug("bad slug").is_err());
        assert!(check_slug("").is_err());
        assert!(make_slug("pc-", "").starts_with("pc-"));
    }
}
