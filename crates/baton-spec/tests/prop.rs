//! Property tests of `parse_job`: no input makes it panic or produce a
//! malformed report, and every valid spec survives a round trip through YAML
//! and JSON text.

use std::fmt::Write as _;
use std::time::Duration;

use baton_spec::{
    DriverKind, JobKind, JobSpec, MAX_REPORTED_ERRORS, Resources, RestartCondition, RestartPolicy,
    SpecFormat, TaskSpec, format_duration, format_memory, parse_job,
};
use proptest::prelude::*;
use proptest::sample::Index;

const VALID_YAML: &str = "name: web
type: service
replicas: 2
task:
  driver: raw
  command: [\"/bin/sleep\", \"100\"]
  env: {GREETING: hello}
  workdir: /tmp
  user: nobody
  resources:
    cpu: 100m
    memory: 64Mi
  kill_timeout: 5s
restart:
  policy: on-failure
  max_attempts: 3
  delay: 1s
  max_delay: 30s
";

const VALID_JSON: &str = r#"{"name": "web", "type": "batch", "completions": 3, "parallelism": 2,
 "task": {"driver": "raw", "command": ["/bin/sh", "-c", "echo \u00e9"],
          "env": {"GREETING": "hello"}, "workdir": "/tmp", "user": "1000",
          "resources": {"cpu": "0.5", "memory": "64Mi"}, "kill_timeout": "5s"},
 "restart": {"policy": "never", "max_attempts": 0, "delay": "1s", "max_delay": "30s"}}"#;

/// Pieces of YAML and JSON syntax, so mutations reach the interesting paths
/// (anchors, tags, merge keys, documents, nesting) more often than random bytes do.
const TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "!!str ",
    "!foo ",
    "<<: ",
    "---\n",
    "...\n",
    "[",
    "]",
    "{",
    "}",
    ":",
    ": ",
    "- ",
    ",",
    "\"",
    "'",
    "|\n",
    ">-\n",
    "#",
    "\t",
    "? ",
    "%YAML 1.2\n",
    "\n",
    "  ",
    "\\u",
    "\\ud800",
    "\u{feff}",
    "\u{0}",
    "é",
    "~",
    "null",
    "true",
    "0x1f",
    "1e400",
    "-1",
    "name",
    "task",
    "replicas",
    "type: batch\n",
];

#[derive(Clone, Debug)]
enum Mutation {
    Delete(Index, usize),
    InsertToken(Index, Index),
    InsertBytes(Index, Vec<u8>),
    Replace(Index, u8),
    Duplicate(Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1..16usize).prop_map(|(at, len)| Mutation::Delete(at, len)),
        (any::<Index>(), any::<Index>()).prop_map(|(at, tok)| Mutation::InsertToken(at, tok)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::InsertBytes(at, bytes)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Replace(at, byte)),
        (any::<Index>(), 1..64usize).prop_map(|(at, len)| Mutation::Duplicate(at, len)),
    ]
}

fn apply(doc: &mut Vec<u8>, mutation: &Mutation) {
    let at = |idx: &Index, doc: &Vec<u8>| idx.index(doc.len() + 1);
    match mutation {
        Mutation::Delete(idx, len) => {
            let start = at(idx, doc);
            let end = (start + len).min(doc.len());
            doc.drain(start..end);
        }
        Mutation::InsertToken(idx, token) => {
            let start = at(idx, doc);
            let token = TOKENS[token.index(TOKENS.len())].as_bytes();
            doc.splice(start..start, token.iter().copied());
        }
        Mutation::InsertBytes(idx, bytes) => {
            let start = at(idx, doc);
            doc.splice(start..start, bytes.iter().copied());
        }
        Mutation::Replace(idx, byte) => {
            if !doc.is_empty() {
                let pos = idx.index(doc.len());
                doc[pos] = *byte;
            }
        }
        Mutation::Duplicate(idx, len) => {
            let start = at(idx, doc);
            let end = (start + len).min(doc.len());
            let piece: Vec<u8> = doc[start..end].to_vec();
            doc.splice(start..start, piece);
        }
    }
}

/// The report is well formed: one line per problem, each prefixed with the
/// source name, each with a message, and capped.
fn check_report(input: &[u8], format: SpecFormat) {
    if let Err(errors) = parse_job("doc", input, format) {
        assert!(!errors.errors.is_empty());
        assert!(errors.errors.len() <= MAX_REPORTED_ERRORS + 1);
        let rendered = errors.to_string();
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines.len(), errors.errors.len(), "{rendered}");
        for (line, error) in lines.iter().zip(&errors.errors) {
            assert!(line.starts_with("doc"), "{line}");
            assert!(!error.message.is_empty(), "{line}");
            assert_eq!(error.line.is_some(), error.col.is_some(), "{line}");
        }
        let positions: Vec<_> = errors.errors.iter().map(|e| (e.line, e.col)).collect();
        let mut sorted = positions.clone();
        sorted.sort();
        assert_eq!(positions, sorted, "not in document order:\n{rendered}");
    }
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
}

/// Any text without NUL, including quotes, newlines, control characters and
/// non-ASCII.
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,12}"
}

fn kind() -> impl Strategy<Value = JobKind> {
    prop_oneof![
        (0..=10_000u32).prop_map(|replicas| JobKind::Service { replicas }),
        (1..=100_000u32, 1..=10_000u32).prop_map(|(completions, parallelism)| JobKind::Batch {
            completions,
            parallelism
        }),
        Just(JobKind::Global),
    ]
}

fn task() -> impl Strategy<Value = TaskSpec> {
    (
        ("[^\u{0}]{1,12}", prop::collection::vec(text(), 0..4)),
        prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,10}", text(), 0..4),
        // Plain absolute paths (no ".", ".." or empty component).
        prop::option::of("/w[a-z0-9_-]{0,6}(/[a-z0-9_-]{1,8}){0,2}"),
        prop::option::of(prop_oneof![
            "[a-z_][a-z0-9_-]{0,31}",
            any::<u32>().prop_map(|uid| uid.to_string()),
        ]),
        (1..=64_000u64, 1u64 << 20..1u64 << 40),
        0..=3_600_000u64,
    )
        .prop_map(
            |((program, args), env, workdir, user, (cpu_millis, memory_bytes), kill_ms)| TaskSpec {
                ports: Default::default(),
                image: None,
                capabilities: Vec::new(),
                pids_limit: baton_spec::DEFAULT_PIDS_LIMIT,
                secrets: Vec::new(),
                env_secrets: std::collections::BTreeMap::new(),
                configs: Vec::new(),
                driver: DriverKind::Raw,
                command: std::iter::once(program).chain(args).collect(),
                env,
                workdir,
                user,
                resources: Resources {
                    disk_bytes: 0,
                    cpu_millis,
                    memory_bytes,
                },
                kill_timeout: Duration::from_millis(kill_ms),
            },
        )
}

fn restart() -> impl Strategy<Value = RestartPolicy> {
    (
        prop_oneof![
            Just(RestartCondition::Always),
            Just(RestartCondition::OnFailure),
            Just(RestartCondition::Never),
        ],
        any::<u32>(),
        1..=10_000_000u64,
        0..=10_000_000u64,
    )
        .prop_map(
            |(condition, max_attempts, delay_ms, extra_ms)| RestartPolicy {
                condition,
                max_attempts,
                delay: Duration::from_millis(delay_ms),
                max_delay: Duration::from_millis(delay_ms + extra_ms),
            },
        )
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (name(), kind(), task(), restart()).prop_map(|(name, kind, task, restart)| JobSpec {
        placement: Default::default(),
        name,
        kind,
        task,
        restart,
    })
}

/// A YAML double-quoted scalar with every character outside printable ASCII
/// escaped, so the text survives whatever it contains.
fn yaml_quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

fn to_yaml(spec: &JobSpec) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "name: {}", spec.name);
    let _ = writeln!(out, "type: {}", spec.kind.as_str());
    match spec.kind {
        JobKind::Service { replicas } => {
            let _ = writeln!(out, "replicas: {replicas}");
        }
        JobKind::Batch {
            completions,
            parallelism,
        } => {
            let _ = writeln!(
                out,
                "completions: {completions}\nparallelism: {parallelism}"
            );
        }
        JobKind::Global => {}
    }
    let task = &spec.task;
    let _ = writeln!(out, "task:\n  driver: {}\n  command:", task.driver.as_str());
    for arg in &task.command {
        let _ = writeln!(out, "    - {}", yaml_quote(arg));
    }
    if !task.env.is_empty() {
        let _ = writeln!(out, "  env:");
        for (key, value) in &task.env {
            let _ = writeln!(out, "    {key}: {}", yaml_quote(value));
        }
    }
    if let Some(workdir) = &task.workdir {
        let _ = writeln!(out, "  workdir: {}", yaml_quote(workdir));
    }
    if let Some(user) = &task.user {
        let _ = writeln!(out, "  user: {}", yaml_quote(user));
    }
    let _ = writeln!(
        out,
        "  resources: {{cpu: {}m, memory: {}}}\n  kill_timeout: {}",
        task.resources.cpu_millis,
        format_memory(task.resources.memory_bytes),
        format_duration(task.kill_timeout)
    );
    let restart = &spec.restart;
    let _ = writeln!(
        out,
        "restart:\n  policy: {}\n  max_attempts: {}\n  delay: {}\n  max_delay: {}",
        restart.condition.as_str(),
        restart.max_attempts,
        format_duration(restart.delay),
        format_duration(restart.max_delay)
    );
    out
}

fn to_json(spec: &JobSpec) -> String {
    let task = &spec.task;
    let mut doc = serde_json::json!({
        "name": spec.name,
        "type": spec.kind.as_str(),
        "task": {
            "driver": task.driver.as_str(),
            "command": task.command,
            "env": task.env,
            "resources": {
                "cpu": format!("{}m", task.resources.cpu_millis),
                "memory": format_memory(task.resources.memory_bytes),
            },
            "kill_timeout": format_duration(task.kill_timeout),
        },
        "restart": {
            "policy": spec.restart.condition.as_str(),
            "max_attempts": spec.restart.max_attempts,
            "delay": format_duration(spec.restart.delay),
            "max_delay": format_duration(spec.restart.max_delay),
        },
    });
    match spec.kind {
        JobKind::Service { replicas } => doc["replicas"] = replicas.into(),
        JobKind::Batch {
            completions,
            parallelism,
        } => {
            doc["completions"] = completions.into();
            doc["parallelism"] = parallelism.into();
        }
        JobKind::Global => {}
    }
    if let Some(workdir) = &task.workdir {
        doc["task"]["workdir"] = workdir.as_str().into();
    }
    if let Some(user) = &task.user {
        doc["task"]["user"] = user.as_str().into();
    }
    serde_json::to_string_pretty(&doc).expect("a json value renders")
}

// 256 cases each by default; PROPTEST_CASES=100000 for a longer run.
proptest! {
    #[test]
    fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_report(&bytes, SpecFormat::Yaml);
        check_report(&bytes, SpecFormat::Json);
    }

    #[test]
    fn any_text_never_panics(text in "\\PC{0,256}") {
        check_report(text.as_bytes(), SpecFormat::Yaml);
        check_report(text.as_bytes(), SpecFormat::Json);
    }

    #[test]
    fn mutated_valid_documents_never_panic(
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        for (base, format) in [(VALID_YAML, SpecFormat::Yaml), (VALID_JSON, SpecFormat::Json)] {
            let mut doc = base.as_bytes().to_vec();
            for mutation in &mutations {
                apply(&mut doc, mutation);
            }
            check_report(&doc, format);
            // The other reader gets the same bytes: JSON is almost YAML.
            let other = if format == SpecFormat::Yaml { SpecFormat::Json } else { SpecFormat::Yaml };
            check_report(&doc, other);
        }
    }

    #[test]
    fn valid_specs_round_trip_through_yaml(spec in job_spec()) {
        let yaml = to_yaml(&spec);
        prop_assert_eq!(parse_job("gen.yaml", yaml.as_bytes(), SpecFormat::Yaml), Ok(spec), "{}", yaml);
    }

    #[test]
    fn valid_specs_round_trip_through_json(spec in job_spec()) {
        let json = to_json(&spec);
        prop_assert_eq!(parse_job("gen.json", json.as_bytes(), SpecFormat::Json), Ok(spec), "{}", json);
    }
}

#[test]
fn base_documents_are_valid() {
    for (doc, format) in [
        (VALID_YAML, SpecFormat::Yaml),
        (VALID_JSON, SpecFormat::Json),
    ] {
        if let Err(errors) = parse_job("base", doc.as_bytes(), format) {
            panic!("{errors}");
        }
    }
}

#[test]
fn json_reader_agrees_with_serde_json_on_syntax() {
    // Spot checks of the hand-written reader against serde_json on the edges of
    // the grammar: each must be accepted by both (as a value) or by neither.
    let cases = [
        "0",
        "-0",
        "01",
        "1.",
        ".5",
        "1e5",
        "1E+5",
        "1e",
        "-",
        "\"\\u00e9\"",
        "\"\\ud83d\\ude00\"",
        "\"\\ud83d\"",
        "\"\\x\"",
        "\"\t\"",
        "[1,]",
        "{\"a\":1,}",
        "[1 2]",
        "tru",
        "nul",
        "{}",
        "[]",
        "\"a\" \"b\"",
        "{\"a\" 1}",
        "[\"\\/\"]",
    ];
    for case in cases {
        let serde_ok = serde_json::from_str::<serde_json::Value>(case).is_ok();
        let ours = parse_job("case", case.as_bytes(), SpecFormat::Json);
        let ours_syntax_ok = match &ours {
            Ok(_) => true,
            Err(errors) => !errors
                .errors
                .iter()
                .any(|e| e.message.starts_with("invalid JSON")),
        };
        assert_eq!(ours_syntax_ok, serde_ok, "{case}: {ours:?}");
    }
}
