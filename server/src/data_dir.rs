//! The data folder: one process at a time, the store, and the secrets.
//!
//! On first start the folder is created with owner-only permissions, along
//! with a random JWT signing secret and a VAPID key pair. Later starts read
//! them back, so tokens and push subscriptions survive restarts. The secret
//! types redact themselves in `Debug`, so they cannot reach the logs by accident.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::ToEncodedPoint;

use crate::store::{SledStore, StoreError};

const LOCK_FILE: &str = "backchannel.lock";
const STORE_DIR: &str = "store";
const JWT_SECRET_FILE: &str = "jwt_secret";
const VAPID_PRIVATE_KEY_FILE: &str = "vapid_private_key";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "the data folder {0} is in use by another running backchannel process; \
         stop that server first (or give this one another --data folder)"
    )]
    InUse(PathBuf),
    #[error("cannot use the data folder {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "the secret file {0} is corrupt; restore it from a backup or remove it to make a new one (signing out everyone)"
    )]
    CorruptSecret(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An opened, locked data folder. The lock lasts as long as this value.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
    pub store: SledStore,
    pub jwt_secret: JwtSecret,
    pub vapid: VapidKeys,
}

impl DataDir {
    /// Creates what is missing, takes the folder's lock, opens the store and
    /// loads (or makes) the secrets. Fails at once if another process holds it.
    pub fn open(path: &Path) -> Result<Self, DataDirError> {
        let io_error = |source| DataDirError::Io {
            path: path.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io_error)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path.join(LOCK_FILE))
            .map_err(io_error)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::InUse(path.to_path_buf()));
            }
            Err(fs::TryLockError::Error(source)) => return Err(io_error(source)),
        }
        let jwt_secret = JwtSecret(read_or_create_secret(
            &path.join(JWT_SECRET_FILE),
            || random_bytes::<64>().to_vec(),
            |bytes| bytes.len() >= 32,
        )?);
        let vapid_private = read_or_create_secret(
            &path.join(VAPID_PRIVATE_KEY_FILE),
            new_vapid_private_key,
            |bytes| p256::SecretKey::from_slice(bytes).is_ok(),
        )?;
        let vapid = VapidKeys::from_private_bytes(&vapid_private)
            .ok_or_else(|| DataDirError::CorruptSecret(path.join(VAPID_PRIVATE_KEY_FILE)))?;
        let store = SledStore::open(&path.join(STORE_DIR))?;
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
            store,
            jwt_secret,
            vapid,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The HMAC key that signs access and refresh tokens.
#[derive(Clone)]
pub struct JwtSecret(Vec<u8>);

impl JwtSecret {
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtSecret(<redacted>)")
    }
}

/// The VAPID key pair that signs Web Push requests (RFC 8292).
#[derive(Clone)]
pub struct VapidKeys {
    private: p256::SecretKey,
    /// Uncompressed P-256 point, base64url without padding, as browsers take it.
    pub public_key: String,
}

impl VapidKeys {
    fn from_private_bytes(bytes: &[u8]) -> Option<Self> {
        let private = p256::SecretKey::from_slice(bytes).ok()?;
        let uncompressed = private.public_key().to_encoded_point(false);
        Some(Self {
            private,
            public_key: URL_SAFE_NO_PAD.encode(uncompressed.as_bytes()),
        })
    }

    /// The private scalar, base64url: the form the `web-push` crate takes.
    pub fn private_key_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.private.to_bytes())
    }
}

impl std::fmt::Debug for VapidKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKeys")
            .field("private", &"<redacted>")
            .field("public_key", &self.public_key)
            .finish()
    }
}

fn new_vapid_private_key() -> Vec<u8> {
    // A random 32-byte string is a valid P-256 scalar except with negligible
    // probability (zero or above the group order); draw again in that case.
    loop {
        let candidate = random_bytes::<32>();
        if p256::SecretKey::from_slice(&candidate).is_ok() {
            return candidate.to_vec();
        }
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source is unavailable");
    bytes
}

/// Secrets are stored base64url-encoded, one line, owner-only.
fn read_or_create_secret(
    path: &Path,
    create: impl FnOnce() -> Vec<u8>,
    is_valid: impl Fn(&[u8]) -> bool,
) -> Result<Vec<u8>, DataDirError> {
    let io_error = |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            let bytes = URL_SAFE_NO_PAD
                .decode(text.trim())
                .map_err(|_| DataDirError::CorruptSecret(path.to_path_buf()))?;
            if !is_valid(&bytes) {
                return Err(DataDirError::CorruptSecret(path.to_path_buf()));
            }
            // Tighten permissions an operator may have loosened by copying files.
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_error)?;
            Ok(bytes)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let bytes = create();
            write_new_secret(path, &URL_SAFE_NO_PAD.encode(&bytes)).map_err(io_error)?;
            Ok(bytes)
        }
        Err(error) => Err(io_error(error)),
    }
}

/// Writes to a temporary file and renames it, so a crash never leaves half a key.
fn write_new_secret(path: &Path, text: &str) -> io::Result<()> {
    let temporary = path.with_extension("new");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_open_creates_owner_only_secrets_that_later_opens_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DataDir::open(&data).unwrap();
        let public_key = first.vapid.public_key.clone();
        let secret = first.jwt_secret.bytes().to_vec();
        drop(first);

        for file in [JWT_SECRET_FILE, VAPID_PRIVATE_KEY_FILE] {
            let mode = fs::metadata(data.join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let mode = fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);

        let second = DataDir::open(&data).unwrap();
        assert_eq!(second.vapid.public_key, public_key);
        assert_eq!(second.jwt_secret.bytes(), secret.as_slice());
    }

    #[test]
    fn a_second_open_of_a_held_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDir::open(dir.path()).unwrap();
        let error = DataDir::open(dir.path()).unwrap_err();
        assert!(matches!(error, DataDirError::InUse(_)), "{error}");
    }

    #[test]
    fn vapid_public_key_is_an_uncompressed_p256_point() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let point = URL_SAFE_NO_PAD.decode(&data.vapid.public_key).unwrap();
        assert_eq!(point.len(), 65);
        assert_eq!(point[0], 0x04);
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let shown = format!("{data:?}");
        assert!(!shown.contains(&data.vapid.private_key_base64()));
        assert!(!shown.contains(&URL_SAFE_NO_PAD.encode(data.jwt_secret.bytes())));
    }
}
