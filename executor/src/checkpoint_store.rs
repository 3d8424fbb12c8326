//! Checkpoints kept in files, one per partition, for pipelines run on one node.
//!
//! A run holds `<dir>/<pipeline>.lock` while it lives: a second run of the same pipeline
//! on the same directory is refused at start instead of processing everything twice.

use std::path::{Path, PathBuf};

use mirador_actors::{CheckpointStore, Position};
use mirador_proto::lock::DirLock;

pub struct FileCheckpointStore {
    dir: PathBuf,
    pipeline: String,
    _lock: DirLock,
}

impl FileCheckpointStore {
    /// Opens the checkpoints of `pipeline` in `dir`, creating it, and locks them.
    pub fn new(dir: &Path, pipeline: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let lock = DirLock::acquire(dir, &format!("{pipeline}.lock"))
            .map_err(|e| anyhow::anyhow!("pipeline {pipeline} is already running: {e}"))?;
        Ok(FileCheckpointStore {
            dir: dir.to_path_buf(),
            pipeline: pipeline.to_string(),
            _lock: lock,
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
    /// either the old checkpoint or the new one. A directory removed during the run is
    /// created again.
    fn save(&self, position: Position) -> std::io::Result<()> {
        let path = self.path(position.partition);
        let temporary = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&position)?;
        let write = || {
            std::fs::write(&temporary, &bytes)?;
            std::fs::rename(&temporary, &path)
        };
        write()
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&self.dir)?;
                    write()
                }
                _ => Err(e),
            })
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
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

    #[test]
    fn a_directory_removed_during_the_run_is_created_again_at_the_next_save() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = dir.path().join("checkpoints");
        let store = FileCheckpointStore::new(&checkpoints, "demo").unwrap();
        std::fs::remove_dir_all(&checkpoints).unwrap();
        let position = Position {
            partition: 0,
            offset: 7,
        };
        store.save(position).unwrap();
        assert_eq!(store.load(0).unwrap(), Some(position));
    }

    #[test]
    fn a_second_store_of_one_pipeline_and_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = FileCheckpointStore::new(dir.path(), "demo").unwrap();
        let error = FileCheckpointStore::new(dir.path(), "demo")
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("demo.lock"), "{error}");
        assert!(error.contains(&std::process::id().to_string()), "{error}");
        FileCheckpointStore::new(dir.path(), "other").expect("another pipeline may share it");
    }
}
