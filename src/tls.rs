//! TLS for the HTTPS listener (`server.tls`): the rustls server settings
//! built from the certificate chain and key files, with HTTP/2 and
//! HTTP/1.1 offered through ALPN.
//!
//! The files are read at startup and again at every reload, so a renewed
//! certificate is served after `navigator -s reload`. Connections already
//! open keep the certificate they were established with.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::schema::Tls;

/// The server settings a TLS listener uses for its next handshake; a
/// reload stores new ones.
pub type SharedConfig = Arc<ArcSwap<ServerConfig>>;

/// ALPN protocols offered, most preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Reads the certificate chain and private key named by `tls` and builds
/// the rustls settings. The error names the file and what is wrong.
pub fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>, String> {
    let certificates = read_certificates(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|error| {
        format!(
            "server.tls.key: cannot read a PEM private key from {}: {error}",
            tls.key.display()
        )
    })?;
    // NOTE: ring offers no post-quantum key exchange, which is why rustls
    // 0.23.48 deprecated this provider; aws-lc-rs has it but needs a
    // large C build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("server.tls: unsupported protocol versions: {error}"))?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .map_err(|error| {
            format!(
                "server.tls: the key {} does not fit the certificate {}: {error}",
                tls.key.display(),
                tls.cert.display()
            )
        })?;
    config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iterator = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("server.tls.cert: cannot read {}: {error}", path.display()))?;
    let certificates = iterator.collect::<Result<Vec<_>, _>>().map_err(|error| {
        format!(
            "server.tls.cert: invalid PEM in {}: {error}",
            path.display()
        )
    })?;
    if certificates.is_empty() {
        return Err(format!(
            "server.tls.cert: no certificate in {}; expected PEM blocks starting with -----BEGIN CERTIFICATE-----",
            path.display()
        ));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Listen;

    fn write_pair(dir: &Path) -> Tls {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        Tls {
            listen: Listen::default(),
            cert,
            key,
        }
    }

    #[test]
    fn config_offers_h2_and_http11() {
        let dir = tempfile::tempdir().unwrap();
        let config = server_config(&write_pair(dir.path())).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn bad_files_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut tls = write_pair(dir.path());

        let missing = Tls {
            cert: dir.path().join("missing.pem"),
            ..tls.clone()
        };
        let error = server_config(&missing).unwrap_err();
        assert!(
            error.contains("server.tls.cert") && error.contains("missing.pem"),
            "{error}"
        );

        std::fs::write(dir.path().join("empty.pem"), "not pem\n").unwrap();
        let empty = Tls {
            cert: dir.path().join("empty.pem"),
            ..tls.clone()
        };
        let error = server_config(&empty).unwrap_err();
        assert!(error.contains("no certificate"), "{error}");

        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        std::fs::write(
            dir.path().join("other.key"),
            other.signing_key.serialize_pem(),
        )
        .unwrap();
        tls.key = dir.path().join("other.key");
        let error = server_config(&tls).unwrap_err();
        assert!(error.contains("does not fit"), "{error}");
    }
}
