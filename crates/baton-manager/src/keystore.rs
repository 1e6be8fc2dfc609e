//! The manager's keys at rest, as SwarmKit keeps them: a data key (DEK)
//! seals the store and the secret files; a key-encryption key (KEK) wraps
//! the DEK.
//!
//! Layout of `data_dir/keys/` (the directory 0700, the files 0600, each
//! written with [`baton_files::write_atomic`]):
//! - `kek`: the KEK, 32 random bytes as one line of base64. Present only
//!   while the cluster is not autolocked: then the manager starts alone.
//! - `dek`: the DEK sealed with the key that wraps it, and which key that
//!   is: `kek_file` (the KEK beside it) or `unlock_key` (a KEK derived from
//!   the operator's [`UnlockKey`], which is never written down). A TOML
//!   document: `version = 1`, `wrapped_by`, `sealed` (base64 of the DEK
//!   sealed with the KEK, bound to `baton/keys/dek/<wrapped_by>`).
//!
//! Every change is ordered so that a crash between any two steps leaves a
//! directory that opens with the old key or the new one:
//! - creation writes `kek`, then `dek` (a `kek` without a `dek` sealed
//!   nothing yet: it is replaced);
//! - autolock ([`protect`] with an unlock key) rewraps `dek` with the unlock
//!   key, then removes `kek` (and fsyncs the directory); a `kek` left beside
//!   such a `dek` is removed when it is next opened;
//! - leaving autolock writes a fresh `kek` first, then rewraps `dek` with
//!   it: until the second write, the `kek` is a stray one and the unlock key
//!   still opens.
//!
//! A removed `kek` is unlinked, not overwritten: on journaling file systems
//! and SSDs an overwrite would not reach the old blocks either.
//!
//! [`seal_file`] and [`open_file`] keep small secret files (the node key, the
//! join tokens) sealed with the DEK, bound to their file name.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64_URL};
use baton_store::seal::{KEY_LEN, SealError, SealKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The keys directory inside a manager's data dir.
pub const KEYS_DIR: &str = "keys";
const KEK_FILE: &str = "kek";
const DEK_FILE: &str = "dek";
/// What an unlock key's text starts with.
const UNLOCK_PREFIX: &str = "BATON-UNLOCK-1-";
/// Domain label of the KEK derived from an unlock key.
const UNLOCK_KEK_LABEL: &[u8] = b"baton/unlock-key/kek/v1\0";

/// The keys directory of the manager whose data dir is `data_dir`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(KEYS_DIR)
}

/// Why the keys could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum KeystoreError {
    /// A file or directory operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A key file is unreadable or does not fit the others.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The unlock key given is not the one that locked this manager.
    #[error("wrong unlock key: it does not open this manager's data key")]
    WrongKey,
    /// The data key is wrapped by an unlock key that has not been given.
    #[error(
        "this manager is locked (autolock is on): unlock it with `baton manager unlock` and the cluster's unlock key"
    )]
    Locked,
    /// An unlock key was given to a manager that is not locked.
    #[error("this manager is not locked: its data key is wrapped by the key in {path}")]
    NotLocked {
        /// The KEK file.
        path: PathBuf,
    },
    /// A sealed file could not be opened.
    #[error("{path}: {source}")]
    Sealed {
        /// The file.
        path: PathBuf,
        /// Why.
        source: SealError,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> KeystoreError {
    let path = path.to_owned();
    move |source| KeystoreError::Io {
        action,
        path,
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> KeystoreError {
    KeystoreError::Corrupt {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// The keys a data dir gives without the operator.
#[derive(Debug)]
pub enum Keys {
    /// Not autolocked: the DEK, unwrapped with the KEK file.
    Unlocked(SealKey),
    /// Autolocked: the DEK needs the unlock key ([`unlock`]).
    Locked,
}

/// The operator's key of an autolocked cluster: 32 random bytes, shown once
/// as `BATON-UNLOCK-1-<base64url>`. The KEK is derived from it; it is never
/// stored. Its `Debug` is redacted and it has no `Display`.
#[derive(Clone)]
pub struct UnlockKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockKey(<redacted>)")
    }
}

/// Why a text is not an unlock key. The messages never repeat the text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UnlockKeyError {
    /// It does not start with the unlock key prefix.
    #[error("not an unlock key: an unlock key starts with {UNLOCK_PREFIX}")]
    Prefix,
    /// The part after the prefix is not 32 bytes of base64url.
    #[error("malformed unlock key (wrong characters or length): check that it was copied whole")]
    Malformed,
}

impl UnlockKey {
    /// A new random unlock key.
    pub fn generate() -> UnlockKey {
        UnlockKey(SealKey::generate().to_bytes())
    }

    /// Its text form, `BATON-UNLOCK-1-<base64url of the 32 bytes>`.
    pub fn format(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{UNLOCK_PREFIX}{}", BASE64_URL.encode(*self.0)))
    }

    /// Reads the text form (surrounding whitespace ignored, as a pasted or
    /// piped key carries a newline).
    pub fn parse(text: &str) -> Result<UnlockKey, UnlockKeyError> {
        let encoded = text
            .trim()
            .strip_prefix(UNLOCK_PREFIX)
            .ok_or(UnlockKeyError::Prefix)?;
        let bytes = Zeroizing::new(
            BASE64_URL
                .decode(encoded)
                .map_err(|_| UnlockKeyError::Malformed)?,
        );
        let array: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| UnlockKeyError::Malformed)?;
        Ok(UnlockKey(Zeroizing::new(array)))
    }

    /// The KEK it stands for: SHA-256 of a domain label and the key. The
    /// key is 256 random bits, so no password hashing is needed.
    fn kek(&self) -> SealKey {
        let mut input = Zeroizing::new(Vec::with_capacity(UNLOCK_KEK_LABEL.len() + KEY_LEN));
        input.extend_from_slice(UNLOCK_KEK_LABEL);
        input.extend_from_slice(self.0.as_slice());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
        SealKey::from_slice(digest.as_ref()).expect("a SHA-256 digest is 32 bytes")
    }
}

/// What wraps the DEK.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WrappedBy {
    /// The KEK in `keys/kek`.
    KekFile,
    /// The KEK derived from the operator's unlock key.
    UnlockKey,
}

impl WrappedBy {
    /// The associated data the DEK is sealed with: a DEK file relabelled
    /// with the other wrapper does not open.
    fn aad(self) -> &'static [u8] {
        match self {
            WrappedBy::KekFile => b"baton/keys/dek/kek_file",
            WrappedBy::UnlockKey => b"baton/keys/dek/unlock_key",
        }
    }
}

/// The `dek` file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DekFile {
    /// Format version (1).
    version: u32,
    /// What wraps the DEK.
    wrapped_by: WrappedBy,
    /// Base64 of the DEK sealed with the wrapping key.
    sealed: String,
}

impl DekFile {
    fn unwrap_with(&self, kek: &SealKey) -> Result<SealKey, SealError> {
        let sealed = BASE64
            .decode(&self.sealed)
            .map_err(|_| SealError::Undecryptable)?;
        let bytes = kek.open(self.wrapped_by.aad(), &sealed)?;
        SealKey::from_slice(&bytes).ok_or(SealError::Undecryptable)
    }
}

/// Creates `dir` owner-only, or makes an existing one so.
fn ensure_dir(dir: &Path) -> Result<(), KeystoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error("create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_error("restrict", dir))
}

fn read_optional(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, KeystoreError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(Zeroizing::new(bytes))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", path)(e)),
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeystoreError> {
    baton_files::write_atomic(path, bytes, 0o600).map_err(io_error("write", path))
}

fn read_kek(dir: &Path) -> Result<Option<SealKey>, KeystoreError> {
    let path = dir.join(KEK_FILE);
    let Some(text) = read_optional(&path)? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&text).map_err(|_| corrupt(&path, "not a key"))?;
    let bytes = Zeroizing::new(
        BASE64
            .decode(text.trim())
            .map_err(|_| corrupt(&path, "not a key (base64 of 32 bytes)"))?,
    );
    SealKey::from_slice(&bytes)
        .map(Some)
        .ok_or_else(|| corrupt(&path, "not a key (base64 of 32 bytes)"))
}

fn write_kek(dir: &Path, kek: &SealKey) -> Result<(), KeystoreError> {
    let text = Zeroizing::new(format!("{}\n", BASE64.encode(*kek.to_bytes())));
    write_secret(&dir.join(KEK_FILE), text.as_bytes())
}

/// Removes the KEK file, durably (the directory is fsynced).
fn remove_kek(dir: &Path) -> Result<(), KeystoreError> {
    let path = dir.join(KEK_FILE);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error("remove", &path)(e)),
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync", dir))
}

fn read_dek(dir: &Path) -> Result<Option<DekFile>, KeystoreError> {
    let path = dir.join(DEK_FILE);
    let Some(bytes) = read_optional(&path)? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| corrupt(&path, "not a data key file"))?;
    let file: DekFile = toml::from_str(text)
        .map_err(|e| corrupt(&path, format!("not a data key file: {}", e.message())))?;
    if file.version != 1 {
        return Err(corrupt(
            &path,
            format!(
                "data key file version {}, which this Baton cannot read",
                file.version
            ),
        ));
    }
    Ok(Some(file))
}

fn write_dek(
    dir: &Path,
    wrapped_by: WrappedBy,
    kek: &SealKey,
    dek: &SealKey,
) -> Result<(), KeystoreError> {
    let file = DekFile {
        version: 1,
        wrapped_by,
        sealed: BASE64.encode(kek.seal(wrapped_by.aad(), dek.to_bytes().as_slice())),
    };
    let text = toml::to_string(&file).map_err(|e| corrupt(&dir.join(DEK_FILE), e.to_string()))?;
    let text = format!("# Baton's data key, sealed with the key named below. Do not edit.\n{text}");
    write_secret(&dir.join(DEK_FILE), text.as_bytes())
}

/// Opens the keys in `dir` (see [`dir`]), creating them on first use: a
/// fresh directory gets a KEK file and a new DEK wrapped by it. A DEK
/// wrapped by an unlock key is [`Keys::Locked`] (a KEK file left beside it
/// by a crash is removed).
pub fn open_or_create(dir: &Path) -> Result<Keys, KeystoreError> {
    ensure_dir(dir)?;
    let dek_path = dir.join(DEK_FILE);
    let Some(file) = read_dek(dir)? else {
        // Nothing was ever sealed without a DEK file (the store opens only
        // after this): a KEK left alone by a crash is simply replaced.
        let kek = SealKey::generate();
        write_kek(dir, &kek)?;
        let dek = SealKey::generate();
        write_dek(dir, WrappedBy::KekFile, &kek, &dek)?;
        tracing::info!(dir = %dir.display(), "data key created");
        return Ok(Keys::Unlocked(dek));
    };
    match file.wrapped_by {
        WrappedBy::KekFile => {
            let kek_path = dir.join(KEK_FILE);
            let kek = read_kek(dir)?.ok_or_else(|| {
                corrupt(
                    &dek_path,
                    format!(
                        "the data key is wrapped by {}, which is missing: restore it from a backup of this data dir",
                        kek_path.display()
                    ),
                )
            })?;
            let dek = file.unwrap_with(&kek).map_err(|e| {
                corrupt(
                    &dek_path,
                    format!("the key in {} does not open it: {e}", kek_path.display()),
                )
            })?;
            Ok(Keys::Unlocked(dek))
        }
        WrappedBy::UnlockKey => {
            // A crash while autolock was being turned on or off.
            remove_kek(dir)?;
            Ok(Keys::Locked)
        }
    }
}

/// The DEK of a locked manager, unwrapped with the operator's unlock key.
pub fn unlock(dir: &Path, key: &UnlockKey) -> Result<SealKey, KeystoreError> {
    let dek_path = dir.join(DEK_FILE);
    let file = read_dek(dir)?.ok_or_else(|| corrupt(&dek_path, "missing: no data key here"))?;
    match file.wrapped_by {
        WrappedBy::KekFile => Err(KeystoreError::NotLocked {
            path: dir.join(KEK_FILE),
        }),
        WrappedBy::UnlockKey => match file.unwrap_with(&key.kek()) {
            Ok(dek) => Ok(dek),
            Err(SealError::Undecryptable) => Err(KeystoreError::WrongKey),
            Err(e) => Err(corrupt(&dek_path, e.to_string())),
        },
    }
}

/// Protects `dek` in `dir`: with `Some(unlock key)` (autolock) the DEK is
/// wrapped by the unlock key and the KEK file removed; with `None` it is
/// wrapped by a KEK file (the one already in use, or a fresh one written
/// first). Safe against a crash between any two steps (see the module
/// documentation).
pub fn protect(
    dir: &Path,
    dek: &SealKey,
    autolock: Option<&UnlockKey>,
) -> Result<(), KeystoreError> {
    ensure_dir(dir)?;
    match autolock {
        Some(unlock_key) => {
            write_dek(dir, WrappedBy::UnlockKey, &unlock_key.kek(), dek)?;
            remove_kek(dir)
        }
        None => {
            let in_use = read_dek(dir)?.map(|file| file.wrapped_by) == Some(WrappedBy::KekFile);
            let kek = match read_kek(dir)? {
                Some(kek) if in_use => kek,
                _ => {
                    let kek = SealKey::generate();
                    write_kek(dir, &kek)?;
                    kek
                }
            };
            write_dek(dir, WrappedBy::KekFile, &kek, dek)
        }
    }
}

/// The associated data of a sealed file: its name, so that sealed files
/// cannot stand in for one another.
fn file_aad(path: &Path) -> Vec<u8> {
    let name = path
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or_default();
    [b"baton/file/".as_slice(), name].concat()
}

/// Writes `bytes` sealed with `dek` to `path` (0600, atomically; the parent
/// directory is created if missing).
pub fn seal_file(path: &Path, dek: &SealKey, bytes: &[u8]) -> Result<(), KeystoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    }
    write_secret(path, &dek.seal(&file_aad(path), bytes))
}

/// The plaintext of a file [`seal_file`] wrote, or `None` if there is no
/// such file.
pub fn open_file(path: &Path, dek: &SealKey) -> Result<Option<Zeroizing<Vec<u8>>>, KeystoreError> {
    let Some(sealed) = read_optional(path)? else {
        return Ok(None);
    };
    dek.open(&file_aad(path), &sealed)
        .map(Some)
        .map_err(|source| KeystoreError::Sealed {
            path: path.to_owned(),
            source,
        })
}

/// The DEK of the manager whose data dir is `data_dir`, for callers that do
/// not hold it: it is read with the KEK file, so this fails with
/// [`KeystoreError::Locked`] while the cluster is autolocked.
pub fn data_key(data_dir: &Path) -> Result<SealKey, KeystoreError> {
    match open_or_create(&dir(data_dir))? {
        Keys::Unlocked(dek) => Ok(dek),
        Keys::Locked => Err(KeystoreError::Locked),
    }
}

#[cfg(test)]
mod tests;
