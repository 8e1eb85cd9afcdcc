//! Secrets. Provider credentials are sealed with AES-256-GCM under the master key, with the
//! owning workspace and record id as associated data (a sealed key copied onto another record
//! does not open). API keys are random, carry a recognisable prefix and a checksum so scanners
//! can find leaked ones, and are stored only as SHA-256 hashes.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{Integration, SealedSecret};

/// The prefix of every Tollgate API key.
pub const KEY_PREFIX: &str = "tg_";

/// Why a secret could not be handled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("master key must be 32 bytes, base64-encoded")]
    BadMasterKey,
    #[error("sealed secret is corrupt or belongs to another record")]
    Open,
}

/// The scope an integration's credential is sealed to (its associated data, with the record id):
/// the owning workspace, or the organisation.
pub fn seal_scope(i: &Integration) -> &str {
    i.workspace_id.as_deref().unwrap_or("organisation")
}

/// The id a secret field of an integration is sealed under: the integration's id and the
/// field's name, so a sealed value opens only where it was set.
pub fn secret_id(integration_id: &str, field: &str) -> String {
    format!("{integration_id}/{field}")
}

/// Seals and opens provider credentials.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// From a base64 32-byte key.
    pub fn from_base64(key: &str) -> Result<Self, CryptoError> {
        let bytes = STANDARD
            .decode(key.trim())
            .map_err(|_| CryptoError::BadMasterKey)?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadMasterKey);
        }
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadMasterKey)?;
        Ok(Sealer { cipher })
    }

    /// A new random master key, base64.
    pub fn generate_key() -> String {
        let mut k = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        STANDARD.encode(k)
    }

    /// Seals `secret` for the record `(scope, id)`.
    pub fn seal(&self, secret: &str, scope: &str, id: &str) -> SealedSecret {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let aad = format!("{scope}\n{id}");
        // Encryption with a valid key and in-memory buffers cannot fail.
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        SealedSecret {
            sealed: STANDARD.encode(blob),
            masked: mask(secret),
        }
    }

    /// Opens a secret sealed for `(scope, id)`.
    pub fn open(&self, s: &SealedSecret, scope: &str, id: &str) -> Result<String, CryptoError> {
        let blob = STANDARD.decode(&s.sealed).map_err(|_| CryptoError::Open)?;
        if blob.len() < 12 {
            return Err(CryptoError::Open);
        }
        let aad = format!("{scope}\n{id}");
        let pt = self
            .cipher
            .decrypt(
                Nonce::from_slice(&blob[..12]),
                Payload {
                    msg: &blob[12..],
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Open)?;
        String::from_utf8(pt).map_err(|_| CryptoError::Open)
    }
}

/// `sk-****wxyz`: the first 3 and last 4 characters of longer secrets, nothing of short ones.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "****".into();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

/// A new API key secret: `tg_` + 32 random bytes + a 4-byte CRC-32 checksum, base64url.
pub fn new_api_key() -> String {
    let mut raw = [0u8; 36];
    rand::thread_rng().fill_bytes(&mut raw[..32]);
    let crc = crc32fast::hash(&raw[..32]);
    raw[32..].copy_from_slice(&crc.to_be_bytes());
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// Whether `key` is shaped like a Tollgate key with a valid checksum (cheap; no lookup).
pub fn looks_like_api_key(key: &str) -> bool {
    let Some(body) = key.strip_prefix(KEY_PREFIX) else {
        return false;
    };
    match URL_SAFE_NO_PAD.decode(body) {
        Ok(raw) if raw.len() == 36 => crc32fast::hash(&raw[..32]).to_be_bytes() == raw[32..],
        _ => false,
    }
}

/// The stored form of an API key: hex SHA-256.
pub fn hash_api_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Lower-case hex of bytes (runs on every request: no allocation per byte).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xF)]));
    }
    s
}

/// Constant-time comparison of two stored hashes.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_bind_to_record() {
        let s = Sealer::from_base64(&Sealer::generate_key()).unwrap();
        let sealed = s.seal("sk-live-abcdefghijkl", "ws1", "int1");
        assert!(!sealed.sealed.contains("abcdefghijkl"));
        assert_eq!(sealed.masked, "sk-****ijkl");
        assert_eq!(
            s.open(&sealed, "ws1", "int1").unwrap(),
            "sk-live-abcdefghijkl"
        );
        assert_eq!(s.open(&sealed, "ws2", "int1"), Err(CryptoError::Open));
        let other = Sealer::from_base64(&Sealer::generate_key()).unwrap();
        assert_eq!(other.open(&sealed, "ws1", "int1"), Err(CryptoError::Open));
        assert_eq!(
            Sealer::from_base64("c2hvcnQ=").err(),
            Some(CryptoError::BadMasterKey)
        );
    }

    #[test]
    fn api_keys_have_prefix_and_checksum() {
        let k = new_api_key();
        assert!(looks_like_api_key(&k));
        let mut broken = k.clone().into_bytes();
        let i = broken.len() - 10;
        broken[i] = if broken[i] == b'A' { b'B' } else { b'A' };
        assert!(!looks_like_api_key(&String::from_utf8(broken).unwrap()));
        assert!(!looks_like_api_key("sk-123"));
        assert_eq!(hash_api_key(&k).len(), 64);
        assert!(hashes_equal(&hash_api_key(&k), &hash_api_key(&k)));
        assert!(!hashes_equal(&hash_api_key(&k), &hash_api_key("x")));
    }
}
