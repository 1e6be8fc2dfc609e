//! Autolock: a locked manager's one door, and each manager following the
//! cluster's autolock setting.
//!
//! A manager whose data key is wrapped by the cluster's unlock key cannot
//! open its store alone. It listens on nothing but a unix socket in its keys
//! directory (`keys/unlock.sock`: the directory is 0700, and the peer must
//! be the owner of the keys, checked by its credentials), where `baton
//! manager unlock` sends the key it read from a prompt or stdin. A wrong key
//! is refused and the manager keeps waiting; the right one unwraps the data
//! key, the socket goes, and the manager starts.
//!
//! While it runs, [`follow`] keeps this manager's keys in line with the
//! cluster's `unlock_key`: set, the data key is rewrapped with it and the
//! key file removed; replaced (`cluster unlock-key --rotate`), rewrapped
//! with the new key; cleared, a key file is written again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baton_state::Secret;
use baton_store::seal::SealKey;
use baton_store::{Snapshot, Store};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::keystore::{self, KeystoreError, UnlockKey};

/// The socket's name in the keys directory.
pub const SOCKET: &str = "unlock.sock";

/// Longest line accepted on the socket (a key is 58 characters).
const MAX_LINE: usize = 256;

/// How long a client may take to send its key.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket of the manager whose data dir is `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    keystore::dir(data_dir).join(SOCKET)
}

/// The socket file, removed when the wait ends or is dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits, serving only the unlock socket, until a client gives the key that
/// unwraps this manager's data key; returns the data key and the unlock key.
/// Dropping the future stops the wait (and removes the socket).
pub async fn wait_for_key(data_dir: &Path) -> std::io::Result<(SealKey, UnlockKey)> {
    let path = socket_path(data_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let _socket = SocketFile(path.clone());
    tracing::warn!(
        socket = %path.display(),
        "this manager is locked (autolock): it serves nothing until `baton manager unlock --data-dir {}` gives it the cluster's unlock key",
        data_dir.display()
    );
    let keys = keystore::dir(data_dir);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "unlock socket accept failed");
                continue;
            }
        };
        match tokio::time::timeout(CLIENT_TIMEOUT, serve_one(stream, &keys)).await {
            Ok(Some(unlocked)) => {
                tracing::info!("unlocked");
                return Ok(unlocked);
            }
            Ok(None) => {}
            Err(_) => tracing::warn!("an unlock client sent no key in time"),
        }
    }
}

/// One client: its key, checked. `Some` once the key unwrapped the data key.
async fn serve_one(stream: UnixStream, keys: &Path) -> Option<(SealKey, UnlockKey)> {
    // The keys' owner (the manager's user): the one who may unlock them.
    let own_uid = match std::fs::metadata(keys) {
        Ok(meta) => std::os::unix::fs::MetadataExt::uid(&meta),
        Err(e) => {
            tracing::warn!(error = %e, "unlock refused: cannot read the keys directory");
            return None;
        }
    };
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == own_uid => {}
        Ok(cred) => {
            tracing::warn!(peer_uid = cred.uid(), "unlock refused: another user");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "unlock refused: no peer credentials");
            return None;
        }
    }
    let (read, mut write) = stream.into_split();
    let mut line = zeroize::Zeroizing::new(Vec::new());
    let read = BufReader::new(read)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .await;
    let answer = match read {
        Err(e) => Err(format!("cannot read the key: {e}")),
        Ok(_) => match std::str::from_utf8(&line)
            .map_err(|_| "not an unlock key".to_owned())
            .and_then(|text| UnlockKey::parse(text).map_err(|e| e.to_string()))
        {
            Err(e) => Err(e),
            Ok(key) => match keystore::unlock(keys, &key) {
                Ok(dek) => Ok((dek, key)),
                Err(KeystoreError::WrongKey) => {
                    Err("wrong unlock key: it does not open this manager's data key".to_owned())
                }
                Err(e) => Err(e.to_string()),
            },
        },
    };
    let reply = match &answer {
        Ok(_) => "ok\n".to_owned(),
        Err(message) => {
            tracing::warn!(reason = %message, "unlock refused");
            format!("error: {message}\n")
        }
    };
    let _ = write.write_all(reply.as_bytes()).await;
    let _ = write.shutdown().await;
    answer.ok()
}

/// `baton manager unlock`: gives `key` to the locked manager of `data_dir`.
pub async fn send_key(data_dir: &Path, key: &str) -> Result<(), String> {
    let path = socket_path(data_dir);
    let stream = UnixStream::connect(&path).await.map_err(|e| {
        format!(
            "no locked manager at {} ({e}): is it running, and locked?",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = zeroize::Zeroizing::new(key.trim().as_bytes().to_vec());
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .map_err(|e| format!("cannot send the key: {e}"))?;
    let mut reply = String::new();
    BufReader::new(read)
        .take(MAX_LINE as u64 * 4)
        .read_line(&mut reply)
        .await
        .map_err(|e| format!("no answer from the manager: {e}"))?;
    match reply.trim_end() {
        "ok" => Ok(()),
        other => Err(other
            .strip_prefix("error: ")
            .unwrap_or("the manager closed the connection without an answer")
            .to_owned()),
    }
}

/// Keeps this manager's keys in line with the cluster's autolock setting
/// until `stop`. `current` is how the data key is wrapped now (the unlock
/// key text it was unlocked with, or `None`: a key file).
pub async fn follow(
    data_dir: PathBuf,
    dek: SealKey,
    mut current: Option<String>,
    store: Arc<dyn Store>,
    stop: CancellationToken,
) {
    let mut changes = store.subscribe();
    let keys = keystore::dir(&data_dir);
    loop {
        let wanted = wanted(&changes.borrow_and_update());
        if wanted.as_ref().map(Secret::expose) != current.as_deref() {
            match apply(&keys, &dek, wanted.as_ref()).await {
                Ok(()) => {
                    current = wanted.map(|k| k.expose().to_owned());
                    if current.is_some() {
                        tracing::info!(
                            "autolock: the data key is wrapped by the unlock key; no key file is left"
                        );
                    } else {
                        tracing::info!("autolock off: the data key is wrapped by a key file again");
                    }
                }
                // Retried at the next change, or at the next start.
                Err(e) => tracing::error!(error = %e, "cannot follow the autolock setting"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

fn wanted(snapshot: &Snapshot) -> Option<Secret> {
    snapshot
        .state
        .cluster()
        .and_then(|cluster| cluster.unlock_key.clone())
}

async fn apply(keys: &Path, dek: &SealKey, key: Option<&Secret>) -> Result<(), String> {
    let key = key
        .map(|k| UnlockKey::parse(k.expose()))
        .transpose()
        .map_err(|e| format!("the cluster's unlock key: {e}"))?;
    let (keys, dek) = (keys.to_owned(), dek.clone());
    tokio::task::spawn_blocking(move || keystore::protect(&keys, &dek, key.as_ref()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}
