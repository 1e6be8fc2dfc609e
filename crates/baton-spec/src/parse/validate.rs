//! Walks a document [`Node`] tree and builds the [`JobSpec`], checking every
//! field and collecting every problem with its field path and position, so
//! one submission shows all of them.
//!
//! Conventions: a field set to null (`workdir:` with nothing after it) counts as
//! absent, so optional fields fall back to their defaults; a field that is
//! missing is reported at the mapping that should hold it; a wrong field (an
//! unknown one, a duplicate, `replicas` on a batch job) is reported at its key.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry as MapEntry;
use std::time::Duration;

use super::SpecError;
use super::tree::{
    Entry, Node, Pos, Scalar, ScalarKind, Value, field_path, index_path, int_value, quote,
};
use crate::{
    DriverKind, JobKind, JobSpec, Resources, RestartCondition, RestartPolicy, TaskSpec,
    format_duration, parse_cpu, parse_duration, parse_memory,
};

const JOB_FIELDS: &[&str] = &[
    "name",
    "type",
    "replicas",
    "completions",
    "parallelism",
    "task",
    "restart",
];
const TASK_FIELDS: &[&str] = &[
    "driver",
    "command",
    "env",
    "workdir",
    "user",
    "resources",
    "kill_timeout",
];
const RESOURCES_FIELDS: &[&str] = &["cpu", "memory"];
const RESTART_FIELDS: &[&str] = &["policy", "max_attempts", "delay", "max_delay"];

const MAX_NAME_LEN: usize = 63;
const MAX_USER_NAME_LEN: usize = 32;
const MAX_REPLICAS: u32 = 10_000;
const MAX_COMPLETIONS: u32 = 100_000;
const MAX_PARALLELISM: u32 = 10_000;
const DEFAULT_CPU_MILLIS: u64 = 100;
const DEFAULT_MEMORY_BYTES: u64 = 128 << 20;
/// Below 1 MiB no real process starts; a smaller value is a unit mistake (`64` for `64Mi`).
const MIN_MEMORY_BYTES: u64 = 1 << 20;
const DEFAULT_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// A stop that waits longer than an hour for SIGKILL blocks a drain for as long.
const MAX_KILL_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_RESTART_DELAY: Duration = Duration::from_secs(1);
const DEFAULT_RESTART_MAX_DELAY: Duration = Duration::from_secs(30);
/// Longest quantity text (`100m`, `64Mi`, `1m30s`) passed to the quantity parsers,
/// which echo their whole input in errors.
const MAX_QUANTITY_CHARS: usize = 32;

/// Builds the spec from `root`, pushing every problem to `errors`. Returns a spec
/// only when nothing was wrong.
pub(crate) fn job(root: &Node, errors: &mut Vec<SpecError>) -> Option<JobSpec> {
    let n_errors_before = errors.len();
    let spec = Validator { errors }.job(root);
    spec.filter(|_| errors.len() == n_errors_before)
}

/// The job type, as far as the validator could tell.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KindWord {
    Service,
    Batch,
    Global,
}

impl KindWord {
    fn as_str(self) -> &'static str {
        match self {
            KindWord::Service => "service",
            KindWord::Batch => "batch",
            KindWord::Global => "global",
        }
    }
}

/// The known fields of one mapping, first occurrence of each key.
struct Fields<'a> {
    path: String,
    pos: Pos,
    entries: Vec<&'a Entry>,
}

impl<'a> Fields<'a> {
    /// The entry for `name`, unless absent or null.
    fn get(&self, name: &str) -> Option<&'a Entry> {
        self.entries
            .iter()
            .find(|entry| entry.key == name && !entry.value.is_null())
            .copied()
    }

    fn path(&self, name: &str) -> String {
        field_path(&self.path, name)
    }
}

struct Validator<'e> {
    errors: &'e mut Vec<SpecError>,
}

impl Validator<'_> {
    fn job(&mut self, root: &Node) -> Option<JobSpec> {
        let fields = self.fields("", root, JOB_FIELDS, "a job spec mapping")?;
        let name = self
            .required(&fields, "name", "a job name")
            .and_then(|node| self.job_name("name", node));
        let kind_word = match fields.get("type") {
            None => Some(KindWord::Service),
            Some(entry) => self.kind_word("type", &entry.value),
        };
        let replicas = self.count(
            &fields,
            "replicas",
            kind_word,
            KindWord::Service,
            0,
            MAX_REPLICAS,
        );
        let completions = self.count(
            &fields,
            "completions",
            kind_word,
            KindWord::Batch,
            1,
            MAX_COMPLETIONS,
        );
        let parallelism = self.count(
            &fields,
            "parallelism",
            kind_word,
            KindWord::Batch,
            1,
            MAX_PARALLELISM,
        );
        let task = self
            .required(&fields, "task", "a task mapping")
            .and_then(|node| self.task(&fields.path("task"), node));
        let batch = kind_word == Some(KindWord::Batch);
        let restart = self.restart(&fields.path("restart"), fields.get("restart"), batch);

        let kind = match kind_word? {
            KindWord::Service => JobKind::Service {
                replicas: replicas?.unwrap_or(1),
            },
            KindWord::Batch => JobKind::Batch {
                completions: completions?.unwrap_or(1),
                parallelism: parallelism?.unwrap_or(1),
            },
            KindWord::Global => JobKind::Global,
        };
        Some(JobSpec {
            name: name?,
            kind,
            task: task?,
            restart: restart?,
        })
    }

    fn job_name(&mut self, path: &str, node: &Node) -> Option<String> {
        // `name: 2048` is the name "2048": the source text is kept, so taking any
        // scalar loses nothing, and the character rules below still apply.
        let name = self.scalar_text(path, node, "a job name")?;
        let valid = (1..=MAX_NAME_LEN).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !valid {
            self.error(
                path,
                node.pos,
                format!(
                    "{} is not a valid job name (expected 1 to {MAX_NAME_LEN} characters \
                     of a-z, 0-9 and -, starting and ending with a letter or digit)",
                    quote(name)
                ),
            );
            return None;
        }
        Some(name.to_owned())
    }

    fn kind_word(&mut self, path: &str, node: &Node) -> Option<KindWord> {
        let word = self.string(path, node, "a job type")?;
        match word {
            "service" => Some(KindWord::Service),
            "batch" => Some(KindWord::Batch),
            "global" => Some(KindWord::Global),
            other => {
                self.error(
                    path,
                    node.pos,
                    format!(
                        "unknown job type {} (expected service, batch or global)",
                        quote(other)
                    ),
                );
                None
            }
        }
    }

    /// A count field that belongs to one job type: `Some(None)` when absent,
    /// `None` after an error.
    fn count(
        &mut self,
        fields: &Fields<'_>,
        name: &str,
        kind_word: Option<KindWord>,
        owner: KindWord,
        min: u32,
        max: u32,
    ) -> Option<Option<u32>> {
        let Some(entry) = fields.get(name) else {
            return Some(None);
        };
        let path = fields.path(name);
        match kind_word {
            Some(kind_word) if kind_word != owner => {
                self.error(
                    &path,
                    entry.key_pos,
                    format!(
                        "only for {} jobs (this is a {} job)",
                        owner.as_str(),
                        kind_word.as_str()
                    ),
                );
                None
            }
            _ => self.uint(&path, &entry.value, min, max).map(Some),
        }
    }

    fn task(&mut self, path: &str, node: &Node) -> Option<TaskSpec> {
        let fields = self.fields(path, node, TASK_FIELDS, "a task mapping")?;
        let driver = self
            .required(&fields, "driver", "a driver: raw")
            .and_then(|node| self.driver(&fields.path("driver"), node));
        let command = self
            .required(&fields, "command", "a list of strings")
            .and_then(|node| self.command(&fields.path("command"), node));
        let env = match fields.get("env") {
            None => Some(BTreeMap::new()),
            Some(entry) => self.env(&fields.path("env"), &entry.value),
        };
        let workdir = self.optional(&fields, "workdir", Self::workdir);
        let user = self.optional(&fields, "user", Self::user);
        let resources = match fields.get("resources") {
            None => Some(Resources {
                cpu_millis: DEFAULT_CPU_MILLIS,
                memory_bytes: DEFAULT_MEMORY_BYTES,
            }),
            Some(entry) => self.resources(&fields.path("resources"), &entry.value),
        };
        let kill_timeout = match fields.get("kill_timeout") {
            None => Some(DEFAULT_KILL_TIMEOUT),
            Some(entry) => self.kill_timeout(&fields.path("kill_timeout"), &entry.value),
        };
        Some(TaskSpec {
            driver: driver?,
            command: command?,
            env: env?,
            workdir: workdir?,
            user: user?,
            resources: resources?,
            kill_timeout: kill_timeout?,
        })
    }

    fn driver(&mut self, path: &str, node: &Node) -> Option<DriverKind> {
        match self.string(path, node, "a driver")? {
            "raw" => Some(DriverKind::Raw),
            other => {
                self.error(
                    path,
                    node.pos,
                    format!("unknown driver {} (expected raw)", quote(other)),
                );
                None
            }
        }
    }

    fn command(&mut self, path: &str, node: &Node) -> Option<Vec<String>> {
        let items = match &node.value {
            Value::Seq(items) => items,
            Value::Invalid => return None,
            _ => return self.wrong_type(path, node, "a list of strings"),
        };
        if items.is_empty() {
            self.error(
                path,
                node.pos,
                "must not be empty (expected a list of strings: the program and its arguments)",
            );
            return None;
        }
        let mut argv = Some(Vec::with_capacity(items.len()));
        for (idx, item) in items.iter().enumerate() {
            let item_path = index_path(path, idx);
            let arg = self
                .scalar_text(&item_path, item, "a string")
                .and_then(|arg| {
                    if idx == 0 && arg.is_empty() {
                        self.error(&item_path, item.pos, "the program must not be empty");
                        None
                    } else {
                        self.no_nul(&item_path, item.pos, arg)
                    }
                });
            match (&mut argv, arg) {
                (Some(argv), Some(arg)) => argv.push(arg.to_owned()),
                _ => argv = None,
            }
        }
        argv
    }

    fn env(&mut self, path: &str, node: &Node) -> Option<BTreeMap<String, String>> {
        let entries = self.mapping(path, node, "a mapping of variable names to values")?;
        let mut env = Some(BTreeMap::new());
        for entry in entries {
            let var_path = field_path(path, &entry.key);
            let name_ok = is_env_name(&entry.key);
            if !name_ok {
                self.error(
                    &var_path,
                    entry.key_pos,
                    "invalid environment variable name (expected letters, digits and _, \
                     not starting with a digit)",
                );
            }
            let value = self
                .scalar_text(&var_path, &entry.value, "a string")
                .and_then(|value| self.no_nul(&var_path, entry.value.pos, value));
            match (&mut env, value) {
                (Some(env), Some(value)) if name_ok => {
                    env.insert(entry.key.clone(), value.to_owned());
                }
                _ => env = None,
            }
        }
        env
    }

    fn workdir(&mut self, path: &str, node: &Node) -> Option<String> {
        let dir = self.string(path, node, "an absolute path")?;
        if !dir.starts_with('/') {
            self.error(
                path,
                node.pos,
                format!(
                    "{} is not an absolute path (expected a path starting with /)",
                    quote(dir)
                ),
            );
            return None;
        }
        self.no_nul(path, node.pos, dir).map(str::to_owned)
    }

    /// A user name, or a numeric uid written either as a number or as a string.
    fn user(&mut self, path: &str, node: &Node) -> Option<String> {
        let expected = "a user name like nobody, or a numeric uid";
        let text = match node.scalar() {
            Some(Scalar {
                kind: ScalarKind::Str,
                text,
            }) => text.as_str(),
            Some(Scalar {
                kind: ScalarKind::Int,
                text,
            }) => {
                return match int_value(text).and_then(|uid| u32::try_from(uid).ok()) {
                    Some(uid) => Some(uid.to_string()),
                    None => {
                        self.error(
                            path,
                            node.pos,
                            format!("{text} is not a valid uid (expected 0 to {})", u32::MAX),
                        );
                        None
                    }
                };
            }
            _ => return self.wrong_type(path, node, expected),
        };
        let uid_ok = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && text.parse::<u32>().is_ok();
        let name_ok = (1..=MAX_USER_NAME_LEN).contains(&text.len())
            && text.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !(uid_ok || name_ok) {
            self.error(
                path,
                node.pos,
                format!("{} is not a valid user (expected {expected})", quote(text)),
            );
            return None;
        }
        Some(text.to_owned())
    }

    fn resources(&mut self, path: &str, node: &Node) -> Option<Resources> {
        let fields = self.fields(path, node, RESOURCES_FIELDS, "a mapping of cpu and memory")?;
        let cpu_millis = match fields.get("cpu") {
            None => Some(DEFAULT_CPU_MILLIS),
            Some(entry) => {
                let cpu_path = fields.path("cpu");
                let node = &entry.value;
                self.quantity(&cpu_path, node, "a CPU quantity like 100m", parse_cpu)
                    .and_then(|(text, millis)| {
                        if millis == 0 {
                            self.error(
                                &cpu_path,
                                node.pos,
                                format!("{} must be greater than 0", quote(text)),
                            );
                            return None;
                        }
                        Some(millis)
                    })
            }
        };
        let memory_bytes = match fields.get("memory") {
            None => Some(DEFAULT_MEMORY_BYTES),
            Some(entry) => {
                let memory_path = fields.path("memory");
                let node = &entry.value;
                self.quantity(&memory_path, node, "a size like 64Mi", parse_memory)
                    .and_then(|(text, bytes)| {
                        if bytes < MIN_MEMORY_BYTES {
                            self.error(
                                &memory_path,
                                node.pos,
                                format!("{} is below the minimum of 1Mi", quote(text)),
                            );
                            return None;
                        }
                        Some(bytes)
                    })
            }
        };
        Some(Resources {
            cpu_millis: cpu_millis?,
            memory_bytes: memory_bytes?,
        })
    }

    fn kill_timeout(&mut self, path: &str, node: &Node) -> Option<Duration> {
        let (text, timeout) = self.quantity(path, node, "a duration like 5s", parse_duration)?;
        if timeout > MAX_KILL_TIMEOUT {
            self.error(
                path,
                node.pos,
                format!(
                    "{} is above the maximum of {}",
                    quote(text),
                    format_duration(MAX_KILL_TIMEOUT)
                ),
            );
            return None;
        }
        Some(timeout)
    }

    /// The restart policy; defaults depend on the job type (`batch`).
    fn restart(&mut self, path: &str, entry: Option<&Entry>, batch: bool) -> Option<RestartPolicy> {
        let mut policy = RestartPolicy {
            condition: if batch {
                RestartCondition::OnFailure
            } else {
                RestartCondition::Always
            },
            max_attempts: if batch { 3 } else { 0 },
            delay: DEFAULT_RESTART_DELAY,
            max_delay: DEFAULT_RESTART_MAX_DELAY,
        };
        let Some(entry) = entry else {
            return Some(policy);
        };
        let fields = self.fields(path, &entry.value, RESTART_FIELDS, "a restart mapping")?;
        let mut ok = true;
        if let Some(entry) = fields.get("policy") {
            match self.restart_condition(&fields.path("policy"), &entry.value) {
                Some(condition) => policy.condition = condition,
                None => ok = false,
            }
        }
        if let Some(entry) = fields.get("max_attempts") {
            match self.uint(&fields.path("max_attempts"), &entry.value, 0, u32::MAX) {
                Some(max_attempts) => policy.max_attempts = max_attempts,
                None => ok = false,
            }
        }
        let mut delay_ok = true;
        if let Some(entry) = fields.get("delay") {
            let delay_path = fields.path("delay");
            let node = &entry.value;
            match self.quantity(&delay_path, node, "a duration like 1s", parse_duration) {
                Some((text, delay)) if delay.is_zero() => {
                    self.error(
                        &delay_path,
                        node.pos,
                        format!("{} must be greater than 0", quote(text)),
                    );
                    delay_ok = false;
                }
                Some((_, delay)) => policy.delay = delay,
                None => delay_ok = false,
            }
        }
        match fields.get("max_delay") {
            // Unset, the cap is at least the delay, so `delay: 1m` alone is valid.
            None => policy.max_delay = policy.max_delay.max(policy.delay),
            Some(entry) => {
                let max_delay_path = fields.path("max_delay");
                let node = &entry.value;
                match self.quantity(&max_delay_path, node, "a duration like 30s", parse_duration) {
                    Some((text, max_delay)) if delay_ok && max_delay < policy.delay => {
                        self.error(
                            &max_delay_path,
                            node.pos,
                            format!(
                                "{} is shorter than restart.delay (expected at least {})",
                                quote(text),
                                format_duration(policy.delay)
                            ),
                        );
                        ok = false;
                    }
                    Some((_, max_delay)) => policy.max_delay = max_delay,
                    None => ok = false,
                }
            }
        }
        (ok && delay_ok).then_some(policy)
    }

    fn restart_condition(&mut self, path: &str, node: &Node) -> Option<RestartCondition> {
        match self.string(path, node, "a restart policy")? {
            "always" => Some(RestartCondition::Always),
            "on-failure" => Some(RestartCondition::OnFailure),
            "never" => Some(RestartCondition::Never),
            other => {
                self.error(
                    path,
                    node.pos,
                    format!(
                        "unknown restart policy {} (expected always, on-failure or never)",
                        quote(other)
                    ),
                );
                None
            }
        }
    }

    // Shapes.

    /// The entries of a mapping, first occurrence of each key; duplicate and
    /// merge keys are reported.
    fn mapping<'a>(
        &mut self,
        path: &str,
        node: &'a Node,
        expected: &str,
    ) -> Option<Vec<&'a Entry>> {
        let entries = match &node.value {
            Value::Map(entries) => entries,
            Value::Invalid => return None,
            _ => return self.wrong_type(path, node, expected),
        };
        let mut first_seen: BTreeMap<&str, Pos> = BTreeMap::new();
        let mut unique = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.key == "<<" {
                self.error(
                    path,
                    entry.key_pos,
                    "merge keys (<<) are not supported in job specs (write the fields out)",
                );
                continue;
            }
            match first_seen.entry(&entry.key) {
                MapEntry::Occupied(first) => {
                    let first = *first.get();
                    self.error(
                        &field_path(path, &entry.key),
                        entry.key_pos,
                        format!(
                            "duplicate key (first defined at line {}, column {})",
                            first.line, first.col
                        ),
                    );
                }
                MapEntry::Vacant(slot) => {
                    slot.insert(entry.key_pos);
                    unique.push(entry);
                }
            }
        }
        Some(unique)
    }

    /// A mapping with a fixed set of fields; unknown ones are reported.
    fn fields<'a>(
        &mut self,
        path: &str,
        node: &'a Node,
        allowed: &[&str],
        expected: &str,
    ) -> Option<Fields<'a>> {
        let entries = self.mapping(path, node, expected)?;
        let mut known = Vec::with_capacity(entries.len());
        for entry in entries {
            if allowed.contains(&entry.key.as_str()) {
                known.push(entry);
            } else {
                self.error(
                    &field_path(path, &entry.key),
                    entry.key_pos,
                    format!(
                        "unknown field {} (expected one of: {})",
                        quote(&entry.key),
                        allowed.join(", ")
                    ),
                );
            }
        }
        Some(Fields {
            path: path.to_owned(),
            pos: node.pos,
            entries: known,
        })
    }

    /// A field that must be present (and not null).
    fn required<'a>(
        &mut self,
        fields: &Fields<'a>,
        name: &str,
        expected: &str,
    ) -> Option<&'a Node> {
        let entry = fields.entries.iter().find(|entry| entry.key == name);
        match entry {
            Some(entry) if !entry.value.is_null() => Some(&entry.value),
            Some(entry) => self.wrong_type(&fields.path(name), &entry.value, expected),
            None => {
                self.error(
                    &fields.path(name),
                    fields.pos,
                    format!("missing required field (expected {expected})"),
                );
                None
            }
        }
    }

    /// An optional field read by `read`: `Some(None)` when absent, `None` after an error.
    fn optional<T>(
        &mut self,
        fields: &Fields<'_>,
        name: &str,
        read: fn(&mut Self, &str, &Node) -> Option<T>,
    ) -> Option<Option<T>> {
        match fields.get(name) {
            None => Some(None),
            Some(entry) => read(self, &fields.path(name), &entry.value).map(Some),
        }
    }

    /// A string scalar.
    fn string<'a>(&mut self, path: &str, node: &'a Node, expected: &str) -> Option<&'a str> {
        match &node.value {
            Value::Scalar(Scalar {
                kind: ScalarKind::Str,
                text,
            }) => Some(text),
            Value::Invalid => None,
            _ => self.wrong_type(path, node, expected),
        }
    }

    /// Any scalar but null, as written: `[sleep, 10]` and `{PORT: 8080}` mean the
    /// text `10` and `8080`, and since the source text is kept, nothing is lost
    /// (`0.50` stays `0.50`).
    fn scalar_text<'a>(&mut self, path: &str, node: &'a Node, expected: &str) -> Option<&'a str> {
        match &node.value {
            Value::Scalar(scalar) if scalar.kind != ScalarKind::Null => Some(&scalar.text),
            Value::Invalid => None,
            _ => self.wrong_type(path, node, expected),
        }
    }

    /// An integer in `min..=max`.
    fn uint(&mut self, path: &str, node: &Node, min: u32, max: u32) -> Option<u32> {
        let text = match &node.value {
            Value::Scalar(Scalar {
                kind: ScalarKind::Int,
                text,
            }) => text,
            Value::Invalid => return None,
            _ => return self.wrong_type(path, node, "an integer"),
        };
        let value = int_value(text)
            .and_then(|value| u32::try_from(value).ok())
            .filter(|value| (min..=max).contains(value));
        if value.is_none() {
            self.error(
                path,
                node.pos,
                format!("{} is out of range (expected {min} to {max})", quote(text)),
            );
        }
        value
    }

    /// A quantity (`100m`, `64Mi`, `5s`) read by `parse`, with the text it came from.
    fn quantity<'a, T>(
        &mut self,
        path: &str,
        node: &'a Node,
        expected: &str,
        parse: fn(&str) -> Result<T, String>,
    ) -> Option<(&'a str, T)> {
        let text = match &node.value {
            Value::Scalar(Scalar {
                kind: ScalarKind::Str | ScalarKind::Int | ScalarKind::Float,
                text,
            }) if text.chars().count() <= MAX_QUANTITY_CHARS => text,
            Value::Invalid => return None,
            _ => return self.wrong_type(path, node, expected),
        };
        match parse(text) {
            Ok(value) => Some((text, value)),
            Err(message) => {
                self.error(path, node.pos, message);
                None
            }
        }
    }

    fn no_nul<'a>(&mut self, path: &str, pos: Pos, text: &'a str) -> Option<&'a str> {
        if text.contains('\0') {
            self.error(path, pos, "must not contain NUL characters");
            return None;
        }
        Some(text)
    }

    fn wrong_type<T>(&mut self, path: &str, node: &Node, expected: &str) -> Option<T> {
        self.error(
            path,
            node.pos,
            format!("expected {expected}, found {}", node.describe()),
        );
        None
    }

    fn error(&mut self, path: &str, pos: Pos, message: impl Into<String>) {
        self.errors.push(SpecError {
            path: path.to_owned(),
            line: Some(pos.line),
            col: Some(pos.col),
            message: message.into(),
        });
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`
fn is_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
