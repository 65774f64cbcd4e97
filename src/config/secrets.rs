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

/// The fewest characters of a tenant's token: one a client could guess
/// would let it spend as that tenant and read its results.
pub const MIN_TENANT_TOKEN_CHARS: usize = 16;

/// Reads a tenants' tokens file: one `TENANT TOKEN` a line (blank lines
/// and `#` comments skipped), several lines per tenant allowed. An error
/// names the line, never the token.
pub fn read_tenant_tokens(path: &Path) -> Result<Vec<(String, BearerToken)>, ConfigError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        ConfigError::KeyFile {
            path: path.to_owned(),
            source,
        }
    })?);
    let bad = |line: usize, why: &str| ConfigError::Invalid {
        name: "tenant_tokens_file",
        reason: format!("{} line {line}: {why}", path.display()),
    };
    let mut tokens: Vec<(String, BearerToken)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (tenant, token) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad(i + 1, "expected a tenant's name, a space, then its token"))?;
        let token = token.trim();
        if token.chars().count() < MIN_TENANT_TOKEN_CHARS || token.contains(char::is_whitespace) {
            return Err(bad(
                i + 1,
                &format!("a token is one word of at least {MIN_TENANT_TOKEN_CHARS} characters"),
            ));
        }
        if tokens.iter().any(|(_, t)| t.matches(token)) {
            return Err(bad(i + 1, "this token is on an earlier line too"));
        }
        let token = BearerToken::new(token).ok_or_else(|| bad(i + 1, "an empty token"))?;
        tokens.push((tenant.to_owned(), token));
    }
    Ok(tokens)
}

/// Who a TCP client holding a token is: the principal its results belong
/// to, and its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenHolder {
    /// Whose results it may read.
    pub principal: crate::dispatch::Principal,
    /// Whose quotas, budgets and share it counts in.
    pub tenant: crate::dispatch::TenantId,
}

/// Every token a TCP client may present: the daemon's (`auth_token`, its
/// holders the default tenant's) and each tenant's. A given token is
/// compared with every one, each in constant time, so the time taken says
/// nothing of which one (if any) it nearly is.
#[derive(Clone)]
pub struct ClientTokens(Vec<(BearerToken, TokenHolder)>);

impl fmt::Debug for ClientTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientTokens({} tokens)", self.0.len())
    }
}

impl ClientTokens {
    /// The tokens, `None` when there are none (no token is required).
    pub fn new(tokens: Vec<(BearerToken, TokenHolder)>) -> Option<Self> {
        (!tokens.is_empty()).then_some(ClientTokens(tokens))
    }

    /// Who holds `given`, if anyone.
    pub fn holder(&self, given: &str) -> Option<TokenHolder> {
        let mut found = None;
        for (token, holder) in &self.0 {
            // No early exit: every token is compared.
            if token.matches(given) {
                found = Some(*holder);
            }
        }
        found
    }

    /// Who holds the token an `authorization` header's value carries
    /// (`Bearer <token>`), if anyone.
    pub fn holder_of_header(&self, authorization: Option<&str>) -> Option<TokenHolder> {
        self.holder(authorization?.strip_prefix("Bearer ")?)
    }
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
