//! How a client of a manager (a node on the cluster port, a user on the
//! HTTPS API) decides that it reached a manager of its cluster.
//!
//! Cluster certificates name node ids, not host names, so a client cannot
//! check the name it dialled. [`ManagerVerifier`] verifies the server by the
//! identity in its certificate instead: the chain must lead to the cluster
//! root (webpki: signatures, validity, server-auth usage) and the certificate
//! must say `manager`. A worker certificate, which chains to the same root,
//! therefore cannot pose as a manager.
//!
//! This is the one implementation both transports are meant to share; it
//! takes the crypto provider explicitly and relies on no process default.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{PkiError, Role, peer_identity};

/// A trust store holding every certificate of a PEM bundle (the cluster root).
pub fn root_cert_store(root_ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| PkiError::InvalidCertificate(format!("root ca: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| PkiError::InvalidCertificate(format!("root ca: {e}")))?;
    }
    if roots.is_empty() {
        return Err(PkiError::InvalidCertificate(
            "root ca: no certificate in the pem".to_owned(),
        ));
    }
    Ok(roots)
}

/// Verifies a server certificate by its cluster identity rather than by a
/// host name: chain to the cluster root, and role manager.
#[derive(Debug)]
pub struct ManagerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ManagerVerifier {
    /// A verifier trusting only `root_ca_pem`, with `provider`'s algorithms.
    pub fn new(
        root_ca_pem: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<ManagerVerifier, PkiError> {
        let roots = Arc::new(root_cert_store(root_ca_pem)?);
        let inner = WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| PkiError::InvalidCertificate(format!("root ca: {e}")))?;
        Ok(ManagerVerifier { inner })
    }
}

fn refused(error: PkiError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(error),
    )))
}

impl ServerCertVerifier for ManagerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let identity = peer_identity(end_entity).map_err(refused)?;
        // Node certificates name their node id as their only DNS SAN, so
        // webpki's name check runs against the id the certificate states, and
        // everything else (chain, validity, usage) is webpki's. Admin client
        // certificates have no SAN and fail here, as they should.
        let name = ServerName::try_from(identity.node_id.clone()).map_err(|_| {
            refused(PkiError::InvalidCertificate(format!(
                "node id {:?} is not a valid certificate name",
                identity.node_id
            )))
        })?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)?;
        if identity.role != Role::Manager {
            return Err(refused(PkiError::InvalidCertificate(format!(
                "the server's certificate has role {}, not manager",
                identity.role
            ))));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{ClusterCa, certificate_der, generate_key_and_cert};

    const NOW: i64 = 1_800_000_000;
    const DAY: Duration = Duration::from_secs(86_400);

    fn verify(verifier: &ManagerVerifier, cert_pem: &str) -> Result<(), rustls::Error> {
        let der = CertificateDer::from(certificate_der(cert_pem).expect("der"));
        let name = ServerName::try_from("unrelated.example").expect("name");
        let at = UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(NOW + 60).expect("positive"),
        ));
        verifier
            .verify_server_cert(&der, &[], &name, &[], at)
            .map(|_| ())
    }

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    #[test]
    fn a_manager_of_the_cluster_is_accepted_whatever_name_was_dialled() {
        let ca = ClusterCa::generate("c1", NOW, 3650 * DAY).expect("ca");
        let verifier = ManagerVerifier::new(ca.cert_pem(), provider()).expect("verifier");
        let (_, cert) = generate_key_and_cert(&ca, "m1", Role::Manager, NOW, DAY).expect("cert");
        verify(&verifier, &cert).expect("manager accepted");
    }

    #[test]
    fn workers_admins_and_other_clusters_are_refused() {
        let ca = ClusterCa::generate("c1", NOW, 3650 * DAY).expect("ca");
        let verifier = ManagerVerifier::new(ca.cert_pem(), provider()).expect("verifier");
        let (_, worker) = generate_key_and_cert(&ca, "w1", Role::Worker, NOW, DAY).expect("w");
        let err = verify(&verifier, &worker).expect_err("worker refused");
        assert!(err.to_string().contains("not manager"), "{err}");
        let (_, admin) = generate_key_and_cert(&ca, "admin", Role::Admin, NOW, DAY).expect("a");
        verify(&verifier, &admin).expect_err("admin refused");
        let other = ClusterCa::generate("c2", NOW, 3650 * DAY).expect("ca");
        let (_, foreign) = generate_key_and_cert(&other, "m1", Role::Manager, NOW, DAY).expect("m");
        verify(&verifier, &foreign).expect_err("another cluster's manager refused");
    }

    fn verify_chain(verifier: &ManagerVerifier, chain_pem: &str) -> Result<(), rustls::Error> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("pem");
        let (leaf, intermediates) = chain.split_first().expect("leaf");
        let name = ServerName::try_from("unrelated.example").expect("name");
        let at = UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(NOW + 60).expect("positive"),
        ));
        verifier
            .verify_server_cert(leaf, intermediates, &name, &[], at)
            .map(|_| ())
    }

    #[test]
    fn a_cross_signed_new_root_bridges_a_root_rotation() {
        let old = ClusterCa::generate("c1", NOW, 3650 * DAY).expect("old");
        let new = ClusterCa::generate("c1", NOW, 3650 * DAY).expect("new");
        assert_ne!(old.cert_pem(), new.cert_pem());
        let cross = old.cross_sign(&new, NOW).expect("cross-sign");
        let (_, leaf) = generate_key_and_cert(&new, "m1", Role::Manager, NOW, DAY).expect("m");
        let chain = format!("{leaf}{cross}");
        // A peer that still trusts only the old root accepts the new
        // certificate through the cross-signed intermediate...
        let old_only = ManagerVerifier::new(old.cert_pem(), provider()).expect("verifier");
        verify_chain(&old_only, &chain).expect("old root accepts via the cross-signed cert");
        verify(&old_only, &leaf).expect_err("but not the bare new leaf");
        // ...a peer that trusts the new root accepts it directly, with or
        // without the intermediate...
        let new_only = ManagerVerifier::new(new.cert_pem(), provider()).expect("verifier");
        verify_chain(&new_only, &chain).expect("new root accepts the chain");
        verify(&new_only, &leaf).expect("new root accepts the leaf");
        // ...and the cross-signed certificate lends nothing to another root.
        let stranger = ClusterCa::generate("c1", NOW, 3650 * DAY).expect("stranger");
        let stranger_only = ManagerVerifier::new(stranger.cert_pem(), provider()).expect("v");
        verify_chain(&stranger_only, &chain).expect_err("an unrelated root refuses");
        // The cross-signed certificate may sign leaves only.
        let der = certificate_der(&cross).expect("der");
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let constraints = parsed
            .basic_constraints()
            .expect("ext")
            .expect("present")
            .value;
        assert!(constraints.ca);
        assert_eq!(constraints.path_len_constraint, Some(0));
    }

    #[test]
    fn an_empty_root_is_an_error() {
        let err = ManagerVerifier::new("", provider()).expect_err("empty");
        assert!(err.to_string().contains("no certificate"), "{err}");
    }
}
