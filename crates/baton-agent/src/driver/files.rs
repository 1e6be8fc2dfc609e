//! A task's secrets and configs on this node: picked from what the node was
//! sent, written into a tmpfs of the task's own, and gone with the task.
//!
//! The node keeps the values it was sent in memory only ([`NodeFiles`],
//! replaced by every assignment set, so a value no live task of the node
//! uses is dropped and wiped). When a task that uses some starts, its driver
//! mounts a tmpfs for it ([`RunDir`]: `data_dir/run/<task>`, never on disk),
//! writes each file there with its mode and owner, and mounts the files
//! read-only at their targets (exec, docker), or tells a raw task the
//! directories (`BATON_SECRETS_DIR`, `BATON_CONFIGS_DIR`). When the task's
//! handle goes, the tmpfs is unmounted. An agent that starts unmounts
//! whatever an earlier one left ([`sweep`]): its tasks are gone by then.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use baton_spec::{FileKind, FileMount, TaskSpec};
use baton_state::SecretBytes;
use nix::mount::{MntFlags, MsFlags};

use crate::error::{AgentError, describe_io};

/// The secret and config values this node was sent, by name: only those its
/// live tasks use. Memory only.
#[derive(Default)]
pub struct NodeFiles {
    /// Secrets.
    pub secrets: BTreeMap<String, SecretBytes>,
    /// Configs.
    pub configs: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for NodeFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeFiles")
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("configs", &self.configs.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One file a task mounts, with its value (redacted in `Debug`).
#[derive(Clone, Debug)]
pub struct TaskFile {
    /// Secret or config.
    pub kind: FileKind,
    /// Where and how the spec wants it.
    pub mount: FileMount,
    /// The value (a config's too, wiped all the same).
    pub value: SecretBytes,
}

/// The secrets and configs one task uses, with their values.
#[derive(Clone, Default)]
pub struct TaskFiles {
    /// Files, secrets first.
    pub files: Vec<TaskFile>,
    /// Environment variables from secrets: name -> value.
    pub env: Vec<(String, SecretBytes)>,
}

impl fmt::Debug for TaskFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskFiles")
            .field(
                "files",
                &self
                    .files
                    .iter()
                    .map(|file| (file.kind, &file.mount.name))
                    .collect::<Vec<_>>(),
            )
            .field(
                "env",
                &self.env.iter().map(|(var, _)| var).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TaskFiles {
    /// The values `spec` names, from what the node was sent. A name the node
    /// was not sent is an error (the manager sends them with the task).
    pub fn pick(spec: &TaskSpec, node: &NodeFiles) -> Result<TaskFiles, AgentError> {
        let missing = |kind: FileKind, name: &str| AgentError::StartFailed {
            what: format!("{kind} {name}"),
            reason: "it was not sent with the task".to_owned(),
        };
        let mut files = Vec::new();
        for mount in &spec.secrets {
            let value = node
                .secrets
                .get(&mount.name)
                .ok_or_else(|| missing(FileKind::Secret, &mount.name))?;
            files.push(TaskFile {
                kind: FileKind::Secret,
                mount: mount.clone(),
                value: value.clone(),
            });
        }
        for mount in &spec.configs {
            let value = node
                .configs
                .get(&mount.name)
                .ok_or_else(|| missing(FileKind::Config, &mount.name))?;
            files.push(TaskFile {
                kind: FileKind::Config,
                mount: mount.clone(),
                value: SecretBytes::new(value.clone()),
            });
        }
        let mut env = Vec::new();
        for (var, name) in &spec.env_secrets {
            let value = node
                .secrets
                .get(name)
                .ok_or_else(|| missing(FileKind::Secret, name))?;
            env.push((var.clone(), value.clone()));
        }
        Ok(TaskFiles { files, env })
    }

    /// The environment variables from secrets, as text. A value that is not
    /// UTF-8, or holds a NUL byte, cannot be a variable (the error names the
    /// variable, never the value).
    pub fn env_text(&self) -> Result<Vec<(String, String)>, AgentError> {
        self.env
            .iter()
            .map(|(var, value)| {
                std::str::from_utf8(value.expose())
                    .ok()
                    .filter(|text| !text.contains('\0'))
                    .map(|text| (var.clone(), text.to_owned()))
                    .ok_or_else(|| AgentError::StartFailed {
                        what: format!("environment variable {var}"),
                        reason: "its secret is not UTF-8 text without NUL bytes \
                                 (mount it as a file instead)"
                            .to_owned(),
                    })
            })
            .collect()
    }

    /// Total size of the files' values.
    fn bytes(&self) -> u64 {
        self.files.iter().map(|file| file.value.len() as u64).sum()
    }
}

/// A file written in a [`RunDir`], to be mounted at `target` in the task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileBind {
    /// The file on the host (in the tmpfs).
    pub source: PathBuf,
    /// Where the task sees it.
    pub target: String,
}

/// A task's own tmpfs on the host, unmounted (and its mount point removed)
/// when dropped.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

/// Room a tmpfs gets beyond its files: directories, an exec task's bundle.
const RUN_DIR_SLACK: u64 = 1 << 20;

impl RunDir {
    /// Mounts a tmpfs at `path` (made, 0700, under a root-owned 0711 parent),
    /// sized for `files` plus slack: `nosuid`, `nodev`, `noexec`. With
    /// `owner`, the tmpfs root belongs to that uid and gid (a raw task reads
    /// its files through it); otherwise to root.
    pub fn mount(
        path: &Path,
        files: &TaskFiles,
        owner: Option<(u32, u32)>,
    ) -> Result<RunDir, AgentError> {
        let failed = |what: &str, e: std::io::Error| AgentError::StartFailed {
            what: format!("{what} {}", path.display()),
            reason: describe_io(&e),
        };
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .map_err(|e| failed("cannot make", e))?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| failed("cannot restrict", e))?;
        }
        // A leftover of this task (an agent that died mid-start) goes first.
        let _ = unmount(path);
        let _ = std::fs::remove_dir_all(path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(|e| failed("cannot make", e))?;
        let size = files.bytes() + 4096 * files.files.len() as u64 + RUN_DIR_SLACK;
        let (uid, gid) = owner.unwrap_or((0, 0));
        let options = format!("size={size},mode=0700,uid={uid},gid={gid}");
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(options.as_str()),
        )
        .map_err(|e| failed("cannot mount a tmpfs at", std::io::Error::from(e)))?;
        Ok(RunDir {
            path: path.to_owned(),
        })
    }

    /// The tmpfs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory of files of `kind` (`secrets`, `configs`).
    pub fn dir(&self, kind: FileKind) -> PathBuf {
        self.path.join(match kind {
            FileKind::Secret => "secrets",
            FileKind::Config => "configs",
        })
    }

    /// Writes every file as `<kind>s/NAME` with its mode, owned by its
    /// `uid` or else `owner`, in directories owned by `dir_owner` (0500).
    /// Returns where each goes in the task (raw tasks: none).
    pub fn write(
        &self,
        files: &TaskFiles,
        owner: (u32, u32),
        dir_owner: (u32, u32),
    ) -> Result<Vec<FileBind>, AgentError> {
        let mut binds = Vec::new();
        for kind in [FileKind::Secret, FileKind::Config] {
            let of_kind: Vec<&TaskFile> = files.files.iter().filter(|f| f.kind == kind).collect();
            if of_kind.is_empty() {
                continue;
            }
            let dir = self.dir(kind);
            write_dir(&dir, dir_owner).map_err(|e| AgentError::StartFailed {
                what: format!("cannot make {}", dir.display()),
                reason: describe_io(&e),
            })?;
            for file in of_kind {
                let path = dir.join(&file.mount.name);
                let uid = file.mount.uid.unwrap_or(owner.0);
                write_file(&path, file.value.expose(), file.mount.mode, uid, owner.1).map_err(
                    |e| AgentError::StartFailed {
                        what: format!("{kind} {}", file.mount.name),
                        reason: describe_io(&e),
                    },
                )?;
                if let Some(target) = &file.mount.target {
                    binds.push(FileBind {
                        source: path,
                        target: target.clone(),
                    });
                }
            }
        }
        Ok(binds)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot unmount a task's tmpfs");
            return;
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn write_dir(dir: &Path, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o500).create(dir)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500))
}

fn write_file(path: &Path, value: &[u8], mode: u32, uid: u32, gid: u32) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(value)?;
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Detaches the mount at `path`; not being a mount point is fine.
fn unmount(path: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// At agent start: unmounts and removes every task tmpfs under `root` an
/// earlier agent left (its tasks are gone: exec tasks die with their
/// agent, containers and raw processes are ended by recovery first).
pub fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match unmount(&path) {
            Ok(()) => {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a task's run directory");
                }
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot unmount a task's tmpfs");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with_files() -> TaskSpec {
        let mut spec = baton_testkit::service("web", 1).task;
        spec.secrets = vec![FileMount {
            name: "db".to_owned(),
            target: Some("/run/secrets/db".to_owned()),
            mode: 0o440,
            uid: Some(1234),
        }];
        spec.configs = vec![FileMount {
            name: "app".to_owned(),
            target: None,
            mode: 0o444,
            uid: None,
        }];
        spec.env_secrets = BTreeMap::from([("DB".to_owned(), "db".to_owned())]);
        spec
    }

    fn node_files() -> NodeFiles {
        NodeFiles {
            secrets: BTreeMap::from([("db".to_owned(), SecretBytes::new(b"hunter2".to_vec()))]),
            configs: BTreeMap::from([("app".to_owned(), b"port: 80\n".to_vec())]),
        }
    }

    #[test]
    fn a_task_gets_exactly_what_it_names_and_debug_shows_no_value() {
        let files = TaskFiles::pick(&spec_with_files(), &node_files()).expect("pick");
        assert_eq!(files.files.len(), 2);
        assert_eq!(
            files.env_text().expect("text"),
            [("DB".to_owned(), "hunter2".to_owned())]
        );
        let debug = format!("{files:?} {:?}", node_files());
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("port: 80"), "{debug}");

        let mut spec = spec_with_files();
        spec.env_secrets
            .insert("OTHER".to_owned(), "absent".to_owned());
        let error = TaskFiles::pick(&spec, &node_files()).expect_err("missing");
        assert_eq!(
            error.to_string(),
            "start failed: secret absent: it was not sent with the task"
        );
    }

    #[test]
    fn a_binary_secret_is_refused_as_a_variable_without_showing_it() {
        let mut node = node_files();
        node.secrets
            .insert("db".to_owned(), SecretBytes::new(b"\xffsecret\0".to_vec()));
        let files = TaskFiles::pick(&spec_with_files(), &node).expect("pick");
        let error = files.env_text().expect_err("binary");
        assert!(
            error.to_string().contains("environment variable DB"),
            "{error}"
        );
        assert!(!error.to_string().contains("secret\0"));
    }

    /// Mounting needs root (the agent always is, for isolated drivers).
    #[test]
    fn files_live_in_a_tmpfs_that_goes_with_the_run_dir() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run").join("web.0.abc");
        let files = TaskFiles::pick(&spec_with_files(), &node_files()).expect("pick");
        let run = RunDir::mount(&path, &files, None).expect("mount");
        let binds = run.write(&files, (4321, 4321), (0, 0)).expect("write");
        assert_eq!(
            binds,
            [FileBind {
                source: path.join("secrets/db"),
                target: "/run/secrets/db".to_owned(),
            }]
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(path.to_str().expect("utf-8")))
            .expect("mounted");
        assert!(line.contains(" - tmpfs "), "{line}");
        use std::os::unix::fs::MetadataExt;
        let secret = std::fs::metadata(path.join("secrets/db")).expect("secret");
        assert_eq!(
            (secret.mode() & 0o777, secret.uid(), secret.gid()),
            (0o440, 1234, 4321)
        );
        let config = std::fs::metadata(path.join("configs/app")).expect("config");
        assert_eq!((config.mode() & 0o777, config.uid()), (0o444, 4321));
        assert_eq!(
            std::fs::read(path.join("secrets/db")).expect("read"),
            b"hunter2"
        );
        drop(run);
        assert!(!path.exists(), "unmounted and removed");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mountinfo.contains(path.to_str().expect("utf-8")));

        // What an agent killed mid-run leaves is swept by the next one.
        let left = RunDir::mount(&path, &files, None).expect("mount");
        std::mem::forget(left);
        sweep(&dir.path().join("run"));
        assert!(!path.exists());
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mountinfo.contains(path.to_str().expect("utf-8")));
    }
}
