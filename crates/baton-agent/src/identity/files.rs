//! The identity directory, `data_dir/identity/`, and the order its files are
//! written in so that a crash at any point leaves something a restart can use.
//!
//! - `key.pem` (0600), `cert.pem`, `root.pem`, `node-id`: written in that order
//!   at join. `node-id` comes last, so its presence means the join completed;
//!   without it the directory is treated as "not joined" and a restart joins
//!   again (overwriting the rest).
//! - `renew-key.pem` (0600): a renewal writes the new key here first, then
//!   `cert.pem`, then `key.pem`, then removes it. A crash between the
//!   certificate and the key leaves a `cert.pem` that matches `renew-key.pem`
//!   and not `key.pem`; loading finishes the renewal. A crash before the
//!   certificate leaves a stale `renew-key.pem`, which loading removes.
//!
//! `data_dir/node-id`, the file the agent reports under, is rewritten with the
//! id the cluster assigned whenever it differs.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::IdentityError;

/// Name of the identity directory inside the agent's data directory.
pub const IDENTITY_DIR: &str = "identity";

const ROOT_FILE: &str = "root.pem";
const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
const RENEW_KEY_FILE: &str = "renew-key.pem";
const NODE_ID_FILE: &str = "node-id";
/// The agent's own node id file, in the data directory (see `records.rs`).
const AGENT_NODE_ID_FILE: &str = "node-id";

/// Modes: secrets are for the agent's user only.
const SECRET_MODE: u32 = 0o600;
const PUBLIC_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// The paths of one node's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdentityFiles {
    data_dir: PathBuf,
    dir: PathBuf,
}

/// What a completed join left on disk.
pub(crate) struct Stored {
    pub root_pem: String,
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
    /// A key left by an interrupted renewal, if any.
    pub renew_key_pem: Option<Zeroizing<String>>,
    pub node_id: String,
}

impl IdentityFiles {
    pub(crate) fn new(data_dir: &Path) -> IdentityFiles {
        IdentityFiles {
            data_dir: data_dir.to_owned(),
            dir: data_dir.join(IDENTITY_DIR),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT_FILE)
    }

    pub(crate) fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    pub(crate) fn root_path(&self) -> PathBuf {
        self.dir.join(ROOT_FILE)
    }

    pub(crate) fn node_id_path(&self) -> PathBuf {
        self.dir.join(NODE_ID_FILE)
    }

    fn renew_key_path(&self) -> PathBuf {
        self.dir.join(RENEW_KEY_FILE)
    }

    /// The stored identity, or `None` if no join completed here.
    pub(crate) fn load(&self) -> Result<Option<Stored>, IdentityError> {
        let Some(node_id) = read_optional(&self.node_id_path())? else {
            return Ok(None);
        };
        let read_required = |path: PathBuf| -> Result<String, IdentityError> {
            read_optional(&path)?.ok_or(IdentityError::Missing { path })
        };
        Ok(Some(Stored {
            root_pem: read_required(self.root_path())?,
            cert_pem: read_required(self.cert_path())?,
            key_pem: Zeroizing::new(read_required(self.key_path())?),
            renew_key_pem: read_optional(&self.renew_key_path())?.map(Zeroizing::new),
            node_id: node_id.trim().to_owned(),
        }))
    }

    /// Writes a fresh join: key, certificate, root, then the node id that
    /// marks it complete, then the agent's node id.
    pub(crate) fn write_joined(
        &self,
        key_pem: &str,
        cert_pem: &str,
        root_pem: &str,
        node_id: &str,
    ) -> Result<(), IdentityError> {
        fs::create_dir_all(&self.dir).map_err(|e| IdentityError::io("create", &self.dir, e))?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| IdentityError::io("set permissions of", &self.dir, e))?;
        self.remove_renew_key()?;
        write(&self.key_path(), key_pem.as_bytes(), SECRET_MODE)?;
        write(&self.cert_path(), cert_pem.as_bytes(), PUBLIC_MODE)?;
        write(&self.root_path(), root_pem.as_bytes(), PUBLIC_MODE)?;
        write(
            &self.node_id_path(),
            format!("{node_id}\n").as_bytes(),
            PUBLIC_MODE,
        )?;
        self.sync_agent_node_id(node_id)
    }

    /// Replaces the stored roots (a root CA rotation).
    pub(crate) fn write_root(&self, root_pem: &str) -> Result<(), IdentityError> {
        write(&self.root_path(), root_pem.as_bytes(), PUBLIC_MODE)
    }

    /// Writes a renewed key and certificate (see the module doc for the order).
    pub(crate) fn write_renewed(&self, key_pem: &str, cert_pem: &str) -> Result<(), IdentityError> {
        write(&self.renew_key_path(), key_pem.as_bytes(), SECRET_MODE)?;
        write(&self.cert_path(), cert_pem.as_bytes(), PUBLIC_MODE)?;
        self.finish_renewal(key_pem)
    }

    /// The last steps of a renewal whose certificate is already written.
    pub(crate) fn finish_renewal(&self, key_pem: &str) -> Result<(), IdentityError> {
        write(&self.key_path(), key_pem.as_bytes(), SECRET_MODE)?;
        self.remove_renew_key()
    }

    /// Removes a key left by an interrupted renewal.
    pub(crate) fn remove_renew_key(&self) -> Result<(), IdentityError> {
        let path = self.renew_key_path();
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(IdentityError::io("remove", &path, e)),
        }
    }

    /// Makes `data_dir/node-id` (what the agent reports under) say `node_id`.
    pub(crate) fn sync_agent_node_id(&self, node_id: &str) -> Result<(), IdentityError> {
        let path = self.data_dir.join(AGENT_NODE_ID_FILE);
        let current = read_optional(&path)?;
        if current.as_deref().map(str::trim) == Some(node_id) {
            return Ok(());
        }
        if let Some(previous) = current {
            tracing::info!(
                previous = previous.trim(),
                node_id,
                "the cluster assigned this node a new id"
            );
        }
        write(&path, format!("{node_id}\n").as_bytes(), PUBLIC_MODE)
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, IdentityError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IdentityError::io("read", path, e)),
    }
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    baton_files::write_atomic(path, bytes, mode).map_err(|e| IdentityError::io("write", path, e))
}
