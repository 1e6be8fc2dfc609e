//! The keystore on real files: creation, autolock on and off, each crash
//! point of those changes (files left as a crash would leave them), wrong
//! keys, unlock keys' text form, sealed files.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn keys_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(KEYS_DIR);
    (tmp, dir)
}

fn unlocked(dir: &Path) -> SealKey {
    match open_or_create(dir).expect("open") {
        Keys::Unlocked(dek) => dek,
        Keys::Locked => panic!("locked"),
    }
}

fn is_locked(dir: &Path) -> bool {
    matches!(open_or_create(dir).expect("open"), Keys::Locked)
}

/// Whether two keys are the same key (they open each other's seals).
fn same(a: &SealKey, b: &SealKey) -> bool {
    b.open(b"t", &a.seal(b"t", b"x")).is_ok()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn a_fresh_dir_gets_a_kek_and_a_dek_and_reopens_to_the_same_data_key() {
    let (_tmp, dir) = keys_dir();
    let dek = unlocked(&dir);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("kek")), 0o600);
    assert_eq!(mode(&dir.join("dek")), 0o600);
    let dek_file = fs::read_to_string(dir.join("dek")).expect("dek");
    assert!(dek_file.contains("wrapped_by = \"kek_file\""), "{dek_file}");
    let again = unlocked(&dir);
    assert!(same(&dek, &again), "the same data key after a reopen");
    assert!(!same(&dek, &SealKey::generate()));
    let key_b64 = BASE64.encode(*dek.to_bytes());
    assert!(
        !dek_file.contains(&key_b64),
        "the data key is not in its file in the clear"
    );
}

#[test]
fn an_existing_keys_dir_is_made_owner_only() {
    let (_tmp, dir) = keys_dir();
    fs::create_dir_all(&dir).expect("dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    unlocked(&dir);
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn autolock_removes_the_kek_and_only_the_unlock_key_opens() {
    let (_tmp, dir) = keys_dir();
    let dek = unlocked(&dir);
    let key = UnlockKey::generate();
    protect(&dir, &dek, Some(&key)).expect("autolock");
    assert!(!dir.join("kek").exists(), "no key material left on disk");
    assert!(is_locked(&dir));
    let opened = unlock(&dir, &key).expect("unlock");
    assert!(same(&dek, &opened));
    assert!(matches!(
        unlock(&dir, &UnlockKey::generate()),
        Err(KeystoreError::WrongKey)
    ));
    assert!(is_locked(&dir), "a wrong key changes nothing");
}

#[test]
fn rotating_the_unlock_key_retires_the_old_one() {
    let (_tmp, dir) = keys_dir();
    let dek = unlocked(&dir);
    let (old, new) = (UnlockKey::generate(), UnlockKey::generate());
    protect(&dir, &dek, Some(&old)).expect("autolock");
    protect(&dir, &dek, Some(&new)).expect("rotate");
    assert!(matches!(unlock(&dir, &old), Err(KeystoreError::WrongKey)));
    assert!(same(&dek, &unlock(&dir, &new).expect("unlock")));
}

#[test]
fn leaving_autolock_writes_a_new_kek_and_starts_unlocked() {
    let (_tmp, dir) = keys_dir();
    let dek = unlocked(&dir);
    let old_kek = fs::read(dir.join("kek")).expect("kek");
    let key = UnlockKey::generate();
    protect(&dir, &dek, Some(&key)).expect("autolock");
    protect(&dir, &dek, None).expect("autolock off");
    let new_kek = fs::read(dir.join("kek")).expect("a kek again");
    assert_ne!(new_kek, old_kek, "a fresh kek");
    assert!(same(&dek, &unlocked(&dir)));
    assert!(matches!(
        unlock(&dir, &key),
        Err(KeystoreError::NotLocked { .. })
    ));
}

#[test]
fn protecting_an_unlocked_dir_again_keeps_its_kek() {
    let (_tmp, dir) = keys_dir();
    let dek = unlocked(&dir);
    let kek = fs::read(dir.join("kek")).expect("kek");
    protect(&dir, &dek, None).expect("protect");
    assert_eq!(fs::read(dir.join("kek")).expect("kek"), kek);
    assert!(same(&dek, &unlocked(&dir)));
}

#[test]
fn a_crash_after_the_kek_of_a_new_dir_leaves_a_dir_that_opens() {
    let (_tmp, dir) = keys_dir();
    ensure_dir(&dir).expect("dir");
    write_kek(&dir, &SealKey::generate()).expect("kek");
    // No dek: the crash came before it. Nothing was sealed yet.
    let dek = unlocked(&dir);
    assert!(same(&dek, &unlocked(&dir)));
}

#[test]
fn a_crash_before_the_kek_is_removed_leaves_a_locked_dir() {
    let (_tmp, dir) = keys_dir();
    let dek = unlocked(&dir);
    let key = UnlockKey::generate();
    // Autolock's first step done (the dek rewrapped), its second (removing
    // the kek) not.
    write_dek(&dir, WrappedBy::UnlockKey, &key.kek(), &dek).expect("rewrap");
    assert!(dir.join("kek").exists());
    assert!(is_locked(&dir));
    assert!(!dir.join("kek").exists(), "the stray kek is removed");
    assert!(same(&dek, &unlock(&dir, &key).expect("the new key opens")));
}

#[test]
fn a_crash_after_the_new_kek_of_leaving_autolock_leaves_a_locked_dir() {
    let (_tmp, dir) = keys_dir();
    let dek = unlocked(&dir);
    let key = UnlockKey::generate();
    protect(&dir, &dek, Some(&key)).expect("autolock");
    // Leaving autolock: the fresh kek written, the dek not yet rewrapped.
    write_kek(&dir, &SealKey::generate()).expect("new kek");
    assert!(is_locked(&dir), "the old unlock key still rules");
    assert!(!dir.join("kek").exists());
    assert!(same(&dek, &unlock(&dir, &key).expect("the old key opens")));
    // Done again after the restart, it completes.
    protect(&dir, &dek, None).expect("autolock off");
    assert!(same(&dek, &unlocked(&dir)));
}

#[test]
fn a_temporary_file_left_by_a_crashed_write_is_ignored() {
    let (_tmp, dir) = keys_dir();
    let dek = unlocked(&dir);
    fs::write(dir.join(".dek.tmp"), b"half a fi").expect("tmp");
    fs::write(dir.join(".kek.tmp"), b"").expect("tmp");
    assert!(same(&dek, &unlocked(&dir)));
}

#[test]
fn a_missing_or_foreign_kek_is_an_error_not_a_new_key() {
    let (_tmp, dir) = keys_dir();
    unlocked(&dir);
    let kek = fs::read(dir.join("kek")).expect("kek");
    fs::remove_file(dir.join("kek")).expect("rm");
    let err = open_or_create(&dir).expect_err("no kek");
    assert!(err.to_string().contains("missing"), "{err}");
    write_kek(&dir, &SealKey::generate()).expect("another kek");
    let err = open_or_create(&dir).expect_err("another kek");
    assert!(err.to_string().contains("does not open"), "{err}");
    fs::write(dir.join("kek"), b"not base64!").expect("garbage");
    assert!(matches!(
        open_or_create(&dir),
        Err(KeystoreError::Corrupt { .. })
    ));
    fs::write(dir.join("kek"), kek).expect("restore");
    unlocked(&dir);
}

#[test]
fn a_relabelled_dek_file_does_not_open() {
    let (_tmp, dir) = keys_dir();
    let dek = unlocked(&dir);
    let key = UnlockKey::generate();
    protect(&dir, &dek, Some(&key)).expect("autolock");
    // Someone flips the label back to kek_file and plants a kek.
    let text = fs::read_to_string(dir.join("dek")).expect("dek");
    fs::write(
        dir.join("dek"),
        text.replace("\"unlock_key\"", "\"kek_file\""),
    )
    .expect("relabel");
    write_kek(&dir, &key.kek()).expect("kek");
    assert!(matches!(
        open_or_create(&dir),
        Err(KeystoreError::Corrupt { .. })
    ));
}

#[test]
fn unlocking_a_dir_without_a_dek_is_an_error() {
    let (_tmp, dir) = keys_dir();
    ensure_dir(&dir).expect("dir");
    assert!(matches!(
        unlock(&dir, &UnlockKey::generate()),
        Err(KeystoreError::Corrupt { .. })
    ));
}

#[test]
fn data_key_reads_an_unlocked_dir_and_refuses_a_locked_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dek = data_key(tmp.path()).expect("creates");
    assert!(tmp.path().join("keys/dek").exists());
    assert!(same(&dek, &data_key(tmp.path()).expect("reads")));
    protect(&dir(tmp.path()), &dek, Some(&UnlockKey::generate())).expect("autolock");
    let err = data_key(tmp.path()).expect_err("locked");
    assert!(matches!(err, KeystoreError::Locked));
    assert!(err.to_string().contains("baton manager unlock"), "{err}");
}

#[test]
fn an_unlock_key_round_trips_through_its_text() {
    let key = UnlockKey::generate();
    let text = key.format();
    assert!(text.starts_with("BATON-UNLOCK-1-"), "{}", text.as_str());
    assert_eq!(text.len(), "BATON-UNLOCK-1-".len() + 43);
    let parsed = UnlockKey::parse(&format!("  {}\n", text.as_str())).expect("parse");
    assert_eq!(*parsed.0, *key.0);
    assert!(same(&parsed.kek(), &key.kek()), "the same kek");
    assert!(!same(&UnlockKey::generate().kek(), &key.kek()));
    assert_ne!(
        *key.kek().to_bytes(),
        *key.0,
        "the kek is derived, not the key itself"
    );
}

#[test]
fn unlock_key_errors_never_repeat_the_text() {
    let key = UnlockKey::generate();
    let text = key.format();
    let encoded = &text["BATON-UNLOCK-1-".len()..];
    let cases = [
        (encoded.to_owned(), UnlockKeyError::Prefix),
        (format!("BATON-UNLOCK-2-{encoded}"), UnlockKeyError::Prefix),
        (
            format!("BATON-UNLOCK-1-{}", &encoded[..40]),
            UnlockKeyError::Malformed,
        ),
        (format!("{}AA", text.as_str()), UnlockKeyError::Malformed),
        (
            format!("{}!", &text[..text.len() - 1]),
            UnlockKeyError::Malformed,
        ),
        (String::new(), UnlockKeyError::Prefix),
    ];
    for (input, expected) in cases {
        let err = UnlockKey::parse(&input).expect_err("refused");
        assert_eq!(err, expected, "{input:?}");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&encoded[..12]), "{shown}");
    }
}

#[test]
fn an_unlock_key_never_prints() {
    let key = UnlockKey::generate();
    let text = key.format();
    let shown = format!("{key:?}");
    assert_eq!(shown, "UnlockKey(<redacted>)");
    assert!(!shown.contains(&text["BATON-UNLOCK-1-".len()..]));
}

#[test]
fn a_sealed_file_opens_with_its_key_and_name_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dek = SealKey::generate();
    let path = tmp.path().join("node").join("key.sealed");
    seal_file(&path, &dek, b"-----BEGIN PRIVATE KEY-----").expect("seal");
    assert_eq!(mode(&path), 0o600);
    let raw = fs::read(&path).expect("raw");
    assert!(!raw.windows(7).any(|w| w == b"PRIVATE"), "sealed on disk");
    let opened = open_file(&path, &dek).expect("open").expect("present");
    assert_eq!(opened.as_slice(), b"-----BEGIN PRIVATE KEY-----");

    assert!(matches!(
        open_file(&path, &SealKey::generate()),
        Err(KeystoreError::Sealed {
            source: SealError::Undecryptable,
            ..
        })
    ));
    let moved = tmp.path().join("node").join("other.sealed");
    fs::rename(&path, &moved).expect("mv");
    assert!(
        open_file(&moved, &dek).is_err(),
        "a sealed file under another name does not open"
    );
    assert!(open_file(&path, &dek).expect("missing").is_none());

    let old = tmp.path().join("tokens.sealed");
    fs::write(&old, "worker = \"BATON-1-…\"\n").expect("plaintext");
    let err = open_file(&old, &dek).expect_err("plaintext");
    assert!(err.to_string().contains("older"), "{err}");
}
