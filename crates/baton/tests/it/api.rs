//! The API's authentication (client certificates from the cluster CA) and
//! discovery endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use baton_api::{ApiClient, ApiError, ClientConfig};
use baton_pki::Role;

use crate::harness::{Dev, baton_bin, run_cli, text};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Every path the tests probe, a nonexistent one included.
const PATHS: [&str; 9] = [
    "/v1/health",
    "/v1/jobs",
    "/v1/tasks",
    "/v1/nodes",
    "/v1/openapi.json",
    "/v1/cluster/join-tokens/worker",
    "/v1/cluster/join-tokens/manager",
    "/v1/jobs/web",
    "/v1/nope",
];

fn refused_with(res: Result<serde_json::Value, ApiError>) -> (u16, String) {
    match res {
        Err(ApiError::Status { status, body }) => (status, body.code),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A certificate for `name` with `role`, signed by the dev cluster's CA
/// (`DIR/manager/ca`), in a client config for the dev API.
/// A client config presenting the dev agent's own worker certificate: what
/// a compromised worker holds.
fn worker_config(dev: &Dev, admin: &ClientConfig) -> ClientConfig {
    let identity = dev.dir.join("agent/identity");
    let read = |name: &str| {
        std::fs::read_to_string(identity.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let cert = read("cert.pem");
    let der = baton_pki::certificate_der(&cert).expect("agent cert");
    assert_eq!(
        baton_pki::peer_identity(&der).expect("identity").role,
        Role::Worker
    );
    ClientConfig {
        cert,
        key: read("key.pem"),
        ..admin.clone()
    }
}

#[test]
fn every_endpoint_needs_an_admin_certificate() {
    let (dev, _tmp) = Dev::start();
    let config = ClientConfig::load(&dev.config()).expect("client config");
    let rt = runtime();

    let anonymous = ApiClient::anonymous(&config).expect("client");
    for path in PATHS {
        let (status, code) = refused_with(rt.block_on(anonymous.get_value(path)));
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{path}");
    }
    match rt.block_on(anonymous.health()) {
        Err(ApiError::Status { status: 401, body }) => assert!(
            body.message.contains("client certificate required"),
            "{}",
            body.message
        ),
        other => panic!("expected 401, got {other:?}"),
    }

    let worker = worker_config(&dev, &config);
    let worker = ApiClient::new(&worker).expect("client");
    for path in PATHS {
        let (status, code) = refused_with(rt.block_on(worker.get_value(path)));
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{path}");
    }
    match rt.block_on(worker.rotate_join_token("worker")) {
        Err(ApiError::Status { status: 403, .. }) => {}
        other => panic!("a worker rotated the join token: {other:?}"),
    }

    let admin = ApiClient::new(&config).expect("client");
    let health = rt.block_on(admin.health()).expect("health as admin");
    assert_eq!(health.status, "ok");
    let token = rt
        .block_on(admin.join_token("worker"))
        .expect("worker token as admin");
    assert!(token.token.starts_with("BATON-1-"));
}

#[test]
fn client_config_is_private_and_api_is_tls_only() {
    use std::os::unix::fs::PermissionsExt;
    let (dev, _tmp) = Dev::start();
    let mode = std::fs::metadata(dev.config())
        .expect("client.toml")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let config = ClientConfig::load(&dev.config()).expect("client config");
    assert_eq!(config.apis.len(), 1, "{:?}", config.apis);
    assert!(
        config.apis[0].starts_with("https://127.0.0.1:"),
        "{:?}",
        config.apis
    );
    assert!(config.key.contains("PRIVATE KEY"));
    assert!(!format!("{config:?}").contains("PRIVATE KEY"));
    assert!(dev.ready_line.starts_with("baton dev ready"));
    // Plain HTTP to the API port gets no HTTP answer: the listener speaks TLS only.
    use std::io::{Read, Write};
    let addr = config.apis[0].trim_start_matches("https://").to_owned();
    let mut tcp = std::net::TcpStream::connect(&addr).expect("connect");
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    tcp.write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plaintext HTTP was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn openapi_describes_the_api_and_nodes_are_listed() {
    let (dev, _tmp) = Dev::start();
    let config = ClientConfig::load(&dev.config()).expect("client config");
    let client = ApiClient::new(&config).expect("client");
    let rt = runtime();
    let nodes = rt.block_on(client.list_nodes()).expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].state, "ready");
    assert_eq!(nodes[0].role, "worker");
    assert!(nodes[0].cert_expires_at.is_some());
    // `baton dev` enables raw; exec and docker are offered where they work
    // (both do in CI, which requires them).
    let drivers = &nodes[0].drivers;
    assert_eq!(
        drivers.first().map(String::as_str),
        Some("raw"),
        "{drivers:?}"
    );
    assert!(
        drivers[1..].iter().all(|d| d == "exec" || d == "docker"),
        "{drivers:?}"
    );
    if std::env::var_os("BATON_REQUIRE_EXEC").is_some() {
        assert!(drivers.iter().any(|d| d == "exec"), "{drivers:?}");
    }
    if std::env::var_os("BATON_REQUIRE_DOCKER").is_some() {
        assert!(drivers.iter().any(|d| d == "docker"), "{drivers:?}");
    }
    assert!(nodes[0].cpu_millis >= 1000);

    let out = dev.ok(&["node", "ls"]);
    assert!(out.contains("ready"), "{out}");
    let header = out.lines().next().unwrap_or_default();
    for column in ["ROLE", "CERT EXPIRES"] {
        assert!(header.contains(column), "{out}");
    }

    // A ready node is not removed without --force.
    let rm = dev.cli(&["node", "rm", &nodes[0].id]);
    assert_eq!(rm.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&rm.stderr);
    assert!(stderr.contains("ready"), "{stderr}");

    let doc = rt
        .block_on(client.get_value("/v1/openapi.json"))
        .expect("openapi");
    for path in [
        "/v1/jobs",
        "/v1/jobs/{name}",
        "/v1/jobs/{name}/stop",
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/logs",
        "/v1/nodes",
        "/v1/nodes/{id}/availability",
        "/v1/nodes/{id}/remove",
        "/v1/cluster/join-tokens/{role}",
        "/v1/cluster/join-tokens/{role}/rotate",
        "/v1/health",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["mtls"]["type"],
        "mutualTLS"
    );
}

/// An address on loopback where connections are refused: a port that was
/// just free.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("https://{addr}")
}

/// An address on loopback that accepts connections and closes them at once,
/// so the TLS handshake fails; with the number of connections it accepted.
fn hang_up_url() -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    // Lives until the test binary exits: it only ever blocks in accept.
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (format!("https://{addr}"), accepted)
}

#[test]
fn the_client_moves_past_managers_that_do_not_answer() {
    let (dev, tmp) = Dev::start();
    let config = ClientConfig::load(&dev.config()).expect("client config");
    let live = config.apis[0].clone();
    let refused = refused_url();
    let (hang_up, accepted) = hang_up_url();
    let with_apis = |apis: &[&str]| ClientConfig {
        apis: apis.iter().map(|a| (*a).to_owned()).collect(),
        ..config.clone()
    };
    let rt = runtime();

    // Refused, then a failed handshake, then the manager: it answers, and the
    // client sticks to it, so later calls do not knock on the others again.
    let client = ApiClient::new(&with_apis(&[&refused, &hang_up, &live])).expect("client");
    assert_eq!(rt.block_on(client.health()).expect("health").status, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    for _ in 0..3 {
        rt.block_on(client.list_nodes()).expect("nodes");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // A write that reached no manager is safe to send to the next one; an
    // error status is an answer, shown as is.
    let client = ApiClient::new(&with_apis(&[&hang_up, &live])).expect("client");
    match rt.block_on(client.stop_job("nope")) {
        Err(ApiError::Status { status: 404, .. }) => {}
        other => panic!("expected the manager's 404, got {other:?}"),
    }

    // None answers: one error naming each address with its cause.
    let client = ApiClient::new(&with_apis(&[&refused, &hang_up])).expect("client");
    let err = rt.block_on(client.health()).expect_err("nobody answers");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("no manager answered: {refused}: ")),
        "{message}"
    );
    assert!(message.contains(&format!("; {hang_up}: ")), "{message}");
    assert!(message.contains("refused"), "{message}");

    // The CLI reads the list from the file, and an old file with one `api`.
    let two = tmp.path().join("two.toml");
    std::fs::write(&two, with_apis(&[&refused, &live]).to_toml()).expect("write");
    let out = run_cli(&two, &["node", "ls"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let old = tmp.path().join("old.toml");
    let new_form = with_apis(&[&live]).to_toml();
    let old_form = new_form.replace(
        &format!("apis = [\"{live}\"]"),
        &format!("api = \"{live}\""),
    );
    assert_ne!(old_form, new_form);
    std::fs::write(&old, old_form).expect("write");
    let out = run_cli(&old, &["node", "ls"]);
    assert!(out.status.success(), "{:?}", text(&out));

    // --addr (HOST:PORT or a URL) and BATON_ADDR replace the file's list.
    let refused_host_port = refused.trim_start_matches("https://");
    let out = run_cli(&dev.config(), &["--addr", refused_host_port, "node", "ls"]);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains(&format!("error: no manager answered: {refused}: ")),
        "{stderr}"
    );
    let out = run_cli(
        &two,
        &["node", "ls", "--addr", &format!("{refused},{live}")],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let out = std::process::Command::new(baton_bin())
        .arg("--config")
        .arg(dev.config())
        .args(["node", "ls"])
        .env("BATON_ADDR", refused_host_port)
        .output()
        .expect("run baton");
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let out = run_cli(
        &dev.config(),
        &["--addr", "http://127.0.0.1:1", "node", "ls"],
    );
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
}
