//! The kinds of value a setting takes beyond numbers and text: a listener
//! that may be off, a TCP address or a socket path, a duration.

use super::*;

/// Where a listener listens: a TCP address, or a Unix socket path (one
/// that starts with `/` or `.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

/// A listener's address that is neither a TCP address nor a socket path.
#[derive(Debug, thiserror::Error)]
#[error("{0} (an address like 127.0.0.1:7434, or a socket path)")]
pub struct EndpointError(#[from] std::net::AddrParseError);

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, EndpointError> {
        if s.starts_with('/') || s.starts_with('.') {
            Ok(Endpoint::Unix(PathBuf::from(s)))
        } else {
            Ok(Endpoint::Tcp(s.parse()?))
        }
    }
}

impl SwitchValue for Endpoint {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(a) => a.write(f),
            Endpoint::Unix(p) => p.write(f),
        }
    }
}

/// A listener address or path that "none" (or empty) switches off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch<T> {
    /// Turned off (`none`).
    Off,
    /// On, with this value.
    On(T),
}

impl<T: Clone> Switch<T> {
    /// The value, when on.
    pub fn on(&self) -> Option<T> {
        match self {
            Switch::Off => None,
            Switch::On(v) => Some(v.clone()),
        }
    }
}

impl<T: std::str::FromStr> std::str::FromStr for Switch<T>
where
    T::Err: std::error::Error + 'static,
{
    type Err = SwitchError<T::Err>;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("none") {
            return Ok(Switch::Off);
        }
        s.parse().map(Switch::On).map_err(|source| SwitchError {
            given: s.to_owned(),
            source,
        })
    }
}

impl<T: SwitchValue> fmt::Display for Switch<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Switch::Off => f.write_str("none"),
            Switch::On(v) => v.write(f),
        }
    }
}

impl SwitchValue for SocketAddr {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl SwitchValue for PathBuf {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.display(), f)
    }
}

impl<T: SwitchValue> Serialize for Switch<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de, T: std::str::FromStr> Deserialize<'de> for Switch<T>
where
    T::Err: std::error::Error + 'static,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A switch's value that its type does not take.
#[derive(Debug, thiserror::Error)]
#[error("{given:?}: {source}")]
pub struct SwitchError<E: std::error::Error + 'static> {
    given: String,
    source: E,
}

/// How a [`Switch`]'s value is written back as text.
pub trait SwitchValue {
    /// Writes the value as a flag takes it.
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// Durations as text ("250ms", "30s", "2m"), in the TOML file and between
/// the layers.
pub(super) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() == 0 {
            s.collect_str(&format_args!("{}s", d.as_secs()))
        } else if d.subsec_nanos() % 1_000_000 == 0 {
            s.collect_str(&format_args!("{}ms", d.as_millis()))
        } else {
            s.collect_str(&format_args!("{}", d.as_secs_f64()))
        }
    }

    /// Text ("30s"), or a bare number of seconds (`30`, `0.5`), as the
    /// flags take it.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Text(String),
            Seconds(f64),
        }
        match Given::deserialize(d)? {
            Given::Text(t) => super::parse_duration(&t),
            Given::Seconds(n) => super::parse_duration(&n.to_string()),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// Why a text is not a duration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DurationError {
    /// The text before the unit is not a number.
    #[error("{0:?} is not a duration like 250ms, 30s, 2m")]
    NotANumber(String),
    /// The unit is none of ms, s, m, h.
    #[error("unknown unit {unit:?} in {given:?} (use ms, s, m or h)")]
    Unit {
        /// The unit given.
        unit: String,
        /// The whole text.
        given: String,
    },
    /// The number is negative, too large or not finite.
    #[error("{given:?}: {source}")]
    OutOfRange {
        /// The whole text.
        given: String,
        /// Why it is out of range.
        source: std::time::TryFromFloatSecsError,
    },
}

/// Parses "250ms", "30s", "2m", "1h", or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_owned()))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(DurationError::Unit {
                unit: other.to_owned(),
                given: s.to_owned(),
            });
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|source| DurationError::OutOfRange {
        given: s.to_owned(),
        source,
    })
}
