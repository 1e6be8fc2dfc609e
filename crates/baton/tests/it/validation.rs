//! Invalid specs: each is refused with exit code 2, naming the field (and its
//! line and column); hostile YAML is refused fast.

use baton_api::{ApiClient, ApiError, ClientConfig};

use crate::harness::{Dev, baton_bin, spec_file, text};

const VALID: &str = "name: web
type: service
replicas: 2
task:
  driver: raw
  command: [\"/bin/sleep\", \"100\"]
  env: {GREETING: hello}
  workdir: /tmp
  resources: {cpu: 100m, memory: 64Mi}
  kill_timeout: 5s
restart:
  policy: on-failure
  max_attempts: 3
  delay: 1s
  max_delay: 30s
";

/// (what, spec text, text that must appear in the error line)
fn cases() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "bad name",
            VALID.replace("name: web", "name: Web_1"),
            "web.yaml:1:7: name:",
        ),
        (
            "unknown field",
            VALID.replace("replicas: 2", "replica: 2"),
            "web.yaml:3:1: replica:",
        ),
        (
            "duplicate key",
            VALID.replace("type: service", "name: other"),
            "name:",
        ),
        (
            "wrong type",
            VALID.replace("replicas: 2", "replicas: many"),
            "web.yaml:3:11: replicas:",
        ),
        (
            "replicas on batch",
            VALID.replace("type: service", "type: batch"),
            "replicas:",
        ),
        (
            "bad memory",
            VALID.replace("memory: 64Mi", "memory: 64XB"),
            "task.resources.memory: \"64XB\" is not a size",
        ),
        (
            "bad cpu",
            VALID.replace("cpu: 100m", "cpu: lots"),
            "task.resources.cpu:",
        ),
        (
            "bad duration",
            VALID.replace("kill_timeout: 5s", "kill_timeout: 5 parsecs"),
            "task.kill_timeout:",
        ),
        (
            "empty command",
            VALID.replace("[\"/bin/sleep\", \"100\"]", "[]"),
            "task.command:",
        ),
        (
            "bad env key",
            VALID.replace("GREETING: hello", "1BAD-KEY: hello"),
            "task.env",
        ),
        (
            "relative workdir",
            VALID.replace("workdir: /tmp", "workdir: tmp"),
            "task.workdir:",
        ),
        (
            "unknown policy",
            VALID.replace("policy: on-failure", "policy: sometimes"),
            "restart.policy:",
        ),
        (
            "max_delay below delay",
            VALID.replace("max_delay: 30s", "max_delay: 10ms"),
            "restart.max_delay:",
        ),
        (
            "unknown type",
            VALID.replace("type: service", "type: daemon"),
            "type:",
        ),
        (
            "unknown driver",
            VALID.replace("driver: raw", "driver: podman"),
            "task.driver: unknown driver \"podman\" (expected exec, docker or raw)",
        ),
        (
            "workdir under /proc (runc's CVE-2024-21626 class)",
            VALID.replace("workdir: /tmp", "workdir: /proc/self/fd/7"),
            "task.workdir:",
        ),
        (
            "docker without an image",
            VALID.replace("driver: raw", "driver: docker"),
            "task.image: missing required field",
        ),
    ]
}

#[test]
fn invalid_specs_exit_2_naming_the_field() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (what, spec, expected) in cases() {
        let file = spec_file(tmp.path(), "web.yaml", &spec);
        let out = std::process::Command::new(baton_bin())
            .current_dir(tmp.path())
            .args(["job", "validate", "web.yaml"])
            .output()
            .expect("run");
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{what}: expected {expected:?} in:\n{stderr}"
        );
        assert!(
            stderr.lines().all(|l| l.starts_with("error: ")),
            "{what}: one error per line:\n{stderr}"
        );
        // `job run` validates before it connects: same answer, nothing submitted.
        let out = std::process::Command::new(baton_bin())
            .args(["--config", "/nonexistent/client.toml", "job", "run"])
            .arg(&file)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{what} via job run");
    }
    let file = spec_file(tmp.path(), "web.yaml", VALID);
    let out = std::process::Command::new(baton_bin())
        .args(["job", "validate"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
}

#[test]
fn all_problems_are_reported_in_one_pass() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = VALID
        .replace("memory: 64Mi", "memory: 64XB")
        .replace("policy: on-failure", "policy: sometimes")
        .replace("name: web", "name: Web_1");
    let file = spec_file(tmp.path(), "web.yaml", &spec);
    let out = std::process::Command::new(baton_bin())
        .args(["job", "validate"])
        .arg(&file)
        .output()
        .expect("run");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].contains("name:"), "{stderr}");
    assert!(lines[1].contains("task.resources.memory:"), "{stderr}");
    assert!(lines[2].contains("restart.policy:"), "{stderr}");
}

const ALIAS_BOMB: &str = r#"a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
name: bomb
task: {driver: raw, command: [*i]}
"#;

#[test]
fn alias_bomb_is_refused_by_cli_and_api() {
    assert!(ALIAS_BOMB.len() < 1100);
    let (dev, tmp) = Dev::start();
    let file = spec_file(tmp.path(), "bomb.yaml", ALIAS_BOMB);
    let out = dev.cli(&["job", "validate", file.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);

    // Straight to the API (the CLI validates first, so this is the server's own check).
    let config = ClientConfig::load(&dev.config()).expect("config");
    let client = ApiClient::new(&config).expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    match rt.block_on(client.submit_job("bomb.yaml", ALIAS_BOMB.as_bytes().to_vec(), true)) {
        Err(ApiError::Status { status: 400, body }) => {
            assert_eq!(body.code, "invalid_spec");
            assert!(
                body.details.iter().all(|d| d.starts_with("bomb.yaml")),
                "{:?}",
                body.details
            );
        }
        other => panic!("expected 400, got {other:?}"),
    }
    let bad = VALID.replace("memory: 64Mi", "memory: 64XB");
    match rt.block_on(client.submit_job("web.yaml", bad.into_bytes(), true)) {
        Err(ApiError::Status { status: 400, body }) => assert!(
            body.details
                .iter()
                .any(|d| d.contains("task.resources.memory")),
            "{:?}",
            body.details
        ),
        other => panic!("expected 400, got {other:?}"),
    }
    // Nothing was stored.
    assert_eq!(dev.json(&["job", "ls"]), serde_json::json!([]));
}
