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
    ALLOWED_CAPABILITIES, Affinity, Attribute, Constraint, DEFAULT_PIDS_LIMIT, DEFAULT_PRIORITY,
    DYNAMIC_PORT_MAX, DYNAMIC_PORT_MIN, DriverKind, FileKind, FileMount, JobKind, JobSpec,
    MAX_PRIORITY, MAX_REPLICAS, MAX_TASK_FILES, MIN_PRIORITY, PIDS_LIMIT_RANGE, Placement,
    PortSpec, Resources, RestartCondition, RestartPolicy, Spread, SpreadTarget, Strategy, TaskSpec,
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
    "priority",
    "preempt",
    "constraints",
    "affinities",
    "spread",
    "strategy",
    "max_per_node",
];
const TASK_FIELDS: &[&str] = &[
    "driver",
    "command",
    "env",
    "workdir",
    "user",
    "resources",
    "kill_timeout",
    "ports",
    "image",
    "capabilities",
    "secrets",
    "env_secrets",
    "configs",
];
const FILE_FIELDS: &[&str] = &["name", "target", "mode", "uid"];
const RESOURCES_FIELDS: &[&str] = &["cpu", "memory", "disk", "pids"];
/// Longest image reference accepted (Docker's own limit on a name is 255 per
/// component; a whole reference with a digest stays well below this).
const MAX_IMAGE_LEN: usize = 512;
const AFFINITY_FIELDS: &[&str] = &["expr", "weight"];
const SPREAD_FIELDS: &[&str] = &["attribute", "targets"];
const PORT_FIELDS: &[&str] = &["name", "static", "publish"];
/// More rules than this is a spec generated wrong; each costs every placement.
const MAX_RULES: usize = 32;
const MAX_PORTS: usize = 32;
const MAX_PORT_NAME_LEN: usize = 32;
const DEFAULT_AFFINITY_WEIGHT: i32 = 50;
const RESTART_FIELDS: &[&str] = &["policy", "max_attempts", "delay", "max_delay"];

const MAX_NAME_LEN: usize = 63;
const MAX_USER_NAME_LEN: usize = 32;
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
        let placement = self.placement(&fields);

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
            placement: placement?,
        })
    }

    /// The job-level placement fields.
    fn placement(&mut self, fields: &Fields<'_>) -> Option<Placement> {
        let priority = match fields.get("priority") {
            None => Some(DEFAULT_PRIORITY),
            Some(entry) => self.uint(
                &fields.path("priority"),
                &entry.value,
                MIN_PRIORITY,
                MAX_PRIORITY,
            ),
        };
        let preempt = match fields.get("preempt") {
            None => Some(false),
            Some(entry) => self.boolean(&fields.path("preempt"), &entry.value),
        };
        let constraints = match fields.get("constraints") {
            None => Some(Vec::new()),
            Some(entry) => self.constraints(&fields.path("constraints"), &entry.value),
        };
        let affinities = match fields.get("affinities") {
            None => Some(Vec::new()),
            Some(entry) => self.affinities(&fields.path("affinities"), &entry.value),
        };
        let spread = self.optional(fields, "spread", Self::spread);
        let strategy = match fields.get("strategy") {
            None => Some(Strategy::Binpack),
            Some(entry) => self.strategy(&fields.path("strategy"), &entry.value),
        };
        let max_per_node = match fields.get("max_per_node") {
            None => Some(None),
            Some(entry) => self
                .uint(&fields.path("max_per_node"), &entry.value, 1, MAX_REPLICAS)
                .map(Some),
        };
        Some(Placement {
            constraints: constraints?,
            affinities: affinities?,
            spread: spread?,
            strategy: strategy?,
            max_per_node: max_per_node?,
            priority: priority?,
            preempt: preempt?,
        })
    }

    /// One constraint expression (`node.labels.zone == a`).
    fn constraint(&mut self, path: &str, node: &Node) -> Option<Constraint> {
        let text = self.string(path, node, "a constraint like node.labels.zone == a")?;
        match Constraint::parse(text) {
            Ok(constraint) => Some(constraint),
            Err(err) => {
                self.error(
                    path,
                    node.pos,
                    format!(
                        "{} at character {}: {}",
                        quote(text),
                        err.column,
                        err.message
                    ),
                );
                None
            }
        }
    }

    /// A list of at most [`MAX_RULES`] items read by `read`.
    fn list<T>(
        &mut self,
        path: &str,
        node: &Node,
        expected: &str,
        read: fn(&mut Self, &str, &Node) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = match &node.value {
            Value::Seq(items) => items,
            Value::Invalid => return None,
            _ => return self.wrong_type(path, node, expected),
        };
        if items.len() > MAX_RULES {
            self.error(
                path,
                node.pos,
                format!("{} items, more than the limit of {MAX_RULES}", items.len()),
            );
            return None;
        }
        let mut out = Some(Vec::with_capacity(items.len()));
        for (idx, item) in items.iter().enumerate() {
            let value = read(self, &index_path(path, idx), item);
            match (&mut out, value) {
                (Some(out), Some(value)) => out.push(value),
                _ => out = None,
            }
        }
        out
    }

    fn constraints(&mut self, path: &str, node: &Node) -> Option<Vec<Constraint>> {
        self.list(
            path,
            node,
            "a list of constraints like node.labels.zone == a",
            Self::constraint,
        )
    }

    fn affinities(&mut self, path: &str, node: &Node) -> Option<Vec<Affinity>> {
        self.list(
            path,
            node,
            "a list of affinities like {expr: node.labels.disk == ssd, weight: 50}",
            Self::affinity,
        )
    }

    fn affinity(&mut self, path: &str, node: &Node) -> Option<Affinity> {
        let fields = self.fields(
            path,
            node,
            AFFINITY_FIELDS,
            "an affinity mapping like {expr: node.labels.disk == ssd, weight: 50}",
        )?;
        let expr = self
            .required(&fields, "expr", "a constraint like node.labels.disk == ssd")
            .and_then(|node| self.constraint(&fields.path("expr"), node));
        let weight = match fields.get("weight") {
            None => Some(DEFAULT_AFFINITY_WEIGHT),
            Some(entry) => self.weight(&fields.path("weight"), &entry.value),
        };
        Some(Affinity {
            expr: expr?,
            weight: weight?,
        })
    }

    /// An affinity weight: -100 to 100, not 0.
    fn weight(&mut self, path: &str, node: &Node) -> Option<i32> {
        let text = match &node.value {
            Value::Scalar(Scalar {
                kind: ScalarKind::Int,
                text,
            }) => text,
            Value::Invalid => return None,
            _ => return self.wrong_type(path, node, "an integer from -100 to 100"),
        };
        let value = int_value(text)
            .and_then(|value| i32::try_from(value).ok())
            .filter(|value| (-100..=100).contains(value) && *value != 0);
        if value.is_none() {
            self.error(
                path,
                node.pos,
                format!(
                    "{} is not a valid weight (expected -100 to 100, not 0)",
                    quote(text)
                ),
            );
        }
        value
    }

    fn spread(&mut self, path: &str, node: &Node) -> Option<Spread> {
        let fields = self.fields(
            path,
            node,
            SPREAD_FIELDS,
            "a spread mapping like {attribute: node.labels.zone}",
        )?;
        let attribute = self
            .required(&fields, "attribute", "an attribute like node.labels.zone")
            .and_then(|node| self.spread_attribute(&fields.path("attribute"), node));
        let targets = match fields.get("targets") {
            None => Some(Vec::new()),
            Some(entry) => self.spread_targets(&fields.path("targets"), &entry.value),
        };
        Some(Spread {
            attribute: attribute?,
            targets: targets?,
        })
    }

    fn spread_attribute(&mut self, path: &str, node: &Node) -> Option<Attribute> {
        let text = self.string(path, node, "an attribute like node.labels.zone")?;
        match Attribute::parse(text) {
            Ok(Attribute::Drivers) => {
                self.error(
                    path,
                    node.pos,
                    "node.drivers is a set and cannot be spread over (expected node.labels.<key>, \
                     node.hostname, node.role or node.id)",
                );
                None
            }
            Ok(attribute) => Some(attribute),
            Err(message) => {
                self.error(path, node.pos, message);
                None
            }
        }
    }

    fn spread_targets(&mut self, path: &str, node: &Node) -> Option<Vec<SpreadTarget>> {
        let entries = self.mapping(path, node, "a mapping of values to percentages")?;
        let mut targets = Some(Vec::with_capacity(entries.len()));
        let mut total: u32 = 0;
        for entry in &entries {
            let value_path = field_path(path, &entry.key);
            let percent = self.uint(&value_path, &entry.value, 1, 100);
            match (&mut targets, percent) {
                (Some(targets), Some(percent)) => {
                    total += percent;
                    targets.push(SpreadTarget {
                        value: entry.key.clone(),
                        percent,
                    });
                }
                _ => targets = None,
            }
        }
        if total > 100 {
            self.error(
                path,
                node.pos,
                format!("the percentages add up to {total} (expected at most 100)"),
            );
            return None;
        }
        targets
    }

    fn strategy(&mut self, path: &str, node: &Node) -> Option<Strategy> {
        match self.string(path, node, "a strategy: binpack or spread")? {
            "binpack" => Some(Strategy::Binpack),
            "spread" => Some(Strategy::Spread),
            other => {
                self.error(
                    path,
                    node.pos,
                    format!(
                        "unknown strategy {} (expected binpack or spread)",
                        quote(other)
                    ),
                );
                None
            }
        }
    }

    fn ports(&mut self, path: &str, node: &Node) -> Option<Vec<PortSpec>> {
        let ports = self.list(
            path,
            node,
            "a list of ports like {name: http, static: 8080}",
            Self::port,
        )?;
        if ports.len() > MAX_PORTS {
            self.error(
                path,
                node.pos,
                format!("{} ports, more than the limit of {MAX_PORTS}", ports.len()),
            );
            return None;
        }
        let mut ok = true;
        for (idx, port) in ports.iter().enumerate() {
            let earlier = &ports[..idx];
            if earlier.iter().any(|p| p.name == port.name) {
                ok = false;
                self.error(
                    &index_path(path, idx),
                    node.pos,
                    format!("port name {} is used twice", quote(&port.name)),
                );
            }
            if let Some(number) = port.static_port
                && earlier.iter().any(|p| p.static_port == Some(number))
            {
                ok = false;
                self.error(
                    &index_path(path, idx),
                    node.pos,
                    format!("static port {number} is used twice"),
                );
            }
        }
        ok.then_some(ports)
    }

    fn port(&mut self, path: &str, node: &Node) -> Option<PortSpec> {
        let fields = self.fields(
            path,
            node,
            PORT_FIELDS,
            "a port mapping like {name: http, static: 8080}",
        )?;
        let name = self
            .required(&fields, "name", "a port name like http")
            .and_then(|node| self.port_name(&fields.path("name"), node));
        let static_port = match fields.get("static") {
            None => Some(None),
            Some(entry) => self
                .uint(&fields.path("static"), &entry.value, 1, u32::from(u16::MAX))
                .and_then(|n| u16::try_from(n).ok())
                .and_then(|n| {
                    if (DYNAMIC_PORT_MIN..=DYNAMIC_PORT_MAX).contains(&n) {
                        self.error(
                            &fields.path("static"),
                            entry.value.pos,
                            format!(
                                "{n} is in the range of dynamic ports \
                                 ({DYNAMIC_PORT_MIN}-{DYNAMIC_PORT_MAX}); choose a static port \
                                 outside it, or leave `static` out for a dynamic one"
                            ),
                        );
                        return None;
                    }
                    Some(Some(n))
                }),
        };
        let publish = match fields.get("publish") {
            None => Some(false),
            Some(entry) => self.boolean(&fields.path("publish"), &entry.value),
        };
        Some(PortSpec {
            name: name?,
            static_port: static_port?,
            publish: publish?,
        })
    }

    fn port_name(&mut self, path: &str, node: &Node) -> Option<String> {
        let name = self.scalar_text(path, node, "a port name like http")?;
        let valid = (1..=MAX_PORT_NAME_LEN).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            self.error(
                path,
                node.pos,
                format!(
                    "{} is not a valid port name (expected 1 to {MAX_PORT_NAME_LEN} characters \
                     of a-z, 0-9 and _, starting with a letter)",
                    quote(name)
                ),
            );
            return None;
        }
        Some(name.to_owned())
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
        let driver = match fields.get("driver") {
            None => Some(DriverKind::Exec),
            Some(entry) => self.driver(&fields.path("driver"), &entry.value),
        };
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
            None => Some((
                Resources::new(DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES),
                None,
            )),
            Some(entry) => self.resources(&fields.path("resources"), &entry.value),
        };
        let kill_timeout = match fields.get("kill_timeout") {
            None => Some(DEFAULT_KILL_TIMEOUT),
            Some(entry) => self.kill_timeout(&fields.path("kill_timeout"), &entry.value),
        };
        let ports = match fields.get("ports") {
            None => Some(Vec::new()),
            Some(entry) => self.ports(&fields.path("ports"), &entry.value),
        };
        let image = self.image(&fields, driver);
        let capabilities = match fields.get("capabilities") {
            None => Some(Vec::new()),
            Some(entry) => {
                let path = fields.path("capabilities");
                if driver == Some(DriverKind::Raw) {
                    self.error(
                        &path,
                        entry.value.pos,
                        "the raw driver isolates nothing, so it cannot grant capabilities \
                         (use driver exec or docker)",
                    );
                    None
                } else {
                    self.capabilities(&path, &entry.value)
                }
            }
        };
        let secrets = self.file_mounts(&fields, FileKind::Secret, driver);
        let configs = self.file_mounts(&fields, FileKind::Config, driver);
        let env_secrets = match (fields.get("env_secrets"), &env) {
            (None, _) => Some(BTreeMap::new()),
            (Some(entry), Some(env)) => {
                self.env_secrets(&fields.path("env_secrets"), &entry.value, env)
            }
            // The env was wrong; checking names against it would mislead.
            (Some(_), None) => None,
        };
        let (secrets, configs) = (secrets?, configs?);
        self.unique_targets(&fields, &secrets, &configs)?;
        let (resources, pids) = resources?;
        let pids_limit = match pids {
            Some((pos, _)) if driver == Some(DriverKind::Raw) => {
                self.error(
                    &field_path(&fields.path("resources"), "pids"),
                    pos,
                    "the raw driver isolates nothing, so it cannot limit processes \
                     (use driver exec or docker)",
                );
                return None;
            }
            Some((_, limit)) => limit,
            None => DEFAULT_PIDS_LIMIT,
        };
        Some(TaskSpec {
            driver: driver?,
            command: command?,
            env: env?,
            workdir: workdir?,
            user: user?,
            resources,
            kill_timeout: kill_timeout?,
            ports: ports?,
            image: image?,
            capabilities: capabilities?,
            pids_limit,
            secrets,
            env_secrets: env_secrets?,
            configs,
        })
    }

    /// `secrets` or `configs`: names, or mappings with a target, mode and uid.
    fn file_mounts(
        &mut self,
        fields: &Fields<'_>,
        kind: FileKind,
        driver: Option<DriverKind>,
    ) -> Option<Vec<FileMount>> {
        let key = match kind {
            FileKind::Secret => "secrets",
            FileKind::Config => "configs",
        };
        let Some(entry) = fields.get(key) else {
            return Some(Vec::new());
        };
        let path = fields.path(key);
        let expected = format!(
            "a list of {kind} names, or of mappings like {{name: app, target: {}, mode: 0440}}",
            kind.default_target("app"),
            kind = kind.as_str()
        );
        let items = match &entry.value.value {
            Value::Seq(items) => items,
            Value::Invalid => return None,
            _ => return self.wrong_type(&path, &entry.value, &expected),
        };
        if items.len() > MAX_TASK_FILES {
            self.error(
                &path,
                entry.value.pos,
                format!(
                    "{} {key}, more than the limit of {MAX_TASK_FILES}",
                    items.len()
                ),
            );
            return None;
        }
        let mut out = Some(Vec::with_capacity(items.len()));
        for (idx, item) in items.iter().enumerate() {
            let item_path = index_path(&path, idx);
            let mount = self.file_mount(&item_path, item, kind, driver, &expected);
            if let (Some(mount), Some(earlier)) = (&mount, &out)
                && earlier.iter().any(|m: &FileMount| m.name == mount.name)
            {
                self.error(
                    &item_path,
                    item.pos,
                    format!("{} {} is listed twice", kind.as_str(), quote(&mount.name)),
                );
                out = None;
                continue;
            }
            match (&mut out, mount) {
                (Some(out), Some(mount)) => out.push(mount),
                _ => out = None,
            }
        }
        out
    }

    fn file_mount(
        &mut self,
        path: &str,
        node: &Node,
        kind: FileKind,
        driver: Option<DriverKind>,
        expected: &str,
    ) -> Option<FileMount> {
        let default_target =
            |name: &str| (driver != Some(DriverKind::Raw)).then(|| kind.default_target(name));
        if let Value::Scalar(_) = &node.value {
            let name = self.file_name(path, node, kind)?;
            return Some(FileMount {
                target: default_target(&name),
                name,
                mode: kind.default_mode(),
                uid: None,
            });
        }
        let fields = self.fields(path, node, FILE_FIELDS, expected)?;
        let name = self
            .required(&fields, "name", &format!("a {} name", kind.as_str()))
            .and_then(|node| self.file_name(&fields.path("name"), node, kind));
        let target = match fields.get("target") {
            None => Some(None),
            Some(entry) => self
                .file_target(&fields.path("target"), &entry.value, kind, driver)
                .map(Some),
        };
        let mode = match fields.get("mode") {
            None => Some(kind.default_mode()),
            Some(entry) => self.file_mode(&fields.path("mode"), &entry.value),
        };
        let uid = self.optional(&fields, "uid", |v, path, node| {
            v.uint(path, node, 0, u32::MAX)
        });
        let name = name?;
        Some(FileMount {
            target: target?.or_else(|| default_target(&name)),
            name,
            mode: mode?,
            uid: uid?,
        })
    }

    fn file_name(&mut self, path: &str, node: &Node, kind: FileKind) -> Option<String> {
        let name = self.scalar_text(path, node, &format!("a {} name", kind.as_str()))?;
        if let Some(problem) = crate::file_name_problem(name) {
            self.error(path, node.pos, format!("{} {problem}", quote(name)));
            return None;
        }
        Some(name.to_owned())
    }

    /// Where the file goes: anywhere absolute for docker (the engine makes
    /// the mount point in the container's own layer); under `/run`, the
    /// task's private tmpfs, for exec (its root is the host's, read-only);
    /// nowhere for raw, whose tasks are told a directory instead.
    fn file_target(
        &mut self,
        path: &str,
        node: &Node,
        kind: FileKind,
        driver: Option<DriverKind>,
    ) -> Option<String> {
        let target = self.string(path, node, "an absolute path")?;
        let problem = if driver == Some(DriverKind::Raw) {
            Some(format!(
                "cannot be chosen for a raw task, which finds its {kind}s as ${env}/NAME \
                 (use driver exec or docker to mount at a path)",
                kind = kind.as_str(),
                env = kind.dir_env()
            ))
        } else if !target.starts_with('/') || target.ends_with('/') || target.contains('\0') {
            Some(
                "is not an absolute path to a file (expected a path like /run/secrets/db)"
                    .to_owned(),
            )
        } else if let Some(problem) = crate::path_problem(target, "a task's file") {
            Some(problem)
        } else if driver == Some(DriverKind::Exec) && !target.starts_with("/run/") {
            Some(
                "is outside /run: an exec task's files are mounted in its private /run \
                 (its other directories are the host's, read-only)"
                    .to_owned(),
            )
        } else {
            None
        };
        match problem {
            Some(problem) => {
                self.error(path, node.pos, format!("{} {problem}", quote(target)));
                None
            }
            None => Some(target.to_owned()),
        }
    }

    /// Permission bits, written in octal: `0400`, `0o440` or `440`.
    fn file_mode(&mut self, path: &str, node: &Node) -> Option<u32> {
        let text = self.scalar_text(path, node, "a file mode like 0400")?;
        let digits = text.strip_prefix("0o").unwrap_or(text);
        let mode = (!digits.is_empty() && digits.len() <= 4)
            .then(|| u32::from_str_radix(digits, 8).ok())
            .flatten()
            .filter(|mode| *mode <= 0o777);
        if mode.is_none() {
            self.error(
                path,
                node.pos,
                format!(
                    "{} is not a file mode (expected octal permission bits from 0 to 0777, like 0400)",
                    quote(text)
                ),
            );
        }
        mode
    }

    /// `env_secrets`: variable -> secret name.
    fn env_secrets(
        &mut self,
        path: &str,
        node: &Node,
        env: &BTreeMap<String, String>,
    ) -> Option<BTreeMap<String, String>> {
        let entries = self.mapping(path, node, "a mapping of variable names to secret names")?;
        if entries.len() > MAX_TASK_FILES {
            self.error(
                path,
                node.pos,
                format!(
                    "{} variables, more than the limit of {MAX_TASK_FILES}",
                    entries.len()
                ),
            );
            return None;
        }
        let mut out = Some(BTreeMap::new());
        for entry in entries {
            let var_path = field_path(path, &entry.key);
            let problem = if !is_env_name(&entry.key) {
                Some(
                    "invalid environment variable name (expected letters, digits and _, not starting with a digit)",
                )
            } else if entry.key.starts_with("BATON_") {
                Some("BATON_ variables are set by Baton")
            } else if env.contains_key(&entry.key) {
                Some("is also set in env (a variable comes from one place)")
            } else {
                None
            };
            if let Some(problem) = problem {
                self.error(&var_path, entry.key_pos, problem);
            }
            let name = self.file_name(&var_path, &entry.value, FileKind::Secret);
            match (&mut out, name) {
                (Some(out), Some(name)) if problem.is_none() => {
                    out.insert(entry.key.clone(), name);
                }
                _ => out = None,
            }
        }
        out
    }

    /// No two files of a task at the same target.
    fn unique_targets(
        &mut self,
        fields: &Fields<'_>,
        secrets: &[FileMount],
        configs: &[FileMount],
    ) -> Option<()> {
        let mut seen: BTreeMap<&str, String> = BTreeMap::new();
        let mut ok = true;
        let all = secrets
            .iter()
            .enumerate()
            .map(|(idx, m)| (index_path(&fields.path("secrets"), idx), m))
            .chain(
                configs
                    .iter()
                    .enumerate()
                    .map(|(idx, m)| (index_path(&fields.path("configs"), idx), m)),
            );
        for (path, mount) in all {
            let Some(target) = mount.target.as_deref() else {
                continue;
            };
            if let Some(first) = seen.get(target) {
                ok = false;
                self.error(
                    &path,
                    fields.pos,
                    format!("target {} is already used by {first}", quote(target)),
                );
            } else {
                seen.insert(target, path);
            }
        }
        ok.then_some(())
    }

    fn driver(&mut self, path: &str, node: &Node) -> Option<DriverKind> {
        let name = self.string(path, node, "a driver")?;
        match DriverKind::ALL.into_iter().find(|d| d.as_str() == name) {
            Some(driver) => Some(driver),
            None => {
                self.error(
                    path,
                    node.pos,
                    format!(
                        "unknown driver {} (expected exec, docker or raw)",
                        quote(name)
                    ),
                );
                None
            }
        }
    }

    /// `image`: required by the docker driver, meaningless to the others.
    /// `Some(None)` when absent and not needed; `None` after an error.
    fn image(&mut self, fields: &Fields<'_>, driver: Option<DriverKind>) -> Option<Option<String>> {
        let expected = "an image like busybox:1.36";
        let path = fields.path("image");
        match driver {
            Some(DriverKind::Docker) => {
                let node = self.required(fields, "image", expected)?;
                let image = self.string(&path, node, expected)?;
                if let Some(problem) = image_problem(image) {
                    self.error(&path, node.pos, format!("{} {problem}", quote(image)));
                    return None;
                }
                Some(Some(image.to_owned()))
            }
            Some(other) => match fields.get("image") {
                None => Some(None),
                Some(entry) => {
                    self.error(
                        &path,
                        entry.value.pos,
                        format!(
                            "is only for the docker driver (this task uses {})",
                            other.as_str()
                        ),
                    );
                    None
                }
            },
            // The driver itself was wrong; that error is enough.
            None => None,
        }
    }

    fn capabilities(&mut self, path: &str, node: &Node) -> Option<Vec<String>> {
        let items = match &node.value {
            Value::Seq(items) => items,
            Value::Invalid => return None,
            _ => {
                return self.wrong_type(
                    path,
                    node,
                    "a list of capabilities like [NET_BIND_SERVICE]",
                );
            }
        };
        let mut caps = Some(Vec::with_capacity(items.len()));
        for (idx, item) in items.iter().enumerate() {
            let item_path = index_path(path, idx);
            let Some(text) = self.string(&item_path, item, "a capability like NET_BIND_SERVICE")
            else {
                caps = None;
                continue;
            };
            let name = text.to_ascii_uppercase();
            let name = name.strip_prefix("CAP_").unwrap_or(&name);
            if !ALLOWED_CAPABILITIES.contains(&name) {
                self.error(
                    &item_path,
                    item.pos,
                    format!(
                        "{} is not a capability a task may add (expected one of {})",
                        quote(text),
                        ALLOWED_CAPABILITIES.join(", ")
                    ),
                );
                caps = None;
                continue;
            }
            if let Some(caps) = &mut caps
                && !caps.iter().any(|c| c == name)
            {
                caps.push(name.to_owned());
            }
        }
        caps.map(|mut caps| {
            caps.sort();
            caps
        })
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
        if let Some(problem) = crate::workdir_problem(dir) {
            self.error(path, node.pos, format!("{} {problem}", quote(dir)));
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

    /// `resources`: what the task reserves, and its pids limit if given (with
    /// where it was written).
    fn resources(&mut self, path: &str, node: &Node) -> Option<(Resources, Option<(Pos, u32)>)> {
        let fields = self.fields(
            path,
            node,
            RESOURCES_FIELDS,
            "a mapping of cpu, memory, disk and pids",
        )?;
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
        let disk_bytes = match fields.get("disk") {
            None => Some(0),
            Some(entry) => self
                .quantity(
                    &fields.path("disk"),
                    &entry.value,
                    "a size like 1Gi",
                    parse_memory,
                )
                .map(|(_, bytes)| bytes),
        };
        let pids = match fields.get("pids") {
            None => Some(None),
            Some(entry) => self
                .uint(
                    &fields.path("pids"),
                    &entry.value,
                    *PIDS_LIMIT_RANGE.start(),
                    *PIDS_LIMIT_RANGE.end(),
                )
                .map(|limit| Some((entry.value.pos, limit))),
        };
        Some((
            Resources {
                cpu_millis: cpu_millis?,
                memory_bytes: memory_bytes?,
                disk_bytes: disk_bytes?,
            },
            pids?,
        ))
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

    /// `true` or `false`.
    fn boolean(&mut self, path: &str, node: &Node) -> Option<bool> {
        match &node.value {
            Value::Scalar(Scalar {
                kind: ScalarKind::Bool,
                text,
            }) => Some(text.eq_ignore_ascii_case("true")),
            Value::Invalid => None,
            _ => self.wrong_type(path, node, "true or false"),
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

/// What is wrong with an image reference, if anything. A light check (the
/// engine parses it fully): the characters of `[registry[:port]/]name[:tag]
/// [@digest]` only, so nothing reaches the engine's API that is not one.
fn image_problem(image: &str) -> Option<&'static str> {
    if image.len() > MAX_IMAGE_LEN {
        return Some("is too long (expected at most 512 characters)");
    }
    let Some(first) = image.as_bytes().first() else {
        return Some("must not be empty");
    };
    if !first.is_ascii_alphanumeric() {
        return Some("must start with a letter or digit");
    }
    if !image
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
    {
        return Some("is not an image reference (expected letters, digits and . _ - / : @)");
    }
    None
}

/// `[A-Za-z_][A-Za-z0-9_]*`
fn is_env_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
