//! `wss://` to the simulator with a certificate made at test time, trusted
//! through the daemon's extra-CA setting; and refused without it.

mod common;

use common::*;
use runwared::connection::ConnectionState;
use runwared::pb;
use runwared::server::Daemon;
use runwared::tools::sim::{SimConfig, SimHandle, server_tls};

struct Pki {
    cert_pem: String,
    key_pem: String,
}

fn self_signed() -> Pki {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    Pki {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
    }
}

async fn tls_sim(pki: &Pki) -> SimHandle {
    let tls = server_tls(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    SimHandle::bind(loopback0(), SimConfig::default(), Some(tls))
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn wss_with_an_extra_ca_works() {
    init_test_logging();
    let pki = self_signed();
    let sim = tls_sim(&pki).await;
    assert!(sim.url().starts_with("wss://127.0.0.1:"));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.cert_pem).unwrap();

    let mut config = test_config(sim.url());
    config.extra_ca = Some(ca);
    let daemon = Daemon::start(config).await.unwrap();
    let mut client = client_for(&daemon).await;
    let resp = client
        .prompt_enhance(pb::PromptEnhanceRequest {
            prompt: "over TLS".into(),
            prompt_versions: Some(2),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.versions.len(), 2);
    assert_eq!(sim.stats().borrow().authentications, 1);
}

#[tokio::test(start_paused = true)]
async fn an_untrusted_certificate_is_refused() {
    init_test_logging();
    let pki = self_signed();
    let sim = tls_sim(&pki).await;
    let daemon = Daemon::start(test_config(sim.url())).await.unwrap();
    let status = wait_status(&daemon, |s| s.last_error.is_some()).await;
    let error = status.last_error.unwrap();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert_ne!(status.state, ConnectionState::Ready);
    assert_eq!(sim.stats().borrow().authentications, 0);
}
