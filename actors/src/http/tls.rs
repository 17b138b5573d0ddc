//! How HTTP tasks reach HTTPS microservices: rustls (aws-lc-rs) with the system's roots,
//! a private CA added to them, and a client certificate for mutual TLS.

use std::path::{Path, PathBuf};

/// A client certificate (with its chain) and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// TLS for calls to services. The default trusts the system's roots only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificates of a private CA, trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Presented when a service asks for a client certificate.
    pub client_identity: Option<ClientIdentity>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {what} {path} holds no usable PEM ({reason})")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("could not build the HTTP client: {0}")]
    Build(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, HttpClientError> {
    std::fs::read(path).map_err(|source| HttpClientError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A client builder with `settings` applied (no proxy, keep-alive pool, no Nagle).
pub fn client_builder(settings: &TlsSettings) -> Result<reqwest::ClientBuilder, HttpClientError> {
    let mut builder = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .no_proxy();
    if let Some(path) = &settings.ca_file {
        let what = "CA file (--ca-file)";
        let pem = read(what, path)?;
        let certificates =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| HttpClientError::Pem {
                what,
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if certificates.is_empty() {
            return Err(HttpClientError::Pem {
                what,
                path: path.clone(),
                reason: "no CERTIFICATE block".into(),
            });
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some(identity) = &settings.client_identity {
        let mut pem = read("client certificate (--client-cert)", &identity.certificate)?;
        pem.push(b'\n');
        pem.extend(read("client key (--client-key)", &identity.key)?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| HttpClientError::Pem {
            what: "client certificate and key",
            path: identity.certificate.clone(),
            reason: e.to_string(),
        })?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}
