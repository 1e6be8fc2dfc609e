//! The identity directory without a network: loading, crash recovery and
//! refusals, with certificates from a local `ClusterCa`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_pki::{ClusterCa, Role, generate_csr};

use super::files::IdentityFiles;
use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit i64")
}

fn ca(cluster: &str) -> ClusterCa {
    ClusterCa::generate(cluster, now(), DAY).expect("ca")
}

/// A key and a certificate for it, `(key, cert)`.
fn issue(
    ca: &ClusterCa,
    node_id: &str,
    role: Role,
    issued_at: i64,
    validity: Duration,
) -> (String, String) {
    let (key, csr) = generate_csr().expect("csr");
    let cert = match role {
        Role::Admin => ca.issue_client(&csr, node_id, issued_at, validity),
        _ => ca.issue(&csr, node_id, role, issued_at, validity),
    }
    .expect("issue");
    (key, cert)
}

fn write_identity(data_dir: &Path, root: &str, key: &str, cert: &str, node_id: &str) {
    IdentityFiles::new(data_dir)
        .write_joined(key, cert, root, node_id)
        .expect("write");
}

/// Loads with no token and an address nothing listens on: any network use fails.
async fn load_offline(data_dir: &Path) -> Result<NodeIdentity, IdentityError> {
    load_or_join(data_dir, "127.0.0.1:1", None).await
}

#[tokio::test]
async fn stored_identity_loads_without_a_token_and_syncs_the_agent_node_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca("c1");
    let (key, cert) = issue(&ca, "0123456789abcdef", Role::Worker, now(), DAY);
    write_identity(dir.path(), ca.cert_pem(), &key, &cert, "0123456789abcdef");
    fs::write(dir.path().join("node-id"), "ffffffffffffffff\n").expect("old id");

    let identity = load_offline(dir.path()).await.expect("load");
    assert_eq!(identity.node_id.0, "0123456789abcdef");
    assert_eq!(identity.role, Role::Worker);
    assert_eq!(identity.cluster_id, "c1");
    assert!(identity.cert.leaf().is_some());
    assert_eq!(
        fs::read_to_string(dir.path().join("node-id")).expect("agent id"),
        "0123456789abcdef\n"
    );
    let mode = fs::metadata(dir.path().join("identity/key.pem"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let debug = format!("{identity:?}");
    assert!(!debug.contains("PRIVATE"), "{debug}");
    assert!(debug.contains("0123456789abcdef"), "{debug}");
}

#[tokio::test]
async fn no_identity_and_no_token_says_how_to_join() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load_offline(dir.path()).await.expect_err("not joined");
    assert!(
        err.to_string()
            .starts_with("this node has not joined a cluster yet: pass --join ADDR --token TOKEN"),
        "{err}"
    );
    // A join interrupted before its node id was written counts as not joined.
    let ca = ca("c1");
    let (key, _cert) = issue(&ca, "abc", Role::Worker, now(), DAY);
    fs::create_dir_all(dir.path().join("identity")).expect("dir");
    fs::write(dir.path().join("identity/key.pem"), key).expect("key");
    let err = load_offline(dir.path()).await.expect_err("not joined");
    assert!(matches!(err, IdentityError::NotJoined { .. }), "{err}");
}

#[tokio::test]
async fn garbage_token_is_refused_before_any_network_and_never_echoed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = "BATON-1-zzzz-hunter2hunter2";
    let err = load_or_join(dir.path(), "127.0.0.1:1", Some(secret))
        .await
        .expect_err("garbage");
    let text = err.to_string();
    assert!(text.starts_with("invalid join token: "), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("zzzz"),
        "{text}"
    );
    assert!(!dir.path().join("identity").exists());
}

#[tokio::test]
async fn interrupted_renewal_is_finished_or_discarded_on_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca("c1");
    let (old_key, old_cert) = issue(&ca, "n1", Role::Worker, now(), DAY);
    write_identity(dir.path(), ca.cert_pem(), &old_key, &old_cert, "n1");
    let identity_dir = dir.path().join("identity");

    // Crash after the new key was staged, before the certificate: discarded.
    let (new_key, new_cert) = issue(&ca, "n1", Role::Worker, now(), DAY);
    fs::write(identity_dir.join("renew-key.pem"), &new_key).expect("stage");
    load_offline(dir.path()).await.expect("load");
    assert!(!identity_dir.join("renew-key.pem").exists());
    assert_eq!(
        fs::read_to_string(identity_dir.join("key.pem")).expect("key"),
        old_key
    );

    // Crash after the certificate, before the key: finished.
    fs::write(identity_dir.join("renew-key.pem"), &new_key).expect("stage");
    fs::write(identity_dir.join("cert.pem"), &new_cert).expect("cert");
    let identity = load_offline(dir.path()).await.expect("load");
    assert!(!identity_dir.join("renew-key.pem").exists());
    assert_eq!(
        fs::read_to_string(identity_dir.join("key.pem")).expect("key"),
        new_key
    );
    let leaf = identity.cert.leaf().expect("leaf");
    assert_eq!(
        leaf.as_ref(),
        baton_pki::certificate_der(&new_cert).expect("der")
    );
}

#[tokio::test]
async fn unusable_stored_identities_are_refused_naming_the_file() {
    let ca = ca("c1");
    let other = ca_other();
    let (key, cert) = issue(&ca, "n1", Role::Worker, now(), DAY);
    let (other_key, other_cert) = issue(&other, "n1", Role::Worker, now(), DAY);
    let (admin_key, admin_cert) = issue(&ca, "alice", Role::Admin, now(), DAY);
    let (old_key, old_cert) = issue(&ca, "n1", Role::Worker, now() - 10 * 86_400, DAY);
    let cases: Vec<(&str, &str, &str, &str, &str)> = vec![
        (
            "another root",
            &other_key,
            &other_cert,
            "n1",
            "cert.pem: not issued by the cluster root",
        ),
        (
            "another key",
            &other_key,
            &cert,
            "n1",
            "cert.pem: it is not for this node's private key",
        ),
        (
            "admin role",
            &admin_key,
            &admin_cert,
            "alice",
            "cert.pem: it names role admin",
        ),
        (
            "wrong node id file",
            &key,
            &cert,
            "n2",
            "node-id: it says \"n2\" but the certificate names node n1",
        ),
        (
            "expired",
            &old_key,
            &old_cert,
            "n1",
            "cert.pem expired: this node must join again",
        ),
    ];
    for (name, key, cert, node_id, expected) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        write_identity(dir.path(), ca.cert_pem(), key, cert, node_id);
        let err = load_offline(dir.path()).await.expect_err(name);
        assert!(err.to_string().contains(expected), "{name}: {err}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    write_identity(dir.path(), ca.cert_pem(), &key, &cert, "n1");
    fs::remove_file(dir.path().join("identity/root.pem")).expect("rm");
    let err = load_offline(dir.path()).await.expect_err("missing root");
    assert!(
        err.to_string().starts_with("incomplete identity: ")
            && err.to_string().ends_with("root.pem is missing"),
        "{err}"
    );
}

fn ca_other() -> ClusterCa {
    ca("c1")
}
