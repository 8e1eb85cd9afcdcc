//! The layers: defaults < `tollgate.toml` (or `--config`) < `TOLLGATE_*` environment < flags.

use std::path::Path;

use super::{Settings, SettingsError};

impl Settings {
    /// Loads the layers. `file` is the explicit `--config`; otherwise `./tollgate.toml` if present.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &[(&str, Option<String>)],
    ) -> Result<Settings, SettingsError> {
        let mut s = Settings::default();
        let default_file = Path::new("tollgate.toml");
        let file = file.or_else(|| default_file.exists().then_some(default_file));
        if let Some(path) = file {
            s.merge_file(path)?;
        }
        for (k, v) in env {
            if let Some(name) = k.strip_prefix("TOLLGATE_") {
                let name = name.to_ascii_lowercase();
                s.set(&name, &v).map_err(|e| match e {
                    SettingsError::Unknown(_) => SettingsError::Unknown(k.clone()),
                    SettingsError::Invalid { reason, .. } => SettingsError::Invalid {
                        name: k.clone(),
                        reason,
                    },
                    other => other,
                })?;
            }
        }
        for (name, value) in flags {
            if let Some(v) = value {
                s.set(name, v)?;
            }
        }
        Ok(s)
    }

    fn merge_file(&mut self, path: &Path) -> Result<(), SettingsError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::File {
            path: shown.clone(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|source| SettingsError::Toml {
            path: shown.clone(),
            source: Box::new(source),
        })?;
        for (k, v) in table {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                other => {
                    return Err(SettingsError::Invalid {
                        name: k,
                        reason: format!("unsupported value {other}"),
                    })
                }
            };
            self.set(&k, &text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::settings::tests::env;
    use crate::settings::LogFormat;

    #[test]
    fn layers_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:1\"\nmax_body_bytes = 2048\nlog_format = \"json\"\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&f),
            env(&[("TOLLGATE_LISTEN", "127.0.0.1:2"), ("PATH", "/bin")]),
            &[("data_dir", Some("/tmp/x".into())), ("listen", None)],
        )
        .unwrap();
        assert_eq!(s.listen.port(), 2);
        assert_eq!(s.max_body_bytes, 2048);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_and_invalid_settings_are_named() {
        let e = Settings::load(None, env(&[("TOLLGATE_LISTN", "x")]), &[]).unwrap_err();
        assert_eq!(e.to_string(), "unknown setting TOLLGATE_LISTN");
        let e = Settings::load(None, env(&[("TOLLGATE_MAX_BODY_BYTES", "lots")]), &[]).unwrap_err();
        assert!(e.to_string().contains("TOLLGATE_MAX_BODY_BYTES"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(&f, "lisen = \"x\"\n").unwrap();
        assert_eq!(
            Settings::load(Some(&f), env(&[]), &[])
                .unwrap_err()
                .to_string(),
            "unknown setting lisen"
        );
    }
}
