//! The external CA client against a real `cfssl serve` (Debian package
//! golang-cfssl; `scripts/test` installs it). Each test starts its own signer
//! on a free loopback port, with a root made by `baton_pki::ClusterCa`, a TLS
//! certificate for 127.0.0.1 under that root, and the profiles of
//! `docs/design/external_ca.md`.
//!
//! Without cfssl the tests print "skipping: cfssl not installed" and pass,
//! except under CI (env `CI` set), where they fail.

use baton_testkit::files::{contains, files_under};
use std::collections::BTreeSet;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_manager::external_ca::{ExternalCa, ExternalCaError, SignRequest};
use baton_manager::identity::ExternalCaInit;
use baton_manager::runtime::{self, ManagerConfig, RunningManager};
use baton_pki::{ClusterCa, ExpectedIdentity, JoinToken, Role, check_issued, generate_csr};
use baton_rpc::client::{CaClient, GrpcDispatcher};
use baton_rpc::server::CaError;
use baton_rpc::tls::{ClientTls, HotCert};
use baton_rpc::{Dispatcher, NodeDescription, transport};
use baton_spec::{DriverKind, Resources};
use baton_state::{NodeId, NodeRole};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, SanType,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const AUTH_KEY: &str = "8c7b3f0d5e2a41969b1e0f2c7d3a5b6e";
const CLUSTER: &str = "c1";

/// The signing policy: only the public key is taken from the CSR
/// (`CSRWhitelist`), so subject, SANs and `CA:true` asked for by a CSR are
/// dropped and the manager's subject and hosts are used instead.
fn cfssl_config(auth_key: &str) -> String {
    let whitelist = r#", "CSRWhitelist": { "PublicKey": true, "PublicKeyAlgorithm": true, "SignatureAlgorithm": true }"#;
    cfssl_config_with(auth_key, whitelist)
}

/// The policy with `whitelist` appended to each baton profile.
fn cfssl_config_with(auth_key: &str, whitelist: &str) -> String {
    format!(
        r#"{{
  "signing": {{
    "default": {{ "expiry": "1h", "usages": ["digital signature"], "auth_key": "baton"{whitelist} }},
    "profiles": {{
      "baton-node": {{
        "expiry": "1h",
        "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
        "auth_key": "baton"{whitelist}
      }},
      "baton-admin": {{
        "expiry": "1h",
        "usages": ["digital signature", "client auth"],
        "auth_key": "baton"{whitelist}
      }}
    }}
  }},
  "auth_keys": {{ "baton": {{ "type": "standard", "key": "{auth_key}" }} }}
}}"#
    )
}

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit")
}

/// Whether cfssl can run here; under CI its absence is a failure.
fn cfssl_installed() -> bool {
    let found = Command::new("cfssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "cfssl is not installed (apt-get install golang-cfssl; scripts/test does it)"
        );
        eprintln!("skipping: cfssl not installed");
    }
    found
}

/// A running `cfssl serve`, killed on drop.
struct Signer {
    child: Child,
    dir: tempfile::TempDir,
    root: ClusterCa,
    url: String,
}

impl Drop for Signer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Signer {
    async fn start() -> Signer {
        Signer::start_with(&cfssl_config(AUTH_KEY)).await
    }

    /// Starts cfssl with `config` on a free port. Tests run in parallel, so
    /// another test's signer can take the port between the probe and cfssl's
    /// bind; that attempt is then dropped and another port tried.
    async fn start_with(config: &str) -> Signer {
        let mut failures = Vec::new();
        for _ in 0..5 {
            let mut signer = Signer::spawn(config);
            match signer.wait_ready().await {
                Ok(()) => return signer,
                Err(why) => failures.push(format!("{why}\n{}", signer.log())),
            }
        }
        panic!("cfssl serve did not start:\n{}", failures.join("\n"));
    }

    fn spawn(config: &str) -> Signer {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = now();
        let root = ClusterCa::generate(CLUSTER, now, Duration::from_secs(86_400)).expect("root");
        let (tls_key, tls_cert) = tls_cert_for_loopback(&root, now);
        let path = |name: &str| dir.path().join(name);
        fs::write(path("root.pem"), root.cert_pem()).expect("write");
        fs::write(path("root-key.pem"), root.key_pem()).expect("write");
        fs::write(path("srv.pem"), tls_cert).expect("write");
        fs::write(path("srv-key.pem"), tls_key).expect("write");
        fs::write(path("cfg.json"), config).expect("write");
        let log = fs::File::create(path("cfssl.log")).expect("log");

        let port = free_port();
        let child = Command::new("cfssl")
            .current_dir(dir.path())
            .args(["serve", "-address", "127.0.0.1", "-port", &port.to_string()])
            .args(["-ca", "root.pem", "-ca-key", "root-key.pem"])
            .args(["-config", "cfg.json"])
            .args(["-tls-cert", "srv.pem", "-tls-key", "srv-key.pem"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn cfssl serve");
        Signer {
            child,
            dir,
            root,
            url: format!("https://127.0.0.1:{port}/api/v1/cfssl/authsign"),
        }
    }

    /// Polls until this signer answers a (bad) sign request over TLS verified
    /// against its own root: then it is listening, and it is this test's
    /// signer, not another test's on a reused port.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = self.client();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("cfssl serve exited ({status})"));
            }
            let probe = self.request("not a csr", "probe", Role::Worker);
            match client.sign(&probe).await {
                Err(ExternalCaError::Unreachable { message, .. })
                    if message.contains("Connection refused") => {}
                Err(ExternalCaError::Unreachable { message, .. }) => {
                    return Err(format!("another server on the port: {message}"));
                }
                Ok(_) | Err(_) => return Ok(()),
            }
            if Instant::now() > deadline {
                return Err("cfssl serve not listening after 20s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("cfssl.log")).unwrap_or_default()
    }

    fn client(&self) -> ExternalCa {
        ExternalCa::new(&self.url, AUTH_KEY, self.root.cert_pem()).expect("client")
    }

    /// Signs through the client; a failure panics with the signer's log.
    async fn sign_ok(&self, csr_pem: &str, name: &str, role: Role) -> String {
        self.client()
            .sign(&self.request(csr_pem, name, role))
            .await
            .unwrap_or_else(|e| panic!("signed: {e}\n{}", self.log()))
    }

    fn request<'a>(&'a self, csr_pem: &'a str, name: &'a str, role: Role) -> SignRequest<'a> {
        SignRequest {
            csr_pem,
            common_name: name,
            role,
            cluster_id: CLUSTER,
            expected_roots_pem: self.root.cert_pem(),
        }
    }
}

/// A port nothing listens on now and that no other test of this process got.
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("lock");
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The signer's own TLS certificate: 127.0.0.1 as an IP SAN, under `root`.
fn tls_cert_for_loopback(root: &ClusterCa, now: i64) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "cfssl signer");
    params.subject_alt_names = vec![SanType::IpAddress(Ipv4Addr::LOCALHOST.into())];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.is_ca = IsCa::ExplicitNoCa;
    params.not_before = time_at(now - 60);
    params.not_after = time_at(now + 86_400);
    let ca_key = KeyPair::from_pem(&root.key_pem()).expect("root key");
    let issuer = Issuer::from_ca_cert_der(&root.cert_der().to_vec().into(), &ca_key).expect("ca");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    (key.serialize_pem(), cert.pem())
}

fn time_at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).expect("time")
}

fn leaf(cert_pem: &str) -> Vec<u8> {
    baton_pki::certificate_der(cert_pem).expect("der")
}

/// The DNS SANs, the basicConstraints CA flag and (server auth, client auth).
fn names_ca_and_usages(der: &[u8]) -> (Vec<String>, bool, (bool, bool)) {
    let (_, cert) = X509Certificate::from_der(der).expect("parse");
    let names = cert
        .subject_alternative_name()
        .expect("san")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => (*d).to_owned(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let ca = cert
        .basic_constraints()
        .expect("bc")
        .is_some_and(|bc| bc.value.ca);
    let eku = cert.extended_key_usage().expect("eku").expect("has eku");
    (names, ca, (eku.value.server_auth, eku.value.client_auth))
}

#[tokio::test]
async fn a_worker_csr_is_signed_with_the_node_id_as_cn_and_san() {
    if !cfssl_installed() {
        return;
    }
    let signer = Signer::start().await;
    let (_key, csr) = generate_csr().expect("csr");
    let cert = signer.sign_ok(&csr, "node-7", Role::Worker).await;

    let expected = ExpectedIdentity {
        name: "node-7",
        role: Role::Worker,
        cluster_id: CLUSTER,
    };
    check_issued(&cert, &csr, &expected, signer.root.cert_pem(), now()).expect("checked");
    assert_is_worker_node_7(&cert);
}

#[tokio::test]
async fn what_a_csr_asks_for_is_ignored() {
    if !cfssl_installed() {
        return;
    }
    let signer = Signer::start().await;
    let (_key, csr) = greedy_csr();

    let cert = signer.sign_ok(&csr, "node-7", Role::Worker).await;
    assert_is_worker_node_7(&cert);
}

#[tokio::test]
async fn the_admin_profile_gives_a_client_only_certificate_without_san() {
    if !cfssl_installed() {
        return;
    }
    let signer = Signer::start().await;
    let (_key, csr) = generate_csr().expect("csr");
    let cert = signer.sign_ok(&csr, "alice", Role::Admin).await;
    let identity = baton_pki::peer_identity(&leaf(&cert)).expect("identity");
    assert_eq!(
        (identity.node_id.as_str(), identity.role),
        ("alice", Role::Admin)
    );
    assert_eq!(
        names_ca_and_usages(&leaf(&cert)),
        (vec![], false, (false, true))
    );
}

#[tokio::test]
async fn a_wrong_auth_key_is_refused_by_the_signer() {
    if !cfssl_installed() {
        return;
    }
    let signer = Signer::start().await;
    let wrong_key = "00112233445566778899aabbccddeeff";
    let client = ExternalCa::new(&signer.url, wrong_key, signer.root.cert_pem()).expect("client");
    let (_key, csr) = generate_csr().expect("csr");
    let err = client
        .sign(&signer.request(&csr, "node-7", Role::Worker))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, ExternalCaError::Refused { status: 400, messages, .. }
            if messages == &["invalid token (code 400)".to_owned()]),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&signer.url) && text.contains("invalid token"),
        "{text}"
    );
    assert!(
        !text.contains(wrong_key) && !text.contains(AUTH_KEY),
        "{text}"
    );
    assert!(!err.is_transient());
}

#[test]
fn an_http_url_is_refused_at_construction() {
    let root = ClusterCa::generate(CLUSTER, now(), Duration::from_secs(3600)).expect("root");
    let err = ExternalCa::new(
        "http://127.0.0.1:8888/api/v1/cfssl/authsign",
        AUTH_KEY,
        root.cert_pem(),
    )
    .expect_err("http refused");
    assert!(matches!(err, ExternalCaError::Config(_)), "{err:?}");
    assert!(err.to_string().contains("https"), "{err}");
    let err = ExternalCa::new(
        "https://127.0.0.1:8888/api/v1/cfssl/authsign",
        "not-hex-secret",
        root.cert_pem(),
    )
    .expect_err("non-hex key refused");
    assert!(!err.to_string().contains("not-hex-secret"), "{err}");
}

#[tokio::test]
async fn a_signer_that_does_not_chain_to_the_trust_root_is_refused() {
    if !cfssl_installed() {
        return;
    }
    let signer = Signer::start().await;
    let other_root = ClusterCa::generate(CLUSTER, now(), Duration::from_secs(3600)).expect("root");
    let client = ExternalCa::new(&signer.url, AUTH_KEY, other_root.cert_pem()).expect("client");
    let (_key, csr) = generate_csr().expect("csr");
    let err = client
        .sign(&signer.request(&csr, "node-7", Role::Worker))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ExternalCaError::Unreachable { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&signer.url) && text.contains("UnknownIssuer"),
        "{text}"
    );

    // The right root, but a name the signer's certificate does not have.
    let by_name = signer.url.replace("127.0.0.1", "localhost");
    let client = ExternalCa::new(&by_name, AUTH_KEY, signer.root.cert_pem()).expect("client");
    let err = client
        .sign(&signer.request(&csr, "node-7", Role::Worker))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("not valid for name"), "{err}");
}

#[tokio::test]
async fn an_unknown_root_for_the_issued_certificate_is_refused() {
    if !cfssl_installed() {
        return;
    }
    // The signer is trusted for TLS but its certificates are checked against
    // another root: what it returns does not chain there.
    let signer = Signer::start().await;
    let other_root = ClusterCa::generate(CLUSTER, now(), Duration::from_secs(3600)).expect("root");
    let (_key, csr) = generate_csr().expect("csr");
    let request = SignRequest {
        expected_roots_pem: other_root.cert_pem(),
        ..signer.request(&csr, "node-7", Role::Worker)
    };
    let err = signer.client().sign(&request).await.expect_err("refused");
    assert!(
        matches!(err, ExternalCaError::BadCertificate { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("does not chain to the root"),
        "{err}"
    );
}

#[tokio::test]
async fn a_signer_that_copies_from_the_csr_is_caught() {
    if !cfssl_installed() {
        return;
    }
    // Without CSRWhitelist, cfssl copies the CSR's subject fields that the
    // request does not set, and its basic constraints.
    let signer = Signer::start_with(&cfssl_config_with(AUTH_KEY, "")).await;
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::LocalityName, "elsewhere");
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let err = signer
        .client()
        .sign(&signer.request(&csr, "node-7", Role::Worker))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ExternalCaError::BadCertificate { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("expected only CN, OU and O"),
        "{err}"
    );

    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let err = signer
        .client()
        .sign(&signer.request(&csr, "node-7", Role::Worker))
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("Policy violation request (code 5300)"),
        "{err}"
    );
}

/// `cert` names the worker `node-7` of [`CLUSTER`], with its id as its only
/// SAN, not a CA, for server and client auth.
fn assert_is_worker_node_7(cert: &str) {
    let identity = baton_pki::peer_identity(&leaf(cert)).expect("identity");
    assert_eq!(
        (
            identity.node_id.as_str(),
            identity.role,
            identity.cluster_id.as_str()
        ),
        ("node-7", Role::Worker, CLUSTER)
    );
    assert_eq!(
        names_ca_and_usages(&leaf(cert)),
        (vec!["node-7".to_owned()], false, (true, true))
    );
}

/// A CSR asking for another name, the manager role, another cluster, a
/// locality and `CA:true`: a joining node gets none of it.
fn greedy_csr() -> (KeyPair, String) {
    let key = KeyPair::generate().expect("key");
    let mut greedy = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "other");
    dn.push(DnType::OrganizationalUnitName, "manager");
    dn.push(DnType::OrganizationName, "other-cluster");
    dn.push(DnType::LocalityName, "elsewhere");
    greedy.distinguished_name = dn;
    greedy.subject_alt_names = vec![SanType::DnsName("other".try_into().expect("dns"))];
    greedy.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr = greedy
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key, csr)
}

/// A manager created around `signer`'s root, in `dir`.
async fn start_manager(signer: &Signer, dir: &Path) -> RunningManager {
    runtime::start(ManagerConfig {
        data_dir: dir.to_owned(),
        listen: (Ipv4Addr::LOCALHOST, 0).into(),
        api: (Ipv4Addr::LOCALHOST, 0).into(),
        advertise: None,
        cert_validity: Duration::from_secs(3600),
        node_down_grace: Duration::from_secs(60),
        external_ca: Some(ExternalCaInit {
            url: signer.url.clone(),
            auth_key: baton_state::Secret::new(AUTH_KEY.to_owned()),
            root_pem: signer.root.cert_pem().to_owned(),
        }),
        join: None,
        force_new_cluster: false,
    })
    .await
    .unwrap_or_else(|e| panic!("manager start: {e}\n{}", signer.log()))
}

/// A CA client over a channel that trusts the root the token names, as a
/// joining node makes it.
async fn ca_client(addr: &str, token: &str) -> (String, CaClient) {
    let token = JoinToken::parse(token).expect("token");
    let root = baton_rpc::client::fetch_root_ca(addr, token.ca_digest())
        .await
        .expect("root ca");
    let tls = ClientTls::new(&root, HotCert::empty()).expect("tls");
    let channel = transport::connect(addr, &tls).await.expect("connect");
    (root, CaClient::new(channel))
}

/// A dispatcher session presenting `cert_pem`/`key_pem` (mutual TLS).
async fn open_session(
    addr: &str,
    root: &str,
    cert_pem: &str,
    key_pem: &str,
    node_id: &str,
) -> baton_rpc::Session {
    let cert = HotCert::new(cert_pem, key_pem).expect("hot cert");
    let tls = ClientTls::new(root, cert).expect("tls");
    let channel = transport::connect(addr, &tls).await.expect("connect");
    GrpcDispatcher::new(channel)
        .open_session(NodeDescription {
            labels: Default::default(),
            node_id: NodeId(node_id.to_owned()),
            hostname: format!("host-{node_id}"),
            capacity: Resources {
                disk_bytes: 0,
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
            },
            drivers: BTreeSet::from([DriverKind::Raw]),
            version: "0.1.0".to_owned(),
            address: None,
        })
        .await
        .unwrap_or_else(|e| panic!("session of {node_id}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manager_around_an_external_ca_holds_no_root_key_and_relays_joins() {
    if !cfssl_installed() {
        return;
    }
    let mut signer = Signer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start_manager(&signer, dir.path()).await;
    let root_pem = signer.root.cert_pem().to_owned();

    // 1. The state knows the external CA and its root, and holds no root key.
    let cluster = running
        .store
        .snapshot()
        .state
        .cluster()
        .cloned()
        .expect("cluster");
    assert!(cluster.root_ca_key.is_none(), "no root key in the state");
    assert_eq!(
        cluster.external_ca.as_ref().map(|e| e.url.as_str()),
        Some(signer.url.as_str())
    );
    assert_eq!(cluster.root_ca_pem, root_pem);
    // The cluster id (the O of every certificate) is the manager's choice,
    // not the external root's subject.
    assert_eq!(cluster.id, running.cluster_id);
    let cluster_id = running.cluster_id.as_str();
    assert_eq!(running.root_pem.trim(), root_pem.trim());

    // ... nor anywhere in the data dir: no line of the root key's PEM body,
    // nor its DER, in any file.
    let key_pem = signer.root.key_pem();
    let body: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
        .collect();
    assert!(!body.is_empty(), "{key_pem}");
    let key_der: Vec<u8> = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(
                key_pem
                    .lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .expect("key der")
    };
    let files = files_under(dir.path());
    assert!(files.iter().any(|f| f.ends_with("state.redb")), "{files:?}");
    for file in &files {
        let bytes = fs::read(file).expect("read");
        for line in &body {
            assert!(
                !contains(&bytes, line.as_bytes()),
                "{} holds the root key",
                file.display()
            );
        }
        assert!(
            !contains(&bytes, &key_der),
            "{} holds the root key (der)",
            file.display()
        );
    }

    // 2. The manager's own certificate comes from the external CA: OU
    // manager, its node id, over its key, chaining to the external root.
    let manager_cert = fs::read_to_string(dir.path().join("node/cert.pem")).expect("cert");
    let data_key = baton_manager::keystore::data_key(dir.path()).expect("data key");
    let manager_key = baton_manager::identity::read_node_key(dir.path(), &data_key)
        .expect("key")
        .expect("a key");
    let manager_csr = CertificateParams::default()
        .serialize_request(&KeyPair::from_pem(&manager_key).expect("manager key"))
        .expect("csr")
        .pem()
        .expect("pem");
    check_issued(
        &manager_cert,
        &manager_csr,
        &ExpectedIdentity {
            name: &running.node_id.0,
            role: Role::Manager,
            cluster_id,
        },
        &root_pem,
        now(),
    )
    .expect("the manager's certificate is the external CA's");
    assert_eq!(
        names_ca_and_usages(&leaf(&manager_cert)),
        (vec![running.node_id.0.clone()], false, (true, true))
    );

    // 3. A worker joins through the manager, which relays to cfssl.
    let addr = running.cluster_addr.to_string();
    let token = running.created.as_ref().expect("created").worker.clone();
    let (root, mut ca) = ca_client(&addr, &token).await;
    assert_eq!(root.trim(), root_pem.trim());
    let (worker_key, csr) = generate_csr().expect("csr");
    let joined = ca
        .join(&csr, &token)
        .await
        .unwrap_or_else(|e| panic!("join: {e}\n{}", signer.log()));
    let worker_id = joined.node_id.clone();
    check_issued(
        &joined.cert_pem,
        &csr,
        &ExpectedIdentity {
            name: &worker_id.0,
            role: Role::Worker,
            cluster_id,
        },
        &root_pem,
        now(),
    )
    .expect("the worker's certificate is the external CA's");
    let identity = baton_pki::peer_identity(&leaf(&joined.cert_pem)).expect("identity");
    assert_eq!(
        (
            identity.node_id.as_str(),
            identity.role,
            identity.cluster_id.as_str()
        ),
        (worker_id.0.as_str(), Role::Worker, cluster_id)
    );
    assert_eq!(
        running
            .store
            .snapshot()
            .state
            .member(&worker_id)
            .map(|m| (m.role, m.cert_root.clone())),
        Some((NodeRole::Worker, cluster.root_digest.clone()))
    );

    // 4. What a CSR asks for is ignored: the node gets its id, worker, this
    // cluster, and no CA.
    let (_greedy_key, greedy) = greedy_csr();
    let other = ca
        .join(&greedy, &token)
        .await
        .unwrap_or_else(|e| panic!("greedy join: {e}\n{}", signer.log()));
    assert_ne!(other.node_id.0, "other");
    check_issued(
        &other.cert_pem,
        &greedy,
        &ExpectedIdentity {
            name: &other.node_id.0,
            role: Role::Worker,
            cluster_id,
        },
        &root_pem,
        now(),
    )
    .expect("the greedy node's certificate");
    assert_eq!(
        names_ca_and_usages(&leaf(&other.cert_pem)),
        (vec![other.node_id.0.clone()], false, (true, true))
    );

    // 5. The admin config (an admin certificate from cfssl) works, and the
    // manager and the worker, connected over mutual TLS with their cfssl
    // certificates, are listed.
    let admin = baton_api::ClientConfig::load(&running.admin_config).expect("admin config");
    let admin_cert = baton_pki::peer_identity(&leaf(&admin.cert)).expect("admin identity");
    assert_eq!(
        (admin_cert.role, admin_cert.cluster_id.as_str()),
        (Role::Admin, cluster_id)
    );
    let api = baton_api::ApiClient::new(&admin).expect("api client");
    api.health().await.expect("health");
    let manager_session = open_session(
        &addr,
        &root,
        &manager_cert,
        &manager_key,
        &running.node_id.0,
    )
    .await;
    let worker_session =
        open_session(&addr, &root, &joined.cert_pem, &worker_key, &worker_id.0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let nodes = loop {
        let nodes: BTreeSet<(String, String)> = api
            .list_nodes()
            .await
            .expect("list nodes")
            .into_iter()
            .map(|n| (n.id, n.role))
            .collect();
        if nodes.len() >= 2 || Instant::now() > deadline {
            break nodes;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        nodes,
        BTreeSet::from([
            (running.node_id.0.clone(), "manager".to_owned()),
            (worker_id.0.clone(), "worker".to_owned()),
        ])
    );

    // 6. A token with the right root but another secret is refused.
    let wrong = JoinToken::generate(&cluster.root_digest)
        .expect("token")
        .format();
    let (_key, csr) = generate_csr().expect("csr");
    let err = ca.join(&csr, &wrong).await.expect_err("wrong token");
    assert!(matches!(err, CaError::PermissionDenied(_)), "{err:?}");

    // 7. With the signer gone a join fails, says why, and admits no one.
    let members = running.store.snapshot().state.members().count();
    signer.child.kill().expect("kill cfssl");
    signer.child.wait().expect("wait cfssl");
    let err = ca.join(&csr, &token).await.expect_err("signer down");
    assert!(matches!(err, CaError::Unavailable(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("unreachable") && text.contains(&signer.url),
        "{text}"
    );
    assert!(!text.contains(AUTH_KEY), "{text}");
    assert_eq!(running.store.snapshot().state.members().count(), members);

    // A manager stops with sessions still open: it ends them itself.
    tokio::time::timeout(std::time::Duration::from_secs(30), running.stop())
        .await
        .expect("the manager stops while agents hold sessions");
    drop((manager_session, worker_session));
}
