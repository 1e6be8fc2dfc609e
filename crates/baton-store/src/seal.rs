//! Sealing: authenticated encryption of what Baton keeps at rest.
//!
//! A [`SealKey`] is a 256-bit XChaCha20-Poly1305 key. [`SealKey::seal`]
//! encrypts bytes under a fresh random 192-bit nonce (random nonces of that
//! size never repeat in practice: 2^96 messages before a collision is even
//! likely) and binds them to *associated data* naming their place (a log
//! index, a file name): sealed bytes moved elsewhere, or replayed at another
//! index, do not open.
//!
//! Sealed format, version 1 (46 bytes more than the plaintext):
//!
//! ```text
//! "BSEAL" 0x01 | nonce (24 bytes) | ciphertext | Poly1305 tag (16 bytes)
//! ```
//!
//! The 6-byte header is authenticated too (it is prepended to the caller's
//! associated data). Bytes that do not start with it were not sealed: an
//! older Baton wrote them in the clear, which [`SealError::NotSealed`] says.

use std::fmt;

use chacha20poly1305::aead::common::Generate;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

/// The length of a key, in bytes.
pub const KEY_LEN: usize = 32;

/// What every sealed value starts with: a magic and the format version.
const HEADER: [u8; 6] = *b"BSEAL\x01";
/// The magic alone (a sealed value of another version shares it).
const MAGIC: &[u8] = b"BSEAL";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// How many bytes sealing adds to a plaintext.
pub const OVERHEAD: usize = HEADER.len() + NONCE_LEN + TAG_LEN;

/// Why sealed bytes could not be opened.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The bytes carry no seal header: written in the clear, by a Baton from
    /// before encryption at rest (or they are not Baton's at all).
    #[error(
        "not sealed: written unencrypted, by a Baton older than encryption at rest, or not Baton's data"
    )]
    NotSealed,
    /// Sealed in a format this Baton does not know (a newer one's).
    #[error("sealed in format version {version}, which this Baton cannot read")]
    UnknownVersion {
        /// The version byte found.
        version: u8,
    },
    /// The key is not the one they were sealed with, they were moved from
    /// their place, or they are truncated or corrupted.
    #[error("cannot be decrypted: wrong key, or the data is corrupted")]
    Undecryptable,
}

/// A 256-bit sealing key. Its bytes are wiped when it is dropped; its
/// `Debug` prints `SealKey(<redacted>)`, and it has no `Display`.
#[derive(Clone)]
pub struct SealKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    /// The cipher keyed with `bytes` (it wipes its copy on drop).
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> SealKey {
        let mut key = Key::generate();
        let sealed = SealKey::from_key(&key);
        key.as_mut_slice().zeroize();
        sealed
    }

    /// The key with these bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SealKey {
        let bytes = Zeroizing::new(bytes);
        let mut key = Key::from(*bytes);
        let sealed = SealKey::from_key(&key);
        key.as_mut_slice().zeroize();
        sealed
    }

    /// The key with these bytes, if there are exactly [`KEY_LEN`] of them.
    pub fn from_slice(bytes: &[u8]) -> Option<SealKey> {
        let array: [u8; KEY_LEN] = bytes.try_into().ok()?;
        Some(SealKey::from_bytes(array))
    }

    fn from_key(key: &Key) -> SealKey {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(key.as_slice());
        SealKey {
            bytes,
            cipher: XChaCha20Poly1305::new(key),
        }
    }

    /// The key's bytes (to wrap it with another key).
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.bytes.clone()
    }

    /// Encrypts `plaintext`, bound to `aad` (which is not stored: the
    /// reader must name the same place).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce = XNonce::generate();
        let aad = [HEADER.as_slice(), aad].concat();
        // Encrypted in place, in the output: one copy of the plaintext.
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.extend_from_slice(&HEADER);
        out.extend_from_slice(nonce.as_slice());
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_inout_detached(&nonce, &aad, (&mut out[start..]).into())
            .expect("XChaCha20-Poly1305 encrypts any message shorter than 256 GiB");
        out.extend_from_slice(tag.as_slice());
        out
    }

    /// Decrypts what [`SealKey::seal`] made with this key and this `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if !sealed.starts_with(MAGIC) {
            return Err(SealError::NotSealed);
        }
        match sealed.get(MAGIC.len()) {
            Some(&version) if version != HEADER[MAGIC.len()] => {
                return Err(SealError::UnknownVersion { version });
            }
            _ => {}
        }
        if sealed.len() < OVERHEAD {
            return Err(SealError::Undecryptable);
        }
        let (nonce, rest) = sealed[HEADER.len()..].split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SealError::Undecryptable)?;
        let tag = Tag::try_from(tag).map_err(|_| SealError::Undecryptable)?;
        let aad = [HEADER.as_slice(), aad].concat();
        let mut plaintext = Zeroizing::new(ciphertext.to_vec());
        self.cipher
            .decrypt_inout_detached(&nonce, &aad, plaintext.as_mut_slice().into(), &tag)
            .map_err(|_| SealError::Undecryptable)?;
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_with_the_same_key_and_place() {
        let key = SealKey::generate();
        let sealed = key.seal(b"baton/test/1", b"the secret");
        assert_eq!(sealed.len(), OVERHEAD + b"the secret".len());
        assert!(sealed.starts_with(b"BSEAL\x01"));
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "the plaintext is not in the sealed bytes"
        );
        let opened = key.open(b"baton/test/1", &sealed).expect("open");
        assert_eq!(opened.as_slice(), b"the secret");
        let empty = key.seal(b"", b"");
        assert_eq!(key.open(b"", &empty).expect("open").as_slice(), b"");
    }

    #[test]
    fn the_same_plaintext_seals_differently_each_time() {
        let key = SealKey::generate();
        assert_ne!(key.seal(b"a", b"same"), key.seal(b"a", b"same"));
    }

    #[test]
    fn another_key_cannot_open() {
        let sealed = SealKey::generate().seal(b"place", b"the secret");
        assert_eq!(
            SealKey::generate().open(b"place", &sealed),
            Err(SealError::Undecryptable)
        );
    }

    #[test]
    fn bytes_moved_to_another_place_do_not_open() {
        let key = SealKey::generate();
        let sealed = key.seal(b"baton/raft_log/\x00\x00\x00\x00\x00\x00\x00\x01", b"entry");
        assert_eq!(
            key.open(b"baton/raft_log/\x00\x00\x00\x00\x00\x00\x00\x02", &sealed),
            Err(SealError::Undecryptable)
        );
    }

    #[test]
    fn truncated_corrupted_and_foreign_bytes_are_refused() {
        let key = SealKey::generate();
        let sealed = key.seal(b"p", b"the secret");
        for cut in [
            0,
            3,
            HEADER.len(),
            HEADER.len() + NONCE_LEN,
            sealed.len() - 1,
        ] {
            assert!(key.open(b"p", &sealed[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            key.open(b"p", &sealed[..OVERHEAD - 1]),
            Err(SealError::Undecryptable)
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(key.open(b"p", &flipped), Err(SealError::Undecryptable));
        let mut flipped = sealed.clone();
        flipped[HEADER.len() + NONCE_LEN] ^= 1;
        assert_eq!(key.open(b"p", &flipped), Err(SealError::Undecryptable));
        // What an older Baton stored: JSON in the clear.
        assert_eq!(
            key.open(b"p", br#"{"log_id":{"index":1}}"#),
            Err(SealError::NotSealed)
        );
        assert_eq!(key.open(b"p", b""), Err(SealError::NotSealed));
        let mut newer = sealed.clone();
        newer[MAGIC.len()] = 2;
        assert_eq!(
            key.open(b"p", &newer),
            Err(SealError::UnknownVersion { version: 2 })
        );
        assert!(
            SealError::NotSealed.to_string().contains("older"),
            "the message says where unsealed bytes come from"
        );
    }

    #[test]
    fn a_key_round_trips_through_its_bytes() {
        let key = SealKey::generate();
        let again = SealKey::from_bytes(*key.to_bytes());
        let sealed = key.seal(b"p", b"x");
        assert_eq!(again.open(b"p", &sealed).expect("open").as_slice(), b"x");
        assert!(SealKey::from_slice(&[0u8; 31]).is_none());
        assert!(SealKey::from_slice(key.to_bytes().as_slice()).is_some());
        assert_ne!(
            *SealKey::generate().to_bytes(),
            *key.to_bytes(),
            "keys are random"
        );
    }

    #[test]
    fn a_key_never_prints() {
        let key = SealKey::from_bytes([0xab; KEY_LEN]);
        let shown = format!("{key:?} {key:#?}");
        assert_eq!(format!("{key:?}"), "SealKey(<redacted>)");
        assert!(!shown.contains("ab") && !shown.contains("171"), "{shown}");
    }
}
