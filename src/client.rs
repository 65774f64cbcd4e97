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
