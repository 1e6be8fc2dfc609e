//! Secrets and configs a task mounts as files: how a spec names them and
//! where they go.
//!
//! A secret or config is stored in the cluster under a name; a task lists
//! the ones it needs ([`FileMount`]) and its node is given them with the
//! task. Names become file names (`/run/secrets/NAME`,
//! `$BATON_SECRETS_DIR/NAME`), so they are plain: no `/`, never `.` or `..`.

use serde::{Deserialize, Serialize};

/// Largest secret or config value, in bytes (as Docker's 500 KiB).
pub const MAX_FILE_BYTES: usize = 500 * 1024;

/// Most secrets (and, separately, configs) one task may mount.
pub const MAX_TASK_FILES: usize = 64;

/// Longest secret or config name.
pub const MAX_FILE_NAME_LEN: usize = 64;

/// Secrets or configs: the two kinds of files a task mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Kept encrypted, never shown, given only to nodes running a task that uses it.
    Secret,
    /// Configuration: may be shown, given the same way.
    Config,
}

impl FileKind {
    /// `secret` or `config`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }

    /// Where an isolated task finds one by default: `/run/secrets/NAME`,
    /// `/run/configs/NAME`.
    pub fn default_target(self, name: &str) -> String {
        format!("{}/{name}", self.default_dir())
    }

    /// The default directory of targets.
    pub fn default_dir(self) -> &'static str {
        match self {
            FileKind::Secret => "/run/secrets",
            FileKind::Config => "/run/configs",
        }
    }

    /// The mode a file gets when the spec does not say: owner-read-only for a
    /// secret, world-readable for a config.
    pub fn default_mode(self) -> u32 {
        match self {
            FileKind::Secret => 0o400,
            FileKind::Config => 0o444,
        }
    }

    /// The variable that tells a raw task where its files are.
    pub fn dir_env(self) -> &'static str {
        match self {
            FileKind::Secret => "BATON_SECRETS_DIR",
            FileKind::Config => "BATON_CONFIGS_DIR",
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One secret or config a task mounts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMount {
    /// The secret's or config's name in the cluster.
    pub name: String,
    /// Absolute path inside the task. `None` for raw tasks, which find the
    /// file as `NAME` in the directory named by `$BATON_SECRETS_DIR` (or
    /// `$BATON_CONFIGS_DIR`).
    pub target: Option<String>,
    /// File mode (permission bits only).
    pub mode: u32,
    /// Owner; the task's user when `None`.
    pub uid: Option<u32>,
}

/// What is wrong with a secret or config name, if anything: 1 to 64 of
/// letters, digits, `.`, `_` and `-`, starting with a letter or digit.
pub fn file_name_problem(name: &str) -> Option<String> {
    let valid = (1..=MAX_FILE_NAME_LEN).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    (!valid).then(|| {
        format!(
            "is not a valid name (expected 1 to {MAX_FILE_NAME_LEN} letters, digits, '.', '_' \
             or '-', starting with a letter or digit)"
        )
    })
}

/// What is wrong with a value's size, if anything.
pub fn file_size_problem(len: usize) -> Option<String> {
    (len > MAX_FILE_BYTES)
        .then(|| format!("is {len} bytes, more than the limit of {MAX_FILE_BYTES} bytes (500 KiB)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names() {
        for good in ["db", "db.password", "tls_key-2", "A1", &"x".repeat(64)] {
            assert_eq!(file_name_problem(good), None, "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(file_name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn the_size_limit_is_stated() {
        assert_eq!(file_size_problem(MAX_FILE_BYTES), None);
        let problem = file_size_problem(MAX_FILE_BYTES + 1).expect("too big");
        assert!(problem.contains("512001 bytes"), "{problem}");
        assert!(problem.contains("500 KiB"), "{problem}");
    }

    #[test]
    fn defaults_by_kind() {
        assert_eq!(FileKind::Secret.default_target("db"), "/run/secrets/db");
        assert_eq!(FileKind::Config.default_target("app"), "/run/configs/app");
        assert_eq!(FileKind::Secret.default_mode(), 0o400);
        assert_eq!(FileKind::Config.default_mode(), 0o444);
    }
}
