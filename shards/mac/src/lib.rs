//! The operator's MAC key and the keyed MAC (HMAC-SHA-256) that snapshot files,
//! checkpoints and archive segments carry when a key is configured
//! (`docs/SNAPSHOT_FORMAT.md`, `docs/ARCHIVE_FORMAT.md`).
//!
//! CRC-32C finds damage; anyone who can write a file can also recompute its CRCs. The MAC
//! can only be made with the key, so a file changed by someone without it (a balance
//! raised, a batch removed from the archive, checksums recomputed) is refused.
//!
//! ```
//! use std::os::unix::fs::PermissionsExt as _;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("mac.key");
//! std::fs::write(&path, [7u8; 32])?;
//! std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
//! let key = plafond_mac::MacKey::from_file(&path)?;
//!
//! let mut mac = key.mac();
//! mac.update(b"the bytes of a file");
//! let tag = mac.finish();
//! let mut check = key.mac();
//! check.update(b"the bytes of a file");
//! assert!(check.verify(&tag).is_ok());
//! let mut forged = key.mac();
//! forged.update(b"the bytes of another file");
//! assert!(forged.verify(&tag).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

use std::fmt;
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::{KeyInit as _, Mac as _};

/// Bytes of a MAC (an HMAC-SHA-256 tag).
pub const MAC_BYTES: usize = 32;
/// The shortest key accepted: as long as SHA-256's output, below which HMAC-SHA-256 is
/// weaker than its tag (RFC 2104 §3).
pub const MAC_KEY_BYTES_MIN: usize = 32;
/// The longest key file accepted: a key is 32 to 64 random bytes (or their hex); a larger
/// file is the wrong file.
pub const MAC_KEY_BYTES_MAX: usize = 4096;
/// Permission bits a key file must not have: any access by group or others.
const KEY_FILE_MODE_FORBIDDEN: u32 = 0o077;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum MacKeyError {
    /// The file could not be opened or read.
    #[error("the MAC key file {path} cannot be read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The path is not a regular file.
    #[error("the MAC key file {path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Group or others may access the file.
    #[error(
        "the MAC key file {path} has mode {mode:04o}: group and others may not access it; \
         `chmod 600 {path}`"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key is shorter than [`MAC_KEY_BYTES_MIN`] (or empty).
    #[error(
        "the MAC key {source_name} has {bytes} bytes; a key has at least {MAC_KEY_BYTES_MIN} \
         (e.g. `head -c 32 /dev/urandom > KEY`)"
    )]
    TooShort {
        /// The file, or "given in memory".
        source_name: String,
        /// Its length.
        bytes: usize,
    },
    /// The key file is longer than [`MAC_KEY_BYTES_MAX`].
    #[error("the MAC key {source_name} has more than {MAC_KEY_BYTES_MAX} bytes: is it the key?")]
    TooLong {
        /// The file, or "given in memory".
        source_name: String,
    },
}

/// The operator's secret: every byte of the key file is the HMAC key. Cloning shares it.
/// Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct MacKey {
    bytes: Arc<[u8]>,
}

impl fmt::Debug for MacKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "MacKey({} bytes, redacted)", self.bytes.len())
    }
}

impl MacKey {
    /// Reads the key from `path`: a regular file that only its owner may access (mode
    /// `0600` or `0400`), of [`MAC_KEY_BYTES_MIN`] to [`MAC_KEY_BYTES_MAX`] bytes, all of
    /// which are the key (a trailing newline included).
    pub fn from_file(path: impl AsRef<Path>) -> Result<MacKey, MacKeyError> {
        let path = path.as_ref();
        let io = |source| MacKeyError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        if !metadata.is_file() {
            return Err(MacKeyError::NotAFile { path: path.to_path_buf() });
        }
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & KEY_FILE_MODE_FORBIDDEN != 0 {
            return Err(MacKeyError::Exposed { path: path.to_path_buf(), mode });
        }
        let mut bytes = Vec::with_capacity(MAC_KEY_BYTES_MIN);
        // One byte more than allowed, to tell a file that is too long.
        file.take(MAC_KEY_BYTES_MAX as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
        MacKey::checked(bytes, path.display().to_string())
    }

    /// A key from bytes held in memory (for tests and tools), of [`MAC_KEY_BYTES_MIN`] to
    /// [`MAC_KEY_BYTES_MAX`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<MacKey, MacKeyError> {
        MacKey::checked(bytes.to_vec(), "given in memory".into())
    }

    fn checked(bytes: Vec<u8>, source_name: String) -> Result<MacKey, MacKeyError> {
        if bytes.len() < MAC_KEY_BYTES_MIN {
            return Err(MacKeyError::TooShort { source_name, bytes: bytes.len() });
        }
        if bytes.len() > MAC_KEY_BYTES_MAX {
            return Err(MacKeyError::TooLong { source_name });
        }
        Ok(MacKey { bytes: bytes.into() })
    }

    /// A MAC computation under this key, to be fed every byte it covers.
    pub fn mac(&self) -> MacState {
        // HMAC takes keys of any length; the length was checked above.
        let hmac = HmacSha256::new_from_slice(&self.bytes)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        MacState { hmac }
    }
}

/// The keyed MAC does not match the bytes: they were changed after it was made, or it
/// was made with another key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the MAC does not match")]
pub struct MacMismatch;

/// A MAC being computed: feed it the bytes in order, then [`MacState::finish`] or
/// [`MacState::verify`].
#[derive(Clone)]
pub struct MacState {
    hmac: HmacSha256,
}

impl MacState {
    /// Adds `bytes` to what the MAC covers.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hmac.update(bytes);
    }

    /// The MAC of every byte fed.
    pub fn finish(self) -> [u8; MAC_BYTES] {
        self.hmac.finalize().into_bytes().into()
    }

    /// Compares the MAC of every byte fed with `stored`, in constant time.
    pub fn verify(self, stored: &[u8]) -> Result<(), MacMismatch> {
        self.hmac.verify_slice(stored).map_err(|_| MacMismatch)
    }
}

/// Feeds `bytes` to `mac` if there is one: writers and readers carry an
/// `Option<MacState>` that is `None` without a key.
pub fn update(mac: &mut Option<MacState>, bytes: &[u8]) {
    if let Some(mac) = mac {
        mac.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, bytes: &[u8], mode: u32) -> PathBuf {
        let path = dir.join("mac.key");
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_key_file_must_be_private_and_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let good = key_file(dir.path(), &[1; 32], 0o600);
        assert!(MacKey::from_file(&good).is_ok());
        for mode in [0o640, 0o604, 0o644, 0o660, 0o606] {
            let path = key_file(dir.path(), &[1; 32], mode);
            let error = MacKey::from_file(&path).unwrap_err();
            assert!(matches!(error, MacKeyError::Exposed { .. }), "{mode:o}: {error}");
            assert!(error.to_string().contains("chmod 600"), "{error}");
        }
        for length in [0, 1, 31] {
            let path = key_file(dir.path(), &vec![1; length], 0o400);
            let error = MacKey::from_file(&path).unwrap_err();
            assert!(matches!(error, MacKeyError::TooShort { bytes, .. } if bytes == length));
            assert!(error.to_string().contains("mac.key"), "names the file: {error}");
        }
        let long = key_file(dir.path(), &vec![1; MAC_KEY_BYTES_MAX + 1], 0o600);
        assert!(matches!(MacKey::from_file(&long), Err(MacKeyError::TooLong { .. })));
        let missing = MacKey::from_file(dir.path().join("nope")).unwrap_err();
        assert!(matches!(missing, MacKeyError::Io { .. }), "{missing}");
        let directory = MacKey::from_file(dir.path()).unwrap_err();
        assert!(matches!(directory, MacKeyError::NotAFile { .. } | MacKeyError::Exposed { .. }));
    }

    #[test]
    fn debug_output_hides_the_key() {
        let key = MacKey::from_bytes(b"0123456789abcdef0123456789abcdef").unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("0123"), "{shown}");
    }

    /// RFC 4231, test case 2 is a 4-byte key (refused here); case 6's key is 131 bytes of
    /// 0xaa, over a known message.
    #[test]
    fn the_mac_is_hmac_sha256() {
        let key = MacKey::from_bytes(&[0xaa; 131]).unwrap();
        let mut mac = key.mac();
        mac.update(b"Test Using Larger Than Block-Size Key - Hash Key First");
        let expected = [
            0x60, 0xe4, 0x31, 0x59, 0x1e, 0xe0, 0xb6, 0x7f, 0x0d, 0x8a, 0x26, 0xaa, 0xcb, 0xf5,
            0xb7, 0x7f, 0x8e, 0x0b, 0xc6, 0x21, 0x37, 0x28, 0xc5, 0x14, 0x05, 0x46, 0x04, 0x0f,
            0x0e, 0xe3, 0x7f, 0x54,
        ];
        assert_eq!(mac.finish(), expected);
    }

    #[test]
    fn another_key_or_other_bytes_do_not_verify() {
        let key = MacKey::from_bytes(&[1; 32]).unwrap();
        let other = MacKey::from_bytes(&[2; 32]).unwrap();
        let mut mac = key.mac();
        mac.update(b"abc");
        let tag = mac.finish();
        let check = |key: &MacKey, bytes: &[u8]| {
            let mut mac = key.mac();
            mac.update(bytes);
            mac.verify(&tag)
        };
        assert_eq!(check(&key, b"abc"), Ok(()));
        assert_eq!(check(&other, b"abc"), Err(MacMismatch));
        assert_eq!(check(&key, b"abd"), Err(MacMismatch));
        assert_eq!(key.mac().verify(&tag[..31]), Err(MacMismatch));
    }
}
