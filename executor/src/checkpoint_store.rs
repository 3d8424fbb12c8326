//! Checkpoints kept in files, one per partition, for pipelines run on one node.

use std::path::{Path, PathBuf};

use mirador_actors::{CheckpointStore, Position};

pub struct FileCheckpointStore {
    dir: PathBuf,
    pipeline: String,
}

impl FileCheckpointStore {
    pub fn new(dir: &Path, pipeline: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(FileCheckpointStore {
            dir: dir.to_path_buf(),
            pipeline: pipeline.to_string(),
        })
    }

    pub fn path(&self, partition: u32) -> PathBuf {
        self.dir
            .join(format!("{}.p{partition}.json", self.pipeline))
    }
}

impl CheckpointStore for FileCheckpointStore {
    fn load(&self, partition: u32) -> std::io::Result<Option<Position>> {
        let path = self.path(partition);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Position>(&bytes)
                .map(Some)
                .map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("checkpoint {} is unreadable: {e}", path.display()),
                    )
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a temporary file and renames it over the old one, so that a crash leaves
    /// either the old checkpoint or the new one.
    fn save(&self, position: Position) -> std::io::Result<()> {
        let path = self.path(position.partition);
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_vec(&position)?)?;
        std::fs::rename(&temporary, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_per_partition() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileCheckpointStore::new(dir.path(), "demo").unwrap();
        assert_eq!(store.load(1).unwrap(), None);
        let position = Position {
            partition: 1,
            offset: 42,
        };
        store.save(position).unwrap();
        assert_eq!(store.load(1).unwrap(), Some(position));
        assert_eq!(store.load(0).unwrap(), None);
        std::fs::write(store.path(0), b"{garbage").unwrap();
        assert!(
            store.load(0).is_err(),
            "a corrupt checkpoint is an error, never a silent restart"
        );
    }
}
