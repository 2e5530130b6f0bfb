//! The hub id: configured, or generated once and kept in
//! `<data_dir>/hub_id`, so a hub is the same hub to its peers across
//! restarts (their duplicate filters and advertised routes key on it).

use std::io::Write;

use super::config::FederationConfig;
use super::config::valid_hub_id;
use crate::error::ConfigError;

fn invalid(problem: String) -> ConfigError {
    ConfigError::Invalid {
        key: "data_dir".into(),
        problem,
    }
}

/// `federation.hub_id`, else the id in `<data_dir>/hub_id`, created (a
/// random UUID) the first time.
pub(crate) fn load_or_create_hub_id(
    config: &FederationConfig,
    data_dir: &std::path::Path,
) -> Result<String, ConfigError> {
    if let Some(id) = &config.hub_id {
        return Ok(id.clone());
    }
    let dir = data_dir;
    let path = dir.join("hub_id");
    let read = |path: &std::path::Path| -> Result<String, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
        let id = text.trim().to_string();
        if !valid_hub_id(&id) {
            return Err(invalid(format!("{} holds no valid hub id", path.display())));
        }
        Ok(id)
    };
    if path.exists() {
        return read(&path);
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| invalid(format!("cannot create {}: {e}", dir.display())))?;
    let id = uuid::Uuid::new_v4().to_string();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(id.as_bytes())
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            tracing::info!(hub_id = %id, path = %path.display(), "generated a hub id");
            Ok(id)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path),
        Err(e) => Err(invalid(format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = FederationConfig::default();
        let first = load_or_create_hub_id(&config, dir.path()).expect("created");
        assert_eq!(
            load_or_create_hub_id(&config, dir.path()).expect("read"),
            first
        );
        config.hub_id = Some("fixed".into());
        assert_eq!(
            load_or_create_hub_id(&config, dir.path()).expect("configured"),
            "fixed"
        );
    }
}
