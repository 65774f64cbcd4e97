//! Connecting to a running daemon, over TCP or its Unix socket. Used by the
//! command-line client and by the tests.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pb::runware_client::RunwareClient;

/// Where the daemon listens.
#[derive(Debug, Clone)]
pub enum Target {
    /// `http://host:port`.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Target {
    /// A TCP address as a user writes it: `http://host:port`, or a bare
    /// `host:port` (as the daemon's `--listen` takes it), which means plain
    /// HTTP/2.
    pub fn tcp(addr: &str) -> Self {
        if addr.contains("://") {
            Target::Tcp(addr.to_owned())
        } else {
            Target::Tcp(format!("http://{addr}"))
        }
    }
}

/// Opens a gRPC channel to the daemon.
pub async fn connect(target: &Target) -> Result<RunwareClient<Channel>, tonic::transport::Error> {
    let channel = match target {
        Target::Tcp(addr) => Endpoint::from_shared(addr.clone())?.connect().await?,
        Target::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await?
        }
    };
    Ok(RunwareClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20))
}

/// An image whose `imageUUID` cannot name a file.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("Runware sent an image whose imageUUID {0:?} is not a UUID; not saving it")]
pub struct NotAnImageUuid(pub String);

/// The file an image is saved as: its `imageUUID`, which comes from the
/// server, so only a plain UUID is taken (never `/`, `..` or a path).
pub fn image_file_name(image_uuid: &str, extension: &str) -> Result<String, NotAnImageUuid> {
    let canonical = uuid::Uuid::try_parse(image_uuid)
        .ok()
        .map(|u| u.hyphenated().to_string())
        .filter(|c| c.eq_ignore_ascii_case(image_uuid));
    match canonical {
        Some(name) => Ok(format!("{name}.{extension}")),
        None => Err(NotAnImageUuid(image_uuid.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_address_means_plain_http() {
        let url = |a: &str| match Target::tcp(a) {
            Target::Tcp(u) => u,
            Target::Unix(_) => unreachable!(),
        };
        assert_eq!(url("127.0.0.1:7433"), "http://127.0.0.1:7433");
        assert_eq!(url("[::1]:7433"), "http://[::1]:7433");
        assert_eq!(url("http://127.0.0.1:7433"), "http://127.0.0.1:7433");
        assert_eq!(url("https://daemon:7433"), "https://daemon:7433");
    }

    use super::image_file_name;

    #[test]
    fn image_files_are_named_only_by_plain_uuids() {
        assert_eq!(
            image_file_name("1D4C0E6A-7B1F-4A9E-8C2D-3E4F5A6B7C8D", "jpg").unwrap(),
            "1d4c0e6a-7b1f-4a9e-8c2d-3e4f5a6b7c8d.jpg"
        );
        for bad in [
            "../../etc/passwd",
            "/tmp/x",
            "1d4c0e6a-7b1f-4a9e-8c2d-3e4f5a6b7c8d/../x",
            "{1d4c0e6a-7b1f-4a9e-8c2d-3e4f5a6b7c8d}",
            "urn:uuid:1d4c0e6a-7b1f-4a9e-8c2d-3e4f5a6b7c8d",
            "",
        ] {
            let e = image_file_name(bad, "png").unwrap_err();
            assert!(e.to_string().contains("not a UUID"), "{bad}: {e}");
        }
    }
}
