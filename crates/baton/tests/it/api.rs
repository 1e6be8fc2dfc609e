//! The API's authentication and discovery endpoints.

use baton_api::{ApiClient, ApiError, ClientConfig};

use crate::harness::Dev;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn every_endpoint_needs_credentials() {
    let (dev, _tmp) = Dev::start();
    let config = ClientConfig::load(&dev.config()).expect("client config");
    let client = ApiClient::new(&config).expect("client");
    let rt = runtime();
    for path in [
        "/v1/health",
        "/v1/jobs",
        "/v1/tasks",
        "/v1/nodes",
        "/v1/openapi.json",
        "/v1/nope",
    ] {
        let status = rt
            .block_on(client.status_without_token(path))
            .expect("request");
        assert_eq!(status.as_u16(), 401, "{path}");
    }
    let wrong = ClientConfig {
        token: "0".repeat(64),
        ..config.clone()
    };
    let wrong = ApiClient::new(&wrong).expect("client");
    match rt.block_on(wrong.list_jobs()) {
        Err(ApiError::Status { status: 403, body }) => assert_eq!(body.code, "forbidden"),
        other => panic!("expected 403, got {other:?}"),
    }
    let health = rt.block_on(client.health()).expect("health with the token");
    assert_eq!(health.status, "ok");
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
    assert!(
        config.api.starts_with("https://127.0.0.1:"),
        "{}",
        config.api
    );
    assert!(dev.ready_line.starts_with("baton dev ready"));
    // Plain HTTP to the API port gets no HTTP answer: the listener speaks TLS only.
    use std::io::{Read, Write};
    let addr = config.api.trim_start_matches("https://").to_owned();
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
    assert_eq!(nodes[0].drivers, vec!["raw".to_owned()]);
    assert!(nodes[0].cpu_millis >= 1000);

    let out = dev.ok(&["node", "ls"]);
    assert!(out.contains("ready"), "{out}");

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
        "/v1/health",
    ] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
