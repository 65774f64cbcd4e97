//! The secrets: the Runware API key and the client token, which never
//! print, and where they are read from.

use super::*;

/// A Runware API key. `Debug` and `Display` print `***`; the only way to
/// the text is [`ApiKey::expose`], used to build the authentication frame.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key, trimming the whitespace files and env values carry.
    pub fn new(key: impl Into<String>) -> Option<Self> {
        let key = key.into();
        let trimmed = key.trim();
        (!trimmed.is_empty()).then(|| ApiKey(trimmed.to_owned()))
    }

    /// The key's text, for the authentication message only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for ApiKey {
    fn drop(&mut self) {
        // Wipe the key from memory when it is no longer needed.
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The bearer token clients must send when the daemon listens beyond
/// loopback. Never prints; compared in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(ApiKey);

impl BearerToken {
    /// A token from its text, trimmed; `None` when nothing is left.
    pub fn new(token: impl Into<String>) -> Option<Self> {
        ApiKey::new(token).map(BearerToken)
    }

    /// Whether `given` is this token, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.expose().as_bytes().ct_eq(given.as_bytes()).into()
    }

    /// Whether an `authorization` header's value carries this token
    /// (`Bearer <token>`).
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|given| self.matches(given))
    }

    /// The text, for a client to send.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

/// Reads a bearer token file.
pub fn read_token_file(path: &Path) -> Result<BearerToken, ConfigError> {
    read_key_file(path).map(BearerToken)
}

/// Where the key comes from. A file is read again before every connection,
/// so a rotated key is picked up without a restart.
#[derive(Clone, Debug)]
pub enum ApiKeySource {
    /// The key itself, from `RUNWARE_API_KEY`.
    Value(ApiKey),
    /// A file holding it, read again on each reconnect.
    File(PathBuf),
}

impl ApiKeySource {
    /// The current key.
    pub fn load(&self) -> Result<ApiKey, ConfigError> {
        match self {
            ApiKeySource::Value(k) => Ok(k.clone()),
            ApiKeySource::File(path) => read_key_file(path),
        }
    }
}

pub(super) fn read_key_file(path: &Path) -> Result<ApiKey, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
        path: path.to_owned(),
        source,
    })?;
    ApiKey::new(text).ok_or_else(|| ConfigError::EmptyKeyFile(path.to_owned()))
}
