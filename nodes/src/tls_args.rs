//! The flags for TLS to microservices, shared by `run` and `demo`.

use std::path::PathBuf;

use clap::Args;
use wellspring_actors::http::{ClientIdentity, TlsSettings};

#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificates of a private CA that HTTPS services' certificates chain to
    /// (trusted besides the system's roots).
    #[arg(long, value_name = "FILE", env = "WELLSPRING_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM, with its chain) for services that ask for one (mutual
    /// TLS); needs --client-key.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl TlsArgs {
    pub fn settings(&self) -> TlsSettings {
        TlsSettings {
            ca_file: self.ca_file.clone(),
            client_identity: match (&self.client_cert, &self.client_key) {
                (Some(certificate), Some(key)) => Some(ClientIdentity {
                    certificate: certificate.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
        }
    }
}
