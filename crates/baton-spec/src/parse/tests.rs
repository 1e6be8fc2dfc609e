//! Tests of [`parse_job`](super::parse_job): data-driven invalid specs with the
//! exact error text they produce, valid specs with the exact `JobSpec`, and
//! hostile input. Property tests and the example files are in `tests/`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::{DriverKind, JobKind, Resources, RestartCondition, RestartPolicy, TaskSpec};

/// A valid spec every invalid YAML case below is a small edit of.
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

/// The same spec as JSON.
const VALID_JSON: &str = r#"{
  "name": "web",
  "type": "service",
  "replicas": 2,
  "task": {
    "driver": "raw",
    "command": ["/bin/sleep", "100"],
    "env": {"GREETING": "hello"},
    "workdir": "/tmp",
    "resources": {"cpu": "100m", "memory": "64Mi"},
    "kill_timeout": "5s"
  },
  "restart": {"policy": "on-failure", "max_attempts": 3, "delay": "1s", "max_delay": "30s"}
}
"#;

/// The full example of the spec format, with every field set.
const FULL_EXAMPLE: &str = r#"name: web                 # required; [a-z0-9-], 1..=63 chars
type: service             # service (default) | batch | global
replicas: 3               # service only; default 1; 0..=10000
task:                     # required
  driver: raw             # exec (default) | docker | raw
  command: ["/bin/sh", "-c", "exec sleep 1000"]
  env: {GREETING: hello}
  workdir: /tmp
  user: nobody
  resources: {cpu: 100m, memory: 64Mi}
  kill_timeout: 5s
restart:
  policy: on-failure
  max_attempts: 3
  delay: 1s
  max_delay: 30s
"#;

/// Parses `input` and renders the outcome: `ok`, or the error lines.
fn render(format: SpecFormat, input: &[u8]) -> String {
    match parse_job("web.yaml", input, format) {
        Ok(_) => "ok".to_owned(),
        Err(errors) => errors.to_string(),
    }
}

fn yaml(edit: (&str, &str)) -> Vec<u8> {
    assert!(VALID.contains(edit.0), "{edit:?}");
    VALID.replacen(edit.0, edit.1, 1).into_bytes()
}

fn json(edit: (&str, &str)) -> Vec<u8> {
    assert!(VALID_JSON.contains(edit.0), "{edit:?}");
    VALID_JSON.replacen(edit.0, edit.1, 1).into_bytes()
}

/// (what, format, document, exact rendered errors)
fn invalid_cases() -> Vec<(&'static str, SpecFormat, Vec<u8>, &'static str)> {
    use SpecFormat::{Json, Yaml};
    vec![
        (
            "bad name",
            Yaml,
            yaml(("name: web", "name: Web_1")),
            "web.yaml:1:7: name: \"Web_1\" is not a valid job name (expected 1 to 63 characters \
             of a-z, 0-9 and -, starting and ending with a letter or digit)",
        ),
        (
            "name ending in a dash",
            Yaml,
            yaml(("name: web", "name: web-")),
            "web.yaml:1:7: name: \"web-\" is not a valid job name (expected 1 to 63 characters \
             of a-z, 0-9 and -, starting and ending with a letter or digit)",
        ),
        (
            "missing name",
            Yaml,
            yaml(("name: web\n", "")),
            "web.yaml:1:1: name: missing required field (expected a job name)",
        ),
        (
            "unknown field",
            Yaml,
            yaml(("replicas: 2", "replica: 2")),
            "web.yaml:3:1: replica: unknown field \"replica\" (expected one of: name, type, \
             replicas, completions, parallelism, task, restart, priority, preempt, constraints, affinities, spread, strategy, max_per_node)",
        ),
        (
            "unknown nested field",
            Yaml,
            yaml(("{cpu: 100m, memory: 64Mi}", "{cpu: 100m, gpu: 1}")),
            "web.yaml:9:26: task.resources.gpu: unknown field \"gpu\" (expected one of: cpu, memory, disk, pids)",
        ),
        (
            "duplicate key",
            Yaml,
            yaml(("type: service", "name: other")),
            "web.yaml:2:1: name: duplicate key (first defined at line 1, column 1)",
        ),
        (
            "duplicate env key",
            Yaml,
            yaml(("{GREETING: hello}", "{GREETING: hello, GREETING: bye}")),
            "web.yaml:7:26: task.env.GREETING: duplicate key (first defined at line 7, column 9)",
        ),
        (
            "wrong type: integer",
            Yaml,
            yaml(("replicas: 2", "replicas: many")),
            "web.yaml:3:11: replicas: expected an integer, found \"many\"",
        ),
        (
            "wrong type: float for an integer",
            Yaml,
            yaml(("max_attempts: 3", "max_attempts: 2.5")),
            "web.yaml:13:17: restart.max_attempts: expected an integer, found 2.5",
        ),
        (
            "wrong type: mapping",
            Yaml,
            yaml((
                "restart:\n  policy: on-failure",
                "restart: []\nx:\n  policy: on-failure",
            )),
            "web.yaml:11:10: restart: expected a restart mapping, found a list\n\
             web.yaml:12:1: x: unknown field \"x\" (expected one of: name, type, replicas, \
             completions, parallelism, task, restart, priority, preempt, constraints, affinities, spread, strategy, max_per_node)",
        ),
        (
            "replicas out of range",
            Yaml,
            yaml(("replicas: 2", "replicas: 10001")),
            "web.yaml:3:11: replicas: \"10001\" is out of range (expected 0 to 10000)",
        ),
        (
            "replicas on a batch job",
            Yaml,
            yaml(("type: service", "type: batch")),
            "web.yaml:3:1: replicas: only for service jobs (this is a batch job)",
        ),
        (
            "completions on a service job",
            Yaml,
            yaml(("replicas: 2", "completions: 2")),
            "web.yaml:3:1: completions: only for batch jobs (this is a service job)",
        ),
        (
            "bad memory size",
            Yaml,
            yaml(("memory: 64Mi", "memory: 64XB")),
            "web.yaml:9:34: task.resources.memory: \"64XB\" is not a size (use 64Mi, 1Gi, ...)",
        ),
        (
            "memory below 1Mi",
            Yaml,
            yaml(("memory: 64Mi", "memory: 64")),
            "web.yaml:9:34: task.resources.memory: \"64\" is below the minimum of 1Mi",
        ),
        (
            "bad cpu",
            Yaml,
            yaml(("cpu: 100m", "cpu: lots")),
            "web.yaml:9:20: task.resources.cpu: \"lots\" is not a CPU quantity (use 100m, 0.5, 2, ...)",
        ),
        (
            "zero cpu",
            Yaml,
            yaml(("cpu: 100m", "cpu: 0m")),
            "web.yaml:9:20: task.resources.cpu: \"0m\" must be greater than 0",
        ),
        (
            "bad duration",
            Yaml,
            yaml(("kill_timeout: 5s", "kill_timeout: 5 parsecs")),
            "web.yaml:10:17: task.kill_timeout: \"5 parsecs\" is not a duration (use 100ms, 5s, 1m30s, ...)",
        ),
        (
            "kill timeout over an hour",
            Yaml,
            yaml(("kill_timeout: 5s", "kill_timeout: 61m")),
            "web.yaml:10:17: task.kill_timeout: \"61m\" is above the maximum of 1h",
        ),
        (
            "empty command",
            Yaml,
            yaml(("[\"/bin/sleep\", \"100\"]", "[]")),
            "web.yaml:6:12: task.command: must not be empty (expected a list of strings: the \
             program and its arguments)",
        ),
        (
            "command is a string",
            Yaml,
            yaml(("[\"/bin/sleep\", \"100\"]", "/bin/sleep 100")),
            "web.yaml:6:12: task.command: expected a list of strings, found \"/bin/sleep 100\"",
        ),
        (
            "bad command items",
            Yaml,
            yaml(("[\"/bin/sleep\", \"100\"]", "[\"\", [x], ~, \"a\\0b\"]")),
            "web.yaml:6:13: task.command[0]: the program must not be empty\n\
             web.yaml:6:17: task.command[1]: expected a string, found a list\n\
             web.yaml:6:22: task.command[2]: expected a string, found null\n\
             web.yaml:6:25: task.command[3]: must not contain NUL characters",
        ),
        (
            "invalid env key",
            Yaml,
            yaml(("GREETING: hello", "1BAD-KEY: hello")),
            "web.yaml:7:9: task.env.1BAD-KEY: invalid environment variable name (expected \
             letters, digits and _, not starting with a digit)",
        ),
        (
            "env value is not a scalar",
            Yaml,
            yaml(("GREETING: hello", "GREETING: [hello]")),
            "web.yaml:7:19: task.env.GREETING: expected a string, found a list",
        ),
        (
            "relative workdir",
            Yaml,
            yaml(("workdir: /tmp", "workdir: tmp")),
            "web.yaml:8:12: task.workdir: \"tmp\" is not an absolute path (expected a path starting with /)",
        ),
        (
            "bad user",
            Yaml,
            yaml(("workdir: /tmp", "user: Bob")),
            "web.yaml:8:9: task.user: \"Bob\" is not a valid user (expected a user name like \
             nobody, or a numeric uid)",
        ),
        (
            "max_delay below delay",
            Yaml,
            yaml(("max_delay: 30s", "max_delay: 10ms")),
            "web.yaml:15:14: restart.max_delay: \"10ms\" is shorter than restart.delay (expected at least 1s)",
        ),
        (
            "zero delay",
            Yaml,
            yaml(("delay: 1s", "delay: 0s")),
            "web.yaml:14:10: restart.delay: \"0s\" must be greater than 0",
        ),
        (
            "unknown driver",
            Yaml,
            yaml(("driver: raw", "driver: podman")),
            "web.yaml:5:11: task.driver: unknown driver \"podman\" (expected exec, docker or raw)",
        ),
        (
            "docker without an image",
            Yaml,
            yaml(("driver: raw", "driver: docker")),
            "web.yaml:5:3: task.image: missing required field (expected an image like busybox:1.36)",
        ),
        (
            "an image for another driver",
            Yaml,
            yaml(("driver: raw", "driver: exec\n  image: busybox")),
            "web.yaml:6:10: task.image: is only for the docker driver (this task uses exec)",
        ),
        (
            "an image that is no reference",
            Yaml,
            yaml(("driver: raw", "driver: docker\n  image: \"busy box\"")),
            "web.yaml:6:10: task.image: \"busy box\" is not an image reference (expected letters, digits and . _ - / : @)",
        ),
        (
            "an empty image",
            Yaml,
            yaml(("driver: raw", "driver: docker\n  image: \"\"")),
            "web.yaml:6:10: task.image: \"\" must not be empty",
        ),
        (
            "a capability that reaches beyond the task",
            Yaml,
            yaml((
                "driver: raw",
                "driver: exec\n  capabilities: [chown, SYS_ADMIN]",
            )),
            "web.yaml:6:25: task.capabilities[1]: \"SYS_ADMIN\" is not a capability a task may add (expected one of AUDIT_WRITE, CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, MKNOD, NET_BIND_SERVICE, NET_RAW, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT)",
        ),
        (
            "capabilities for the raw driver",
            Yaml,
            yaml((
                "kill_timeout: 5s",
                "kill_timeout: 5s\n  capabilities: [CHOWN]",
            )),
            "web.yaml:11:17: task.capabilities: the raw driver isolates nothing, so it cannot grant capabilities (use driver exec or docker)",
        ),
        (
            "a pids limit too small",
            Yaml,
            VALID
                .replacen("driver: raw", "driver: exec", 1)
                .replacen("memory: 64Mi}", "memory: 64Mi, pids: 3}", 1)
                .into_bytes(),
            "web.yaml:9:46: task.resources.pids: \"3\" is out of range (expected 16 to 65536)",
        ),
        (
            "unknown type",
            Yaml,
            yaml(("type: service", "type: daemon")),
            "web.yaml:2:7: type: unknown job type \"daemon\" (expected service, batch or global)",
        ),
        (
            "unknown restart policy",
            Yaml,
            yaml(("policy: on-failure", "policy: sometimes")),
            "web.yaml:12:11: restart.policy: unknown restart policy \"sometimes\" (expected \
             always, on-failure or never)",
        ),
        (
            "two documents",
            Yaml,
            format!("{VALID}---\nname: other\n").into_bytes(),
            "web.yaml:16:1: more than one YAML document in the file (expected exactly one job spec)",
        ),
        (
            "anchor and alias",
            Yaml,
            yaml(("name: web", "name: &n web\nx: *n")),
            "web.yaml:1:7: name: anchors and aliases are not supported in job specs (write the \
             value out)\n\
             web.yaml:2:1: x: unknown field \"x\" (expected one of: name, type, replicas, \
             completions, parallelism, task, restart, priority, preempt, constraints, affinities, spread, strategy, max_per_node)",
        ),
        (
            "tag",
            Yaml,
            yaml(("name: web", "name: !!binary d2Vi")),
            "web.yaml:1:7: name: unsupported tag !!binary (job specs allow only !!str, !!seq and !!map)",
        ),
        (
            "custom tag on a mapping",
            Yaml,
            yaml(("restart:\n", "restart: !policy\n")),
            "web.yaml:11:10: restart: unsupported tag !policy (job specs allow only !!str, \
             !!seq and !!map)",
        ),
        (
            "merge key",
            Yaml,
            yaml(("replicas: 2", "<<: {replicas: 2}")),
            "web.yaml:3:1: merge keys (<<) are not supported in job specs (write the fields out)",
        ),
        (
            "syntax error",
            Yaml,
            yaml(("replicas: 2", "replicas: [2")),
            "web.yaml:4:5: invalid YAML: illegal placement of ':' indicator",
        ),
        (
            "deep nesting",
            Yaml,
            format!("{}{}", "[".repeat(40), "]".repeat(40)).into_bytes(),
            "web.yaml:1:33: nesting deeper than 32 levels (a job spec needs 4)",
        ),
        (
            "deep block nesting",
            Yaml,
            "- ".repeat(40).into_bytes(),
            "web.yaml:1:65: nesting deeper than 32 levels (a job spec needs 4)",
        ),
        (
            "key that is not a string",
            Yaml,
            yaml(("name: web", "name: web\n? [a]\n: b")),
            "web.yaml:2:3: expected a string key, found a list",
        ),
        (
            "empty document",
            Yaml,
            b"# nothing here\n".to_vec(),
            "web.yaml:1:1: empty document (expected a job spec mapping)",
        ),
        (
            "not a mapping",
            Yaml,
            b"- name: web\n".to_vec(),
            "web.yaml:1:1: expected a job spec mapping, found a list",
        ),
        (
            "not UTF-8",
            Yaml,
            yaml(("name: web", "name: w\u{e9}b"))
                .iter()
                .map(|&b| if b == 0xc3 { 0xff } else { b })
                .collect(),
            "web.yaml:1:8: not valid UTF-8 (byte 0xff at offset 7; expected UTF-8 text)",
        ),
        (
            "oversized document",
            Yaml,
            format!("{VALID}#{}\n", "x".repeat(MAX_SPEC_BYTES)).into_bytes(),
            "web.yaml: document is 262411 bytes, more than the limit of 262144 bytes (256 KiB)",
        ),
        (
            "json: bad memory size",
            Json,
            json(("\"64Mi\"", "\"64XB\"")),
            "web.yaml:10:44: task.resources.memory: \"64XB\" is not a size (use 64Mi, 1Gi, ...)",
        ),
        (
            "json: unknown field",
            Json,
            json(("\"replicas\"", "\"replica\"")),
            "web.yaml:4:3: replica: unknown field \"replica\" (expected one of: name, type, \
             replicas, completions, parallelism, task, restart, priority, preempt, constraints, affinities, spread, strategy, max_per_node)",
        ),
        (
            "json: duplicate key",
            Json,
            json(("\"type\": \"service\"", "\"name\": \"other\"")),
            "web.yaml:3:3: name: duplicate key (first defined at line 2, column 3)",
        ),
        (
            "json: wrong type",
            Json,
            json(("\"replicas\": 2", "\"replicas\": \"2\"")),
            "web.yaml:4:15: replicas: expected an integer, found \"2\"",
        ),
        (
            "json: replicas on a batch job",
            Json,
            json(("\"service\"", "\"batch\"")),
            "web.yaml:4:3: replicas: only for service jobs (this is a batch job)",
        ),
        (
            "json: column counts characters",
            Json,
            json((
                "\"GREETING\": \"hello\"",
                "\"GR\u{c9}\u{c9}TING\": \"h\u{e9}llo\", \"X\": 1.5e400",
            )),
            "web.yaml:8:13: task.env[\"GRÉÉTING\"]: invalid environment variable name \
             (expected letters, digits and _, not starting with a digit)",
        ),
        (
            "json: trailing comma",
            Json,
            json(("\"kill_timeout\": \"5s\"", "\"kill_timeout\": \"5s\",")),
            "web.yaml:12:3: invalid JSON: unexpected '}' (expected a string key)",
        ),
        (
            "json: trailing characters",
            Json,
            format!("{VALID_JSON}{{}}").into_bytes(),
            "web.yaml:15:1: invalid JSON: unexpected characters after the end of the document",
        ),
        (
            "json: lone surrogate",
            Json,
            json(("\"hello\"", "\"\\ud800x\"")),
            "web.yaml:8:26: invalid JSON: invalid escape sequence in a string",
        ),
        (
            "json: deep nesting",
            Json,
            format!("{}{}", "[".repeat(40), "]".repeat(40)).into_bytes(),
            "web.yaml:1:33: invalid JSON: nesting deeper than 32 levels (a job spec needs 4)",
        ),
        (
            "constraint with an unknown operator",
            Yaml,
            yaml((
                "replicas: 2",
                "replicas: 2\nconstraints: [\"node.labels.zone = a\"]",
            )),
            "web.yaml:4:15: constraints[0]: \"node.labels.zone = a\" at character 18: unknown operator \"=\" (expected ==, !=, in, not in, =~, !~, semver, contains, not contains, exists, not exists)",
        ),
        (
            "affinity weight 0",
            Yaml,
            yaml((
                "replicas: 2",
                "replicas: 2\naffinities: [{expr: node.labels.disk == ssd, weight: 0}]",
            )),
            "web.yaml:4:54: affinities[0].weight: \"0\" is not a valid weight (expected -100 to 100, not 0)",
        ),
        (
            "spread over drivers",
            Yaml,
            yaml((
                "replicas: 2",
                "replicas: 2\nspread: {attribute: node.drivers}",
            )),
            "web.yaml:4:21: spread.attribute: node.drivers is a set and cannot be spread over (expected node.labels.<key>, node.hostname, node.role or node.id)",
        ),
        (
            "spread targets over 100%",
            Yaml,
            yaml((
                "replicas: 2",
                "replicas: 2\nspread: {attribute: node.labels.zone, targets: {a: 60, b: 50}}",
            )),
            "web.yaml:4:48: spread.targets: the percentages add up to 110 (expected at most 100)",
        ),
        (
            "priority out of range",
            Yaml,
            yaml(("replicas: 2", "replicas: 2\npriority: 101")),
            "web.yaml:4:11: priority: \"101\" is out of range (expected 0 to 100)",
        ),
        (
            "unknown strategy",
            Yaml,
            yaml(("replicas: 2", "replicas: 2\nstrategy: random")),
            "web.yaml:4:11: strategy: unknown strategy \"random\" (expected binpack or spread)",
        ),
        (
            "static port in the dynamic range",
            Yaml,
            yaml((
                "  kill_timeout: 5s",
                "  kill_timeout: 5s\n  ports: [{name: http, static: 20001}]",
            )),
            "web.yaml:11:32: task.ports[0].static: 20001 is in the range of dynamic ports (20000-32000); choose a static port outside it, or leave `static` out for a dynamic one",
        ),
        (
            "port name twice",
            Yaml,
            yaml((
                "  kill_timeout: 5s",
                "  kill_timeout: 5s\n  ports: [{name: http}, {name: http}]",
            )),
            "web.yaml:11:10: task.ports[1]: port name \"http\" is used twice",
        ),
        (
            "bad port name",
            Yaml,
            yaml((
                "  kill_timeout: 5s",
                "  kill_timeout: 5s\n  ports: [{name: HTTP}]",
            )),
            "web.yaml:11:18: task.ports[0].name: \"HTTP\" is not a valid port name (expected 1 to 32 characters of a-z, 0-9 and _, starting with a letter)",
        ),
        (
            "workdir under /proc",
            Yaml,
            yaml(("workdir: /tmp", "workdir: /proc/self/fd/7")),
            "web.yaml:8:12: task.workdir: \"/proc/self/fd/7\" is under /proc (a task's working directory cannot be in a kernel filesystem)",
        ),
        (
            "workdir hiding /proc behind ..",
            Yaml,
            yaml(("workdir: /tmp", "workdir: /tmp/../proc/1/cwd")),
            "web.yaml:8:12: task.workdir: \"/tmp/../proc/1/cwd\" is not a plain absolute path (expected no \".\", \"..\" or empty component)",
        ),
        (
            "workdir hiding /proc behind .",
            Yaml,
            yaml(("workdir: /tmp", "workdir: /./proc/self/fd/7")),
            "web.yaml:8:12: task.workdir: \"/./proc/self/fd/7\" is not a plain absolute path (expected no \".\", \"..\" or empty component)",
        ),
        (
            "workdir hiding /proc behind //",
            Yaml,
            yaml(("workdir: /tmp", "workdir: //proc/self/fd/7")),
            "web.yaml:8:12: task.workdir: \"//proc/self/fd/7\" is not a plain absolute path (expected no \".\", \"..\" or empty component)",
        ),
        (
            "a pids limit for the raw driver",
            Yaml,
            yaml(("memory: 64Mi}", "memory: 64Mi, pids: 64}")),
            "web.yaml:9:46: task.resources.pids: the raw driver isolates nothing, so it cannot limit processes (use driver exec or docker)",
        ),
        (
            "json: empty",
            Json,
            b" \n".to_vec(),
            "web.yaml:2:1: invalid JSON: empty document (expected a job spec object)",
        ),
    ]
}

#[test]
fn invalid_specs_report_the_exact_error() {
    let cases = invalid_cases();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (what, format, input, expected) in cases {
        let got = render(format, &input);
        if got != expected {
            failures.push(format!(
                "{what}:\n  expected: {expected}\n       got: {got}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_problem_is_reported_in_one_pass_in_document_order() {
    let spec = "restart:
  policy: sometimes
  delay: 0s
name: Web_1
task:
  driver: podman
  command: []
  env: {1X: a, OK: [b]}
  resources: {cpu: lots, memory: 64XB, gpu: 1}
  kill_timeout: 2h
replicas: -1
extra: true
";
    let expected = "\
web.yaml:2:11: restart.policy: unknown restart policy \"sometimes\" (expected always, on-failure or never)
web.yaml:3:10: restart.delay: \"0s\" must be greater than 0
web.yaml:4:7: name: \"Web_1\" is not a valid job name (expected 1 to 63 characters of a-z, 0-9 and -, starting and ending with a letter or digit)
web.yaml:6:11: task.driver: unknown driver \"podman\" (expected exec, docker or raw)
web.yaml:7:12: task.command: must not be empty (expected a list of strings: the program and its arguments)
web.yaml:8:9: task.env.1X: invalid environment variable name (expected letters, digits and _, not starting with a digit)
web.yaml:8:20: task.env.OK: expected a string, found a list
web.yaml:9:20: task.resources.cpu: \"lots\" is not a CPU quantity (use 100m, 0.5, 2, ...)
web.yaml:9:34: task.resources.memory: \"64XB\" is not a size (use 64Mi, 1Gi, ...)
web.yaml:9:40: task.resources.gpu: unknown field \"gpu\" (expected one of: cpu, memory, disk, pids)
web.yaml:10:17: task.kill_timeout: \"2h\" is above the maximum of 1h
web.yaml:11:11: replicas: \"-1\" is out of range (expected 0 to 10000)
web.yaml:12:1: extra: unknown field \"extra\" (expected one of: name, type, replicas, completions, parallelism, task, restart, priority, preempt, constraints, affinities, spread, strategy, max_per_node)";
    assert_eq!(render(SpecFormat::Yaml, spec.as_bytes()), expected);
}

/// The classic "billion laughs": 9 levels of 9 aliases, 9^9 (387 million)
/// strings once expanded, in about 1 KB. Refused at the first anchor without
/// expanding anything: measured at about 0.1 ms in a debug build (the whole
/// document is still read, so every other problem is reported too).
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
fn alias_bomb_is_refused_without_expansion() {
    assert!(ALIAS_BOMB.len() < 1100);
    let unknown = "(expected one of: name, type, replicas, completions, parallelism, task, restart, priority, preempt, constraints, affinities, spread, strategy, max_per_node)";
    let mut expected = vec![
        format!("bomb.yaml:1:1: a: unknown field \"a\" {unknown}"),
        "bomb.yaml:1:4: a: anchors and aliases are not supported in job specs (write the value out)"
            .to_owned(),
    ];
    for (idx, key) in ["b", "c", "d", "e", "f", "g", "h", "i"].iter().enumerate() {
        expected.push(format!(
            "bomb.yaml:{}:1: {key}: unknown field \"{key}\" {unknown}",
            idx + 2
        ));
    }
    let errors = parse_job("bomb.yaml", ALIAS_BOMB.as_bytes(), SpecFormat::Yaml)
        .expect_err("a bomb is refused");
    assert_eq!(errors.to_string(), expected.join("\n"));
}

#[test]
fn too_many_problems_are_capped() {
    let spec: String = (0..200).map(|idx| format!("x{idx}: 1\n")).collect();
    let errors = parse_job("web.yaml", spec.as_bytes(), SpecFormat::Yaml).expect_err("invalid");
    assert_eq!(errors.errors.len(), MAX_REPORTED_ERRORS + 1);
    // 200 unknown fields and `name` and `task` missing, reported at the
    // mapping's start (1:1), after the unknown field found there first.
    let paths: Vec<&str> = errors.errors[..5].iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["x0", "name", "task", "x1", "x2"]);
    assert_eq!(
        errors.errors[MAX_REPORTED_ERRORS].message,
        "152 more problems not shown"
    );
}

fn full_example_spec() -> JobSpec {
    JobSpec {
        placement: Default::default(),
        name: "web".to_owned(),
        kind: JobKind::Service { replicas: 3 },
        task: TaskSpec {
            ports: Default::default(),
            image: None,
            capabilities: Vec::new(),
            pids_limit: crate::DEFAULT_PIDS_LIMIT,
            secrets: Vec::new(),
            env_secrets: std::collections::BTreeMap::new(),
            configs: Vec::new(),
            driver: DriverKind::Raw,
            command: vec!["/bin/sh".into(), "-c".into(), "exec sleep 1000".into()],
            env: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
            workdir: Some("/tmp".to_owned()),
            user: Some("nobody".to_owned()),
            resources: Resources {
                disk_bytes: 0,
                cpu_millis: 100,
                memory_bytes: 64 << 20,
            },
            kill_timeout: Duration::from_secs(5),
        },
        restart: RestartPolicy {
            condition: RestartCondition::OnFailure,
            max_attempts: 3,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        },
    }
}

#[test]
fn full_example_parses_to_the_expected_spec() {
    let spec = parse_job("web.yaml", FULL_EXAMPLE.as_bytes(), SpecFormat::Yaml);
    assert_eq!(spec, Ok(full_example_spec()));
}

#[test]
fn json_equivalent_parses_to_the_same_spec() {
    let doc = r#"{"name": "web", "type": "service", "replicas": 3,
 "task": {"driver": "raw", "command": ["/bin/sh", "-c", "exec sleep 1000"],
          "env": {"GREETING": "hello"}, "workdir": "/tmp", "user": "nobody",
          "resources": {"cpu": "100m", "memory": "64Mi"}, "kill_timeout": "5s"},
 "restart": {"policy": "on-failure", "max_attempts": 3, "delay": "1s", "max_delay": "30s"}}"#;
    let spec = parse_job("web.json", doc.as_bytes(), SpecFormat::Json);
    assert_eq!(spec, Ok(full_example_spec()));
}

#[test]
fn minimal_spec_gets_the_defaults() {
    let doc = "name: web\ntask:\n  driver: raw\n  command: [/bin/true]\n";
    let expected = JobSpec {
        placement: Default::default(),
        name: "web".to_owned(),
        kind: JobKind::Service { replicas: 1 },
        task: TaskSpec {
            ports: Default::default(),
            image: None,
            capabilities: Vec::new(),
            pids_limit: crate::DEFAULT_PIDS_LIMIT,
            secrets: Vec::new(),
            env_secrets: std::collections::BTreeMap::new(),
            configs: Vec::new(),
            driver: DriverKind::Raw,
            command: vec!["/bin/true".to_owned()],
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            resources: Resources {
                disk_bytes: 0,
                cpu_millis: 100,
                memory_bytes: 128 << 20,
            },
            kill_timeout: Duration::from_secs(5),
        },
        restart: RestartPolicy {
            condition: RestartCondition::Always,
            max_attempts: 0,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        },
    };
    assert_eq!(
        parse_job("web.yaml", doc.as_bytes(), SpecFormat::Yaml),
        Ok(expected.clone())
    );

    // Batch defaults differ: one completion at a time, restart on failure 3 times.
    let batch = format!("type: batch\n{doc}");
    let mut expected_batch = expected.clone();
    expected_batch.kind = JobKind::Batch {
        completions: 1,
        parallelism: 1,
    };
    expected_batch.restart.condition = RestartCondition::OnFailure;
    expected_batch.restart.max_attempts = 3;
    assert_eq!(
        parse_job("web.yaml", batch.as_bytes(), SpecFormat::Yaml),
        Ok(expected_batch)
    );

    // Null counts as unset, and a long delay alone raises the default cap.
    let nulls = format!("{doc}  env:\n  workdir: ~\nrestart:\n  delay: 1m\n");
    let mut expected_nulls = expected;
    expected_nulls.restart.delay = Duration::from_secs(60);
    expected_nulls.restart.max_delay = Duration::from_secs(60);
    assert_eq!(
        parse_job("web.yaml", nulls.as_bytes(), SpecFormat::Yaml),
        Ok(expected_nulls)
    );
}

#[test]
fn isolation_fields_parse_and_default_to_the_exec_driver() {
    let doc = "name: web\ntask:\n  command: [/bin/true]\n";
    let spec = parse_job("web.yaml", doc.as_bytes(), SpecFormat::Yaml).expect("valid");
    assert_eq!(spec.task.driver, DriverKind::Exec);
    assert_eq!(spec.task.pids_limit, crate::DEFAULT_PIDS_LIMIT);
    assert!(spec.task.capabilities.is_empty());
    assert_eq!(spec.task.image, None);

    // Capabilities are normalised (case, CAP_ prefix), deduplicated, sorted.
    let doc = "name: web\ntask:\n  driver: docker\n  image: registry.local:5000/app/web:1.2@sha256:ab12\n  \
               command: [/bin/true]\n  capabilities: [cap_net_bind_service, CHOWN, NET_BIND_SERVICE]\n  \
               resources: {pids: 64}\n";
    let spec = parse_job("web.yaml", doc.as_bytes(), SpecFormat::Yaml).expect("valid");
    assert_eq!(spec.task.driver, DriverKind::Docker);
    assert_eq!(
        spec.task.image.as_deref(),
        Some("registry.local:5000/app/web:1.2@sha256:ab12")
    );
    assert_eq!(spec.task.capabilities, ["CHOWN", "NET_BIND_SERVICE"]);
    assert_eq!(spec.task.pids_limit, 64);
    assert_eq!(spec.task.resources.memory_bytes, 128 << 20);
}

#[test]
fn scalars_keep_their_source_text() {
    let doc = "name: \"007\"
task:
  driver: raw
  command: [sleep, 10, 0.50, true]
  env: {PORT: 8080, RATIO: 0.50, DEBUG: yes, HEX: 0x1f, MULTI: \"a\\nb\"}
  user: 1000
  resources: {cpu: 0.5, memory: 1Gi}
";
    let spec = parse_job("web.yaml", doc.as_bytes(), SpecFormat::Yaml).expect("valid");
    assert_eq!(spec.name, "007");
    assert_eq!(spec.task.command, ["sleep", "10", "0.50", "true"]);
    let env: Vec<(&str, &str)> = spec
        .task
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("DEBUG", "yes"),
            ("HEX", "0x1f"),
            ("MULTI", "a\nb"),
            ("PORT", "8080"),
            ("RATIO", "0.50"),
        ]
    );
    assert_eq!(spec.task.user.as_deref(), Some("1000"));
    assert_eq!(spec.task.resources.cpu_millis, 500);
}

#[test]
fn core_tags_that_match_their_node_are_accepted() {
    let doc = "name: !!str 123\ntask: !!map\n  driver: raw\n  command: !!seq [a]\n";
    let spec = parse_job("web.yaml", doc.as_bytes(), SpecFormat::Yaml).expect("valid");
    assert_eq!(spec.name, "123");
}

#[test]
fn byte_order_marks_are_accepted() {
    let yaml = format!("\u{feff}{VALID}");
    assert_eq!(render(SpecFormat::Yaml, yaml.as_bytes()), "ok");
    let json = format!("\u{feff}{VALID_JSON}");
    assert_eq!(render(SpecFormat::Json, json.as_bytes()), "ok");
}

#[test]
fn documents_at_the_size_limit_are_read() {
    // Padding in a comment: exactly MAX_SPEC_BYTES is accepted.
    let padding = MAX_SPEC_BYTES - VALID.len() - 2;
    let doc = format!("{VALID}#{}\n", "x".repeat(padding));
    assert_eq!(doc.len(), MAX_SPEC_BYTES);
    assert_eq!(render(SpecFormat::Yaml, doc.as_bytes()), "ok");
}

#[test]
fn placement_fields_parse_to_the_expected_spec() {
    let doc = "name: web
replicas: 4
priority: 80
preempt: true
constraints: [\"node.labels.zone in (a, b)\", \"node.role != manager\"]
affinities:
  - {expr: node.labels.disk == ssd, weight: 40}
  - {expr: node.hostname =~ ^old-}
spread: {attribute: node.labels.zone, targets: {a: 70, b: 30}}
strategy: spread
max_per_node: 2
task:
  driver: raw
  command: [sleep, \"100\"]
  resources: {cpu: 100m, memory: 64Mi, disk: 1Gi}
  ports: [{name: http, static: 8080, publish: true}, {name: metrics}]
";
    let spec = parse_job("web.yaml", doc.as_bytes(), SpecFormat::Yaml).expect("valid");
    let placement = &spec.placement;
    assert_eq!(placement.priority, 80);
    assert!(placement.preempt);
    let rules: Vec<&str> = placement.constraints.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        rules,
        vec!["node.labels.zone in (a, b)", "node.role != manager"]
    );
    let affinities: Vec<(&str, i32)> = placement
        .affinities
        .iter()
        .map(|a| (a.expr.as_str(), a.weight))
        .collect();
    assert_eq!(
        affinities,
        vec![
            ("node.labels.disk == ssd", 40),
            ("node.hostname =~ ^old-", 50)
        ]
    );
    let spread = placement.spread.as_ref().expect("spread");
    assert_eq!(spread.attribute.to_string(), "node.labels.zone");
    assert_eq!(
        spread.targets,
        vec![
            crate::SpreadTarget {
                value: "a".into(),
                percent: 70
            },
            crate::SpreadTarget {
                value: "b".into(),
                percent: 30
            },
        ]
    );
    assert_eq!(placement.strategy, crate::Strategy::Spread);
    assert_eq!(placement.max_per_node, Some(2));
    assert_eq!(spec.task.resources.disk_bytes, 1 << 30);
    assert_eq!(
        spec.task.ports,
        vec![
            crate::PortSpec {
                name: "http".into(),
                static_port: Some(8080),
                publish: true
            },
            crate::PortSpec {
                name: "metrics".into(),
                static_port: None,
                publish: false
            },
        ]
    );
    // The stored form reads back to the same spec.
    let json = serde_json::to_string(&spec).expect("serialises");
    let back: JobSpec = serde_json::from_str(&json).expect("deserialises");
    assert_eq!(back, spec);
}

#[test]
fn secrets_and_configs_parse_with_their_defaults() {
    let doc = "name: web\ntask:\n  command: [/bin/true]\n  env: {MODE: prod}\n  \
               secrets: [db, {name: tls.key, target: /run/tls/key.pem, mode: 0440, uid: 1000}]\n  \
               env_secrets: {DB_PASSWORD: db}\n  configs: [{name: app, mode: '0o644'}]\n";
    let spec = parse_job("web.yaml", doc.as_bytes(), SpecFormat::Yaml).expect("valid");
    let mount = |name: &str, target: Option<&str>, mode: u32, uid: Option<u32>| crate::FileMount {
        name: name.to_owned(),
        target: target.map(str::to_owned),
        mode,
        uid,
    };
    assert_eq!(
        spec.task.secrets,
        [
            mount("db", Some("/run/secrets/db"), 0o400, None),
            mount("tls.key", Some("/run/tls/key.pem"), 0o440, Some(1000)),
        ]
    );
    assert_eq!(
        spec.task.env_secrets,
        BTreeMap::from([("DB_PASSWORD".to_owned(), "db".to_owned())])
    );
    assert_eq!(
        spec.task.configs,
        [mount("app", Some("/run/configs/app"), 0o644, None)]
    );
    assert_eq!(
        spec.task.secret_names().into_iter().collect::<Vec<_>>(),
        ["db", "tls.key"]
    );

    // Raw tasks are told a directory: no target.
    let doc = "name: web\ntask:\n  driver: raw\n  command: [/bin/true]\n  secrets: [db]\n";
    let spec = parse_job("web.yaml", doc.as_bytes(), SpecFormat::Yaml).expect("valid");
    assert_eq!(spec.task.secrets, [mount("db", None, 0o400, None)]);

    // Docker tasks may mount anywhere absolute.
    let doc = "name: web\ntask:\n  driver: docker\n  image: app:1\n  command: [/bin/true]\n  \
               configs: [{name: nginx, target: /etc/nginx/nginx.conf}]\n";
    let spec = parse_job("web.yaml", doc.as_bytes(), SpecFormat::Yaml).expect("valid");
    assert_eq!(
        spec.task.configs,
        [mount("nginx", Some("/etc/nginx/nginx.conf"), 0o444, None)]
    );
}

#[test]
fn wrong_secrets_and_configs_are_explained() {
    let cases: &[(&str, &str)] = &[
        (
            "  driver: raw\n  secrets: [{name: db, target: /run/secrets/db}]\n",
            "web.yaml:5:32: task.secrets[0].target: \"/run/secrets/db\" cannot be chosen for a raw \
             task, which finds its secrets as $BATON_SECRETS_DIR/NAME (use driver exec or docker to \
             mount at a path)",
        ),
        (
            "  secrets: [{name: db, target: /etc/db}]\n",
            "web.yaml:4:32: task.secrets[0].target: \"/etc/db\" is outside /run: an exec task's \
             files are mounted in its private /run (its other directories are the host's, read-only)",
        ),
        (
            "  configs: [{name: app, target: /run/../etc/x}]\n",
            "web.yaml:4:33: task.configs[0].target: \"/run/../etc/x\" is not a plain absolute path \
             (expected no \".\", \"..\" or empty component)",
        ),
        (
            "  secrets: [{name: db, target: run/db}]\n",
            "web.yaml:4:32: task.secrets[0].target: \"run/db\" is not an absolute path to a file \
             (expected a path like /run/secrets/db)",
        ),
        (
            "  secrets: [db, db]\n",
            "web.yaml:4:17: task.secrets[1]: secret \"db\" is listed twice",
        ),
        (
            "  secrets: [../etc]\n",
            "web.yaml:4:13: task.secrets[0]: \"../etc\" is not a valid name (expected 1 to 64 \
             letters, digits, '.', '_' or '-', starting with a letter or digit)",
        ),
        (
            "  secrets: [{name: db, mode: 0888}]\n",
            "web.yaml:4:30: task.secrets[0].mode: \"0888\" is not a file mode (expected octal \
             permission bits from 0 to 0777, like 0400)",
        ),
        (
            "  secrets: [{name: db, owner: 1}]\n",
            "web.yaml:4:24: task.secrets[0].owner: unknown field \"owner\" (expected one of: name, \
             target, mode, uid)",
        ),
        (
            "  secrets: [{name: a, target: /run/x}]\n  configs: [{name: b, target: /run/x}]\n",
            "web.yaml:3:3: task.configs[0]: target \"/run/x\" is already used by task.secrets[0]",
        ),
        (
            "  env: {A: x}\n  env_secrets: {A: db, BATON_JOB: db, B: \"no/slash\"}\n",
            "web.yaml:5:17: task.env_secrets.A: is also set in env (a variable comes from one place)\n\
             web.yaml:5:24: task.env_secrets.BATON_JOB: BATON_ variables are set by Baton\n\
             web.yaml:5:42: task.env_secrets.B: \"no/slash\" is not a valid name (expected 1 to 64 \
             letters, digits, '.', '_' or '-', starting with a letter or digit)",
        ),
    ];
    for (extra, expected) in cases {
        let doc = format!("name: web\ntask:\n  command: [/bin/true]\n{extra}");
        let errors = parse_job("web.yaml", doc.as_bytes(), SpecFormat::Yaml)
            .expect_err(&format!("invalid: {extra}"));
        assert_eq!(errors.to_string(), *expected, "for {extra}");
    }
}
