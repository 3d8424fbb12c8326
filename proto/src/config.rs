//! Node config files: YAML read into a node's settings, for coordinators and executors
//! alike (flags win over the file; that merge is each node's own).

use std::path::Path;

use serde::Deserialize;

/// A YAML config file into `T` (its defaults when there is no file); errors name the file
/// and the field.
pub fn read_config_file<T: for<'de> Deserialize<'de> + Default>(
    path: Option<&Path>,
) -> Result<T, String> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config: {}: {e}", path.display()))?;
    let deserializer = serde_yaml_ng::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(deserializer)
        .map_err(|e| format!("{}: {}: {}", path.display(), e.path(), e.inner()))
}
