//! HTTP tasks over TLS: a loopback HTTPS service with a certificate from a CA made here,
//! reached with `--ca-file`; refused without it; a service that asks for a client
//! certificate (mutual TLS) reached with one, refused without; unreadable files named.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wellspring_actors::http::{
    ClientIdentity, HttpClientError, HttpRequest, HttpTransport, ReqwestTransport, TlsSettings,
};
use wellspring_protocol::spec::Method;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all from the CA,
/// written as PEM files into a temporary directory.
struct Pki {
    dir: PathBuf,
    ca_der: CertificateDer<'static>,
    server: (CertificateDer<'static>, PrivateKeyDer<'static>),
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("wellspring-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Wellspring test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![purpose];
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert, key)
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            vec!["wellspring-0".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        std::fs::write(dir.join("client.pem"), client_cert.pem()).unwrap();
        std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
        Pki {
            ca_der: ca_cert.der().clone(),
            server: (
                server_cert.der().clone(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            ),
            dir,
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn client_identity(&self) -> ClientIdentity {
        ClientIdentity {
            certificate: self.path("client.pem"),
            key: self.path("client.key"),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTPS service on loopback answering every request with a JSON body that echoes
/// what it was sent (HTTP/1.1, one request per connection). With `client_ca`, it asks
/// for a client certificate from that CA and refuses connections without one.
async fn https_service(pki: &Pki, client_ca: bool) -> String {
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap();
    let builder = if client_ca {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            )
            .build()
            .unwrap(),
        )
    } else {
        builder.with_no_client_auth()
    };
    let config = builder
        .with_single_cert(vec![pki.server.0.clone()], pki.server.1.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&request);
                let line = head.lines().next().unwrap_or_default().to_owned();
                let body = format!("{{\"request\":{:?},\"over\":\"tls\"}}", line);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    format!("https://127.0.0.1:{}/v1/images/metrics", address.port())
}

fn post(url: &str) -> HttpRequest {
    HttpRequest {
        method: Method::Post,
        url: url.to_owned(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Some(Bytes::from_static(b"{}")),
    }
}

async fn call(settings: &TlsSettings, url: &str) -> Result<String, String> {
    let transport = ReqwestTransport::with_tls(settings).unwrap();
    transport
        .send(post(url), Duration::from_secs(10))
        .await
        .map(|response| {
            assert_eq!(response.status, 200);
            String::from_utf8_lossy(&response.body).into_owned()
        })
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn an_https_service_is_reached_with_the_private_ca_and_refused_without_it() {
    let pki = Pki::new("ca");
    let url = https_service(&pki, false).await;
    let with_ca = TlsSettings {
        ca_file: Some(pki.path("ca.pem")),
        client_identity: None,
    };
    let body = call(&with_ca, &url).await.unwrap();
    assert!(body.contains("POST /v1/images/metrics"), "{body}");

    let error = call(&TlsSettings::default(), &url).await.unwrap_err();
    eprintln!("without the CA: {error}");
    assert!(
        error.contains("could not connect") && error.contains("certificate"),
        "refused at the handshake, for its certificate: {error}"
    );
}

#[tokio::test]
async fn a_service_that_asks_for_a_client_certificate_gets_one() {
    let pki = Pki::new("mtls");
    let url = https_service(&pki, true).await;
    let mutual = TlsSettings {
        ca_file: Some(pki.path("ca.pem")),
        client_identity: Some(pki.client_identity()),
    };
    let body = call(&mutual, &url).await.unwrap();
    assert!(body.contains("\"over\":\"tls\""), "{body}");

    let without = TlsSettings {
        ca_file: Some(pki.path("ca.pem")),
        client_identity: None,
    };
    assert!(
        call(&without, &url).await.is_err(),
        "a service that requires a client certificate refuses a client without one"
    );
}

#[test]
fn unreadable_or_empty_files_are_named() {
    let pki = Pki::new("bad");
    let missing = TlsSettings {
        ca_file: Some(pki.path("no-such-ca.pem")),
        client_identity: None,
    };
    match ReqwestTransport::with_tls(&missing) {
        Err(e @ HttpClientError::Read { .. }) => {
            assert!(e.to_string().contains("no-such-ca.pem"), "{e}")
        }
        Err(e) => panic!("expected a read error, got {e}"),
        Ok(_) => panic!("a missing CA file is refused"),
    }
    std::fs::write(pki.path("empty.pem"), "not a certificate\n").unwrap();
    let empty = TlsSettings {
        ca_file: Some(pki.path("empty.pem")),
        client_identity: None,
    };
    match ReqwestTransport::with_tls(&empty) {
        Err(e @ HttpClientError::Pem { .. }) => {
            assert!(e.to_string().contains("empty.pem"), "{e}")
        }
        Err(e) => panic!("expected a PEM error, got {e}"),
        Ok(_) => panic!("a CA file without certificates is refused"),
    }
}

#[test]
fn run_names_a_missing_ca_file_and_exits_2() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wellspring"))
        .args(["run", "--http-addr", "127.0.0.1:0"])
        .args(["--ca-file", "/nonexistent/wellspring-ca.pem"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("/nonexistent/wellspring-ca.pem"),
        "{stderr}"
    );
}
