//! Placement constraints and affinities: one-line expressions over a node's
//! attributes (`node.labels.zone in (a, b)`), parsed once into a [`Constraint`]
//! and then evaluated against any [`NodeAttributes`].
//!
//! Grammar (whitespace between tokens is free):
//!
//! ```text
//! constraint := attribute operator
//! attribute  := node.labels.<key> | node.hostname | node.role | node.id | node.drivers
//! operator   := ("==" | "!=" | "=~" | "!~" | "contains" | "not contains") value
//!             | ("in" | "not in") "(" value ("," value)* ")"
//!             | "semver" requirement            (the rest of the text, or quoted)
//!             | "exists" | "not exists"
//! value      := bare word (no spaces; in lists also no `,` `(` `)`)
//!             | "double-quoted, with \" and \\ as the only escapes"
//! ```
//!
//! A missing label fails every positive test (`==`, `in`, `=~`, `semver`,
//! `exists`) and passes every negative one (`!=`, `not in`, `!~`,
//! `not exists`), as in Swarm and Nomad.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use regex::{Regex, RegexBuilder};
use semver::{Version, VersionReq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest constraint accepted, in chars: enough for any real rule, and it
/// bounds the work (and the error messages) of one parse.
const MAX_TEXT_CHARS: usize = 512;
/// Longest regex accepted, in chars.
const MAX_REGEX_CHARS: usize = 256;
/// Bound on a compiled regex and on its lazy DFA, in bytes, so a rule cannot
/// make every placement slow or big.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest label key, in chars.
const MAX_LABEL_KEY_CHARS: usize = 63;
/// Longest piece of input quoted back in an error message, in chars.
const MAX_QUOTED_CHARS: usize = 32;

const LABELS_PREFIX: &str = "node.labels.";
const OPERATORS: &str =
    "==, !=, in, not in, =~, !~, semver, contains, not contains, exists, not exists";
const ATTRIBUTES: &str = "node.labels.<key>, node.hostname, node.role, node.id or node.drivers";
const ROLES: [&str; 2] = ["manager", "worker"];

/// A node as constraints see it.
pub trait NodeAttributes {
    /// The value of label `key`, if the node has it.
    fn label(&self, key: &str) -> Option<&str>;
    /// The node's hostname.
    fn hostname(&self) -> &str;
    /// The node's role: `"manager"` or `"worker"`.
    fn role(&self) -> &str;
    /// The node's id.
    fn id(&self) -> &str;
    /// Whether the node can run tasks with `driver` (e.g. `"raw"`).
    fn has_driver(&self, driver: &str) -> bool;
}

/// A node attribute a constraint or a spread is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attribute {
    /// `node.labels.<key>`: the label's value, absent when the node lacks it.
    Label(String),
    /// `node.hostname`.
    Hostname,
    /// `node.role`: `manager` or `worker`.
    Role,
    /// `node.id`.
    Id,
    /// `node.drivers`: a set, tested with `contains` / `not contains`.
    Drivers,
}

impl Attribute {
    /// Parses an attribute as users write it (`node.labels.zone`,
    /// `node.hostname`, ...). `node.drivers` is accepted: callers that need a
    /// single value (spreads) refuse it themselves.
    pub fn parse(text: &str) -> Result<Attribute, String> {
        parse_attribute(text).map_err(|(_, message)| message)
    }

    /// The label key, for [`Attribute::Label`].
    pub fn label_key(&self) -> Option<&str> {
        match self {
            Attribute::Label(key) => Some(key),
            _ => None,
        }
    }

    /// The attribute's value on `node`: `None` for a missing label and for
    /// `node.drivers`, which is a set rather than one value.
    pub fn value<'a>(&self, node: &'a impl NodeAttributes) -> Option<&'a str> {
        match self {
            Attribute::Label(key) => node.label(key),
            Attribute::Hostname => Some(node.hostname()),
            Attribute::Role => Some(node.role()),
            Attribute::Id => Some(node.id()),
            Attribute::Drivers => None,
        }
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::Label(key) => write!(f, "{LABELS_PREFIX}{key}"),
            Attribute::Hostname => f.write_str("node.hostname"),
            Attribute::Role => f.write_str("node.role"),
            Attribute::Id => f.write_str("node.id"),
            Attribute::Drivers => f.write_str("node.drivers"),
        }
    }
}

/// Serialised as the text users write (`node.labels.zone`).
impl Serialize for Attribute {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Parsed from the text users write, with [`Attribute::parse`].
impl<'de> Deserialize<'de> for Attribute {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Attribute, D::Error> {
        let text = String::deserialize(deserializer)?;
        Attribute::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The operator and its operand(s), compiled.
#[derive(Clone, Debug)]
pub enum Op {
    /// `== value`: the attribute equals the value.
    Eq(String),
    /// `!= value`: the attribute is missing or differs.
    Ne(String),
    /// `in (a, b)`: the attribute equals one of the values.
    In(Vec<String>),
    /// `not in (a, b)`: the attribute is missing or equals none of the values.
    NotIn(Vec<String>),
    /// `=~ regex`: the regex matches somewhere in the attribute (unanchored).
    Matches(Regex),
    /// `!~ regex`: the attribute is missing or the regex matches nowhere in it.
    NotMatches(Regex),
    /// `semver requirement`: the attribute is a version meeting the requirement.
    Semver(VersionReq),
    /// `contains driver`: `node.drivers` holds the driver.
    Contains(String),
    /// `not contains driver`: `node.drivers` lacks the driver.
    NotContains(String),
    /// `exists`: the label is set.
    Exists,
    /// `not exists`: the label is not set.
    NotExists,
}

/// One parsed constraint. Compares, hashes, orders, serialises and displays
/// as its source text (trimmed), which is what users wrote and read back.
#[derive(Clone, Debug)]
pub struct Constraint {
    attribute: Attribute,
    op: Op,
    text: String,
}

impl Constraint {
    /// Parses one constraint, e.g. `node.labels.zone in (a, b)`. Never panics;
    /// an error gives the char column where the problem starts.
    pub fn parse(text: &str) -> Result<Constraint, ConstraintError> {
        let chars = text.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(ConstraintError {
                column: column_of(MAX_TEXT_CHARS + 1),
                message: format!(
                    "constraint is {chars} characters long, more than the limit of \
                     {MAX_TEXT_CHARS}"
                ),
            });
        }
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ConstraintError {
                column: 1,
                message: "empty constraint (expected an attribute, an operator and a value, \
                          e.g. node.labels.zone == a)"
                    .to_owned(),
            });
        }
        let mut parser = Parser { text, pos: 0 };
        let attribute = parser.attribute()?;
        let op = parser.operation(&attribute)?;
        Ok(Constraint {
            attribute,
            op,
            text: trimmed.to_owned(),
        })
    }

    /// The attribute it tests.
    pub fn attribute(&self) -> &Attribute {
        &self.attribute
    }

    /// The compiled operator and operand(s).
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// The source text, trimmed.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `node` satisfies the constraint.
    pub fn matches(&self, node: &impl NodeAttributes) -> bool {
        let value = self.attribute.value(node);
        match &self.op {
            Op::Eq(expected) => value == Some(expected.as_str()),
            Op::Ne(expected) => value != Some(expected.as_str()),
            Op::In(values) => value.is_some_and(|v| values.iter().any(|x| x == v)),
            Op::NotIn(values) => !value.is_some_and(|v| values.iter().any(|x| x == v)),
            Op::Matches(regex) => value.is_some_and(|v| regex.is_match(v)),
            Op::NotMatches(regex) => !value.is_some_and(|v| regex.is_match(v)),
            Op::Semver(req) => value
                .and_then(parse_version)
                .is_some_and(|version| req.matches(&version)),
            Op::Contains(driver) => node.has_driver(driver),
            Op::NotContains(driver) => !node.has_driver(driver),
            Op::Exists => value.is_some(),
            Op::NotExists => value.is_none(),
        }
    }
}

impl PartialEq for Constraint {
    fn eq(&self, other: &Constraint) -> bool {
        self.text == other.text
    }
}

impl Eq for Constraint {}

impl Hash for Constraint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialOrd for Constraint {
    fn partial_cmp(&self, other: &Constraint) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Constraint {
    fn cmp(&self, other: &Constraint) -> Ordering {
        self.text.cmp(&other.text)
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Serialised as its source text.
impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

/// Parsed from its source text, with [`Constraint::parse`].
impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Constraint, D::Error> {
        let text = String::deserialize(deserializer)?;
        Constraint::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a constraint text is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConstraintError {
    /// 1-based char column within the text where the problem starts.
    pub column: u32,
    /// What was wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConstraintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ConstraintError {}

/// The operators, before their operands are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Eq,
    Ne,
    In,
    NotIn,
    Matches,
    NotMatches,
    Semver,
    Contains,
    NotContains,
    Exists,
    NotExists,
}

impl OpKind {
    /// The operator as users write it, for messages.
    fn as_str(self) -> &'static str {
        match self {
            OpKind::Eq => "==",
            OpKind::Ne => "!=",
            OpKind::In => "in",
            OpKind::NotIn => "not in",
            OpKind::Matches => "=~",
            OpKind::NotMatches => "!~",
            OpKind::Semver => "semver",
            OpKind::Contains => "contains",
            OpKind::NotContains => "not contains",
            OpKind::Exists => "exists",
            OpKind::NotExists => "not exists",
        }
    }
}

/// A value read from the text, with the byte offset where it starts.
struct Spanned {
    start: usize,
    value: String,
}

/// A hand-written tokenizer over one constraint text. `pos` is a byte offset
/// that only ever moves by whole chars.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        self.text.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    /// Consumes the longest run of chars satisfying `accept`.
    fn take_while(&mut self, accept: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&accept) {
            self.bump();
        }
        self.text.get(start..self.pos).unwrap_or("")
    }

    /// The next whitespace-separated token, shortened, for messages.
    fn next_token(&self) -> String {
        let token = self
            .rest()
            .split(char::is_whitespace)
            .next()
            .unwrap_or_default();
        shorten(token)
    }

    /// The 1-based char column of byte offset `at`.
    fn column(&self, at: usize) -> u32 {
        let chars = self.text.get(..at).map_or(0, |s| s.chars().count());
        column_of(chars + 1)
    }

    fn error(&self, at: usize, message: impl Into<String>) -> ConstraintError {
        ConstraintError {
            column: self.column(at),
            message: message.into(),
        }
    }

    /// `node.labels.<key>`, `node.hostname`, ...: everything up to whitespace
    /// or the first char of an operator, so `node.role==worker` also reads.
    fn attribute(&mut self) -> Result<Attribute, ConstraintError> {
        self.skip_whitespace();
        let start = self.pos;
        let token = self.take_while(|c| !c.is_whitespace() && !"=!~<>(\"".contains(c));
        if token.is_empty() {
            return Err(self.error(
                start,
                format!(
                    "missing attribute before {:?} (expected {ATTRIBUTES})",
                    self.next_token()
                ),
            ));
        }
        parse_attribute(token).map_err(|(offset, message)| ConstraintError {
            column: self.column(start).saturating_add(column_of(offset)),
            message,
        })
    }

    /// The operator, its operand(s) and the end of the text.
    fn operation(&mut self, attribute: &Attribute) -> Result<Op, ConstraintError> {
        self.skip_whitespace();
        let start = self.pos;
        let kind = self.operator(attribute)?;
        check_applies(attribute, kind).map_err(|message| self.error(start, message))?;
        let op = match kind {
            OpKind::Eq | OpKind::Ne | OpKind::Contains | OpKind::NotContains => {
                let value = self.value(kind)?;
                self.end_of_value()?;
                check_role(attribute, std::slice::from_ref(&value))
                    .map_err(|(at, message)| self.error(at, message))?;
                match kind {
                    OpKind::Eq => Op::Eq(value.value),
                    OpKind::Ne => Op::Ne(value.value),
                    OpKind::Contains => Op::Contains(value.value),
                    _ => Op::NotContains(value.value),
                }
            }
            OpKind::In | OpKind::NotIn => {
                let values = self.list(kind)?;
                check_role(attribute, &values).map_err(|(at, message)| self.error(at, message))?;
                let values = values.into_iter().map(|v| v.value).collect();
                if kind == OpKind::In {
                    Op::In(values)
                } else {
                    Op::NotIn(values)
                }
            }
            OpKind::Matches | OpKind::NotMatches => {
                let value = self.value(kind)?;
                self.end_of_value()?;
                let regex = compile_regex(&value.value)
                    .map_err(|message| self.error(value.start, message))?;
                if kind == OpKind::Matches {
                    Op::Matches(regex)
                } else {
                    Op::NotMatches(regex)
                }
            }
            OpKind::Semver => Op::Semver(self.requirement()?),
            OpKind::Exists | OpKind::NotExists => {
                self.skip_whitespace();
                if !self.rest().is_empty() {
                    return Err(self.error(
                        self.pos,
                        format!(
                            "{} takes no value, found {:?} (expected the end of the constraint)",
                            kind.as_str(),
                            self.next_token()
                        ),
                    ));
                }
                if kind == OpKind::Exists {
                    Op::Exists
                } else {
                    Op::NotExists
                }
            }
        };
        Ok(op)
    }

    /// Reads the operator: a run of `=!~<>` (`==`), a word (`in`), or
    /// `not` and a second word.
    fn operator(&mut self, attribute: &Attribute) -> Result<OpKind, ConstraintError> {
        let start = self.pos;
        let Some(first) = self.peek() else {
            return Err(self.error(
                start,
                format!("missing operator after {attribute} (expected {OPERATORS})"),
            ));
        };
        let token = if is_symbol(first) {
            self.take_while(is_symbol)
        } else if is_word(first) {
            self.take_while(is_word)
        } else {
            self.take_while(|c| !c.is_whitespace())
        };
        let kind = match token {
            "==" => OpKind::Eq,
            "!=" => OpKind::Ne,
            "=~" => OpKind::Matches,
            "!~" => OpKind::NotMatches,
            "in" => OpKind::In,
            "semver" => OpKind::Semver,
            "contains" => OpKind::Contains,
            "exists" => OpKind::Exists,
            "not" => {
                self.skip_whitespace();
                let second_start = self.pos;
                match self.take_while(is_word) {
                    "in" => OpKind::NotIn,
                    "contains" => OpKind::NotContains,
                    "exists" => OpKind::NotExists,
                    second => {
                        let found = if second.is_empty() {
                            self.next_token()
                        } else {
                            shorten(second)
                        };
                        let message = if found.is_empty() {
                            "missing in, contains or exists after \"not\"".to_owned()
                        } else {
                            format!(
                                "unknown operator \"not {found}\" (expected not in, \
                                 not contains or not exists)"
                            )
                        };
                        return Err(self.error(second_start, message));
                    }
                }
            }
            other => {
                return Err(self.error(
                    start,
                    format!(
                        "unknown operator {:?} (expected {OPERATORS})",
                        shorten(other)
                    ),
                ));
            }
        };
        Ok(kind)
    }

    /// One value: a quoted string or a bare word (up to whitespace).
    fn value(&mut self, kind: OpKind) -> Result<Spanned, ConstraintError> {
        self.skip_whitespace();
        let start = self.pos;
        match self.peek() {
            None => Err(self.error(start, format!("missing value after {}", kind.as_str()))),
            Some('"') => self.quoted(),
            Some(_) => Ok(Spanned {
                start,
                value: self.take_while(|c| !c.is_whitespace()).to_owned(),
            }),
        }
    }

    /// Refuses anything but whitespace after a single value.
    fn end_of_value(&mut self) -> Result<(), ConstraintError> {
        self.skip_whitespace();
        if self.rest().is_empty() {
            return Ok(());
        }
        Err(self.error(
            self.pos,
            format!(
                "unexpected {:?} after the value (expected the end of the constraint; \
                 quote a value that contains spaces)",
                self.next_token()
            ),
        ))
    }

    /// A double-quoted string at `pos`, with `\"` and `\\` escapes.
    fn quoted(&mut self) -> Result<Spanned, ConstraintError> {
        let start = self.pos;
        self.bump();
        let mut value = String::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None => {
                    return Err(self.error(start, "unterminated quote (expected a closing \")"));
                }
                Some('"') => return Ok(Spanned { start, value }),
                Some('\\') => match self.bump() {
                    Some(c @ ('"' | '\\')) => value.push(c),
                    None => {
                        return Err(self.error(start, "unterminated quote (expected a closing \")"));
                    }
                    Some(c) => {
                        return Err(self.error(
                            at,
                            format!(
                                "unknown escape \"\\{c}\" in a quoted value (expected \\\" or \
                                 \\\\; write \\\\{c} for a backslash followed by {c:?})"
                            ),
                        ));
                    }
                },
                Some(c) => value.push(c),
            }
        }
    }

    /// `(a, "b c", d)`: at least one value, then the end of the text.
    fn list(&mut self, kind: OpKind) -> Result<Vec<Spanned>, ConstraintError> {
        self.skip_whitespace();
        let open = self.pos;
        match self.peek() {
            Some('(') => {}
            None => {
                return Err(self.error(
                    open,
                    format!(
                        "missing list after {} (expected values in parentheses, like (a, b))",
                        kind.as_str()
                    ),
                ));
            }
            Some(_) => {
                return Err(self.error(
                    open,
                    format!(
                        "{} needs a list in parentheses, like (a, b), found {:?}",
                        kind.as_str(),
                        self.next_token()
                    ),
                ));
            }
        }
        self.bump();
        let unterminated = |p: &Parser<'_>| {
            p.error(
                open,
                "unterminated list (expected values separated by ',' and a closing ')')",
            )
        };
        let mut values = Vec::new();
        loop {
            self.skip_whitespace();
            let start = self.pos;
            let value = match self.peek() {
                None => return Err(unterminated(self)),
                Some(')') if values.is_empty() => {
                    return Err(self.error(open, "empty list (expected at least one value)"));
                }
                Some(c @ (')' | ',')) => {
                    return Err(self.error(
                        start,
                        format!("missing value before {c:?} in the list (expected a value)"),
                    ));
                }
                Some('(') => {
                    return Err(self.error(
                        start,
                        "unexpected '(' in the list (quote a value that contains parentheses)",
                    ));
                }
                Some('"') => self.quoted()?,
                Some(_) => Spanned {
                    start,
                    value: self
                        .take_while(|c| !c.is_whitespace() && !matches!(c, ',' | '(' | ')'))
                        .to_owned(),
                },
            };
            values.push(value);
            self.skip_whitespace();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(')') => {
                    self.bump();
                    break;
                }
                None => return Err(unterminated(self)),
                Some(_) => {
                    return Err(self.error(
                        self.pos,
                        format!(
                            "unexpected {:?} in the list (expected ',' or ')'; quote a value \
                             that contains spaces, commas or parentheses)",
                            self.next_token()
                        ),
                    ));
                }
            }
        }
        self.skip_whitespace();
        if !self.rest().is_empty() {
            return Err(self.error(
                self.pos,
                format!(
                    "unexpected {:?} after the list (expected the end of the constraint)",
                    self.next_token()
                ),
            ));
        }
        Ok(values)
    }

    /// The requirement after `semver`: the rest of the text (`>=5.4, <7`), or
    /// one quoted string.
    fn requirement(&mut self) -> Result<VersionReq, ConstraintError> {
        self.skip_whitespace();
        let start = self.pos;
        let text = match self.peek() {
            None => {
                return Err(self.error(
                    start,
                    "missing version requirement after semver (expected e.g. >=5.4, <7)",
                ));
            }
            Some('"') => {
                let quoted = self.quoted()?;
                self.end_of_value()?;
                quoted.value
            }
            Some(_) => {
                let rest = self.rest().trim_end().to_owned();
                self.pos = self.text.len();
                rest
            }
        };
        VersionReq::parse(&text).map_err(|err| {
            self.error(
                start,
                format!(
                    "bad semver requirement {:?}: {err} (expected e.g. >=5.4, <7)",
                    shorten(&text)
                ),
            )
        })
    }
}

/// Chars that make up the symbolic operators, read as one run so `=` or
/// `===` is reported whole.
fn is_symbol(c: char) -> bool {
    matches!(c, '=' | '!' | '~' | '<' | '>')
}

/// Chars of the word operators (`in`, `semver`, `not`).
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Converts a 1-based char count to a column, saturating (texts are at most
/// [`MAX_TEXT_CHARS`] long, so it never does).
fn column_of(chars: usize) -> u32 {
    u32::try_from(chars).unwrap_or(u32::MAX)
}

/// At most [`MAX_QUOTED_CHARS`] chars of `s`, with `...` when cut.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}...", s.get(..cut).unwrap_or(s)),
        None => s.to_owned(),
    }
}

/// Parses an attribute; on error also gives the char offset within `text`
/// where the problem starts.
fn parse_attribute(text: &str) -> Result<Attribute, (usize, String)> {
    match text {
        "node.hostname" => return Ok(Attribute::Hostname),
        "node.role" => return Ok(Attribute::Role),
        "node.id" => return Ok(Attribute::Id),
        "node.drivers" => return Ok(Attribute::Drivers),
        "node.labels" => {
            return Err((
                0,
                "missing label key in \"node.labels\" (expected node.labels.<key>)".to_owned(),
            ));
        }
        _ => {}
    }
    if let Some(key) = text.strip_prefix(LABELS_PREFIX) {
        return match check_label_key(key) {
            Ok(()) => Ok(Attribute::Label(key.to_owned())),
            Err((offset, message)) => Err((offset + LABELS_PREFIX.len(), message)),
        };
    }
    let message = if text.is_empty() {
        format!("missing attribute (expected {ATTRIBUTES})")
    } else {
        format!(
            "unknown attribute {:?} (expected {ATTRIBUTES})",
            shorten(text)
        )
    };
    Err((0, message))
}

/// A label key: 1 to 63 chars of `[A-Za-z0-9._/-]`, starting alphanumeric.
/// On error, gives the char offset within `key` of the problem.
pub(crate) fn check_label_key(key: &str) -> Result<(), (usize, String)> {
    const EXPECTED: &str = "1 to 63 of A-Z a-z 0-9 . _ / -, starting with a letter or digit";
    let mut count = 0;
    for (offset, c) in key.chars().enumerate() {
        count += 1;
        if offset == 0 && !c.is_ascii_alphanumeric() {
            return Err((
                0,
                format!(
                    "label key must start with a letter or digit, found {c:?} (expected {EXPECTED})"
                ),
            ));
        }
        if !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')) {
            return Err((
                offset,
                format!(
                    "label key {:?} contains {c:?} (expected {EXPECTED})",
                    shorten(key)
                ),
            ));
        }
    }
    if count == 0 {
        return Err((
            0,
            format!("missing label key after node.labels. (expected {EXPECTED})"),
        ));
    }
    if count > MAX_LABEL_KEY_CHARS {
        return Err((
            0,
            format!(
                "label key is {count} characters long, more than the limit of \
                 {MAX_LABEL_KEY_CHARS}"
            ),
        ));
    }
    Ok(())
}

/// Refuses operators that make no sense for the attribute.
fn check_applies(attribute: &Attribute, kind: OpKind) -> Result<(), String> {
    let is_set_op = matches!(kind, OpKind::Contains | OpKind::NotContains);
    let is_exists_op = matches!(kind, OpKind::Exists | OpKind::NotExists);
    match attribute {
        Attribute::Drivers if is_exists_op => Err(format!(
            "{} is only for node.labels.<key> (expected contains or not contains for \
             node.drivers)",
            kind.as_str()
        )),
        Attribute::Drivers if !is_set_op => Err(format!(
            "node.drivers is a set of driver names, so {} does not apply: use contains or \
             not contains (e.g. node.drivers contains raw)",
            kind.as_str()
        )),
        Attribute::Drivers => Ok(()),
        _ if is_set_op => Err(format!(
            "{} is only for node.drivers (expected ==, !=, in, not in, =~, !~ or semver for \
             {attribute})",
            kind.as_str()
        )),
        Attribute::Label(_) => Ok(()),
        _ if is_exists_op => Err(format!(
            "{} is only for node.labels.<key>: {attribute} is always set",
            kind.as_str()
        )),
        _ => Ok(()),
    }
}

/// Refuses compared values of `node.role` that are not a role, which could
/// never match (or always would).
fn check_role(attribute: &Attribute, values: &[Spanned]) -> Result<(), (usize, String)> {
    if *attribute != Attribute::Role {
        return Ok(());
    }
    match values.iter().find(|v| !ROLES.contains(&v.value.as_str())) {
        Some(bad) => Err((
            bad.start,
            format!(
                "{:?} is not a node role (expected manager or worker)",
                shorten(&bad.value)
            ),
        )),
        None => Ok(()),
    }
}

/// Compiles a `=~` / `!~` operand with bounded size; the error is one line.
fn compile_regex(pattern: &str) -> Result<Regex, String> {
    let chars = pattern.chars().count();
    if chars > MAX_REGEX_CHARS {
        return Err(format!(
            "regex is {chars} characters long, more than the limit of {MAX_REGEX_CHARS}"
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|err| format!("bad regex: {}", regex_message(&err)))
}

/// The one-line reason of a regex error (its `error: ...` line for syntax
/// errors, which otherwise span several lines with a caret diagram).
fn regex_message(err: &regex::Error) -> String {
    if let regex::Error::CompiledTooBig(limit) = err {
        return format!("it compiles to more than the limit of {limit} bytes");
    }
    let full = err.to_string();
    let line = full
        .lines()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .or_else(|| full.lines().map(str::trim).find(|line| !line.is_empty()))
        .unwrap_or("invalid");
    line.to_owned()
}

/// A node's version value: semver, also with a leading `v` and with the minor
/// or patch left out (`5.4` is 5.4.0, `v6` is 6.0.0). `None` if unparsable.
fn parse_version(value: &str) -> Option<Version> {
    let value = value.strip_prefix('v').unwrap_or(value);
    if let Ok(version) = Version::parse(value) {
        return Some(version);
    }
    let (core, suffix) = value.split_at(value.find(['-', '+']).unwrap_or(value.len()));
    let padded = match core.split('.').count() {
        1 => format!("{core}.0.0{suffix}"),
        2 => format!("{core}.0{suffix}"),
        _ => return None,
    };
    Version::parse(&padded).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// A node for tests.
    struct TestNode {
        labels: BTreeMap<String, String>,
        hostname: String,
        role: String,
        id: String,
        drivers: Vec<String>,
    }

    impl NodeAttributes for TestNode {
        fn label(&self, key: &str) -> Option<&str> {
            self.labels.get(key).map(String::as_str)
        }
        fn hostname(&self) -> &str {
            &self.hostname
        }
        fn role(&self) -> &str {
            &self.role
        }
        fn id(&self) -> &str {
            &self.id
        }
        fn has_driver(&self, driver: &str) -> bool {
            self.drivers.iter().any(|d| d == driver)
        }
    }

    fn node(labels: &[(&str, &str)]) -> TestNode {
        TestNode {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            hostname: "web-12".to_owned(),
            role: "worker".to_owned(),
            id: "n1abc".to_owned(),
            drivers: vec!["raw".to_owned()],
        }
    }

    /// The usual test node: zone a, kernel 5.15.0, a label with spaces.
    fn worker() -> TestNode {
        node(&[
            ("zone", "a"),
            ("kernel", "5.15.0"),
            ("desc", "big, fast box"),
            ("empty", ""),
        ])
    }

    fn parse(text: &str) -> Constraint {
        match Constraint::parse(text) {
            Ok(c) => c,
            Err(err) => panic!("{text:?} should parse: {err}"),
        }
    }

    fn check(text: &str, node: &TestNode) -> bool {
        parse(text).matches(node)
    }

    fn error(text: &str) -> ConstraintError {
        match Constraint::parse(text) {
            Ok(c) => panic!("{text:?} should not parse, got {c:?}"),
            Err(err) => err,
        }
    }

    /// Asserts the error's column and that its message contains `part`.
    fn assert_error(text: &str, column: u32, part: &str) {
        let err = error(text);
        assert_eq!(err.column, column, "column for {text:?}: {err}");
        assert!(
            err.message.contains(part),
            "message for {text:?} should contain {part:?}: {err}"
        );
        assert!(!err.message.contains('\n'), "one line: {err}");
    }

    #[test]
    fn the_examples_parse() {
        for text in [
            "node.labels.zone == a",
            "node.role != manager",
            "node.labels.zone in (a, b)",
            "node.labels.zone not in (c, d)",
            "node.hostname =~ ^web-[0-9]+$",
            "node.hostname !~ ^db-",
            "node.labels.kernel semver >=5.4, <7",
            "node.drivers contains raw",
            "node.drivers not contains docker",
            "node.labels.gpu exists",
            "node.labels.gpu not exists",
        ] {
            assert_eq!(parse(text).as_str(), text);
        }
    }

    #[test]
    fn parsed_parts() {
        let c = parse("  node.labels.zone   in(a,\"b c\" ,d)  ");
        assert_eq!(c.as_str(), "node.labels.zone   in(a,\"b c\" ,d)");
        assert_eq!(c.attribute(), &Attribute::Label("zone".to_owned()));
        assert_eq!(c.attribute().label_key(), Some("zone"));
        match c.op() {
            Op::In(values) => assert_eq!(values, &["a", "b c", "d"]),
            other => panic!("expected In, got {other:?}"),
        }
        let c = parse("node.role==worker");
        assert_eq!(c.attribute(), &Attribute::Role);
        assert!(matches!(c.op(), Op::Eq(v) if v == "worker"));
        assert!(matches!(parse("node.id !=x").op(), Op::Ne(v) if v == "x"));
        assert!(matches!(parse("node.labels.a exists").op(), Op::Exists));
        assert!(matches!(
            parse("node.labels.a not   exists").op(),
            Op::NotExists
        ));
    }

    #[test]
    fn equality() {
        let n = worker();
        assert!(check("node.labels.zone == a", &n));
        assert!(!check("node.labels.zone == b", &n));
        assert!(!check("node.labels.zone != a", &n));
        assert!(check("node.labels.zone != b", &n));
        assert!(check("node.hostname == web-12", &n));
        assert!(check("node.role == worker", &n));
        assert!(check("node.role != manager", &n));
        assert!(check("node.id == n1abc", &n));
        assert!(!check("node.id == n1ab", &n));
        assert!(check("node.labels.empty == \"\"", &n));
        assert!(check("node.labels.zone == \"a\"", &n));
    }

    #[test]
    fn membership() {
        let n = worker();
        assert!(check("node.labels.zone in (a, b)", &n));
        assert!(check("node.labels.zone in (a)", &n));
        assert!(!check("node.labels.zone in (b, c)", &n));
        assert!(!check("node.labels.zone not in (a, b)", &n));
        assert!(check("node.labels.zone not in (c, d)", &n));
        assert!(check("node.role in (manager, worker)", &n));
        assert!(check("node.labels.desc in (x, \"big, fast box\")", &n));
    }

    #[test]
    fn regexes_search_unanchored() {
        let n = worker();
        assert!(check("node.hostname =~ ^web-[0-9]+$", &n));
        assert!(check("node.hostname =~ eb", &n));
        assert!(!check("node.hostname =~ ^eb", &n));
        assert!(check("node.hostname !~ ^db-", &n));
        assert!(!check("node.hostname !~ web", &n));
        assert!(check("node.labels.desc =~ \"fast box$\"", &n));
        assert!(check("node.labels.zone =~ \"\"", &n));
        assert!(check(r"node.hostname =~ ^web-\d+$", &n));
        assert!(check(r#"node.hostname =~ "^web-\\d+$""#, &n));
    }

    #[test]
    fn semver_requirements() {
        let n = worker();
        assert!(check("node.labels.kernel semver >=5.4, <7", &n));
        assert!(!check("node.labels.kernel semver >=6", &n));
        assert!(check("node.labels.kernel semver \">=5.4, <7\"", &n));
        assert!(check("node.labels.kernel semver ^5", &n));
        for (value, matched) in [
            ("5.4", true),
            ("v6", true),
            ("v6.1.2", true),
            ("6.2-rc1", false), // a pre-release only meets a requirement naming one
            ("7", false),
            ("5.3.9", false),
            ("five", false),
            ("5.4.3.2", false),
            ("", false),
            ("v", false),
        ] {
            let n = node(&[("kernel", value)]);
            assert_eq!(
                check("node.labels.kernel semver >=5.4, <7", &n),
                matched,
                "{value:?}"
            );
        }
        assert!(check(
            "node.labels.kernel semver >=6.2.0-rc0",
            &node(&[("kernel", "6.2-rc1")])
        ));
        assert!(!check("node.hostname semver *", &worker()));
    }

    #[test]
    fn version_padding() {
        assert_eq!(parse_version("5.4"), Version::parse("5.4.0").ok());
        assert_eq!(parse_version("v6"), Version::parse("6.0.0").ok());
        assert_eq!(parse_version("1.2.3+b"), Version::parse("1.2.3+b").ok());
        assert_eq!(parse_version("1+b"), Version::parse("1.0.0+b").ok());
        assert_eq!(parse_version("1."), None);
        assert_eq!(parse_version("x.y"), None);
    }

    #[test]
    fn drivers() {
        let n = worker();
        assert!(check("node.drivers contains raw", &n));
        assert!(!check("node.drivers contains docker", &n));
        assert!(check("node.drivers not contains docker", &n));
        assert!(!check("node.drivers not contains raw", &n));
        assert_eq!(Attribute::Drivers.value(&n), None);
    }

    #[test]
    fn existence() {
        let n = worker();
        assert!(check("node.labels.zone exists", &n));
        assert!(check("node.labels.empty exists", &n));
        assert!(!check("node.labels.gpu exists", &n));
        assert!(check("node.labels.gpu not exists", &n));
        assert!(!check("node.labels.zone not exists", &n));
    }

    #[test]
    fn missing_labels() {
        let n = worker();
        assert!(!check("node.labels.gpu == a", &n));
        assert!(check("node.labels.gpu != a", &n));
        assert!(!check("node.labels.gpu in (a, b)", &n));
        assert!(check("node.labels.gpu not in (a, b)", &n));
        assert!(!check("node.labels.gpu =~ .*", &n));
        assert!(check("node.labels.gpu !~ .*", &n));
        assert!(!check("node.labels.gpu semver *", &n));
        assert!(!check("node.labels.gpu exists", &n));
        assert!(check("node.labels.gpu not exists", &n));
    }

    #[test]
    fn quoting() {
        let c = parse(r#"node.labels.desc == "a \"quoted\" \\ value, (with) spaces""#);
        assert!(matches!(c.op(), Op::Eq(v) if v == r#"a "quoted" \ value, (with) spaces"#));
        let c = parse(r#"node.labels.x in ("a,b", "c)", "")"#);
        assert!(matches!(c.op(), Op::In(v) if v == &["a,b", "c)", ""]));
        // Bare single values may hold any non-space chars.
        let c = parse("node.labels.x == a,b(c)\"d");
        assert!(matches!(c.op(), Op::Eq(v) if v == "a,b(c)\"d"));
        let c = parse("node.labels.x == \"é ü\"");
        assert!(matches!(c.op(), Op::Eq(v) if v == "é ü"));
    }

    #[test]
    fn attributes_parse_and_display() {
        for text in [
            "node.labels.zone",
            "node.labels.a/b-c_d.e",
            "node.hostname",
            "node.role",
            "node.id",
            "node.drivers",
        ] {
            let attribute = Attribute::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(attribute.to_string(), text);
        }
        assert_eq!(
            Attribute::parse("node.labels.zone"),
            Ok(Attribute::Label("zone".to_owned()))
        );
        assert_eq!(Attribute::Hostname.label_key(), None);
        let long = format!("node.labels.{}", "k".repeat(63));
        assert!(Attribute::parse(&long).is_ok());
        let err = Attribute::parse("node.name").expect_err("unknown");
        assert!(err.contains("unknown attribute \"node.name\""), "{err}");
        assert!(err.contains("node.labels.<key>, node.hostname"), "{err}");
        assert!(Attribute::parse("node.labels.-x").is_err());
        assert!(Attribute::parse("").is_err());
        assert!(Attribute::parse(" node.id").is_err());
    }

    #[test]
    fn attribute_values() {
        let n = worker();
        assert_eq!(Attribute::Label("zone".into()).value(&n), Some("a"));
        assert_eq!(Attribute::Label("gpu".into()).value(&n), None);
        assert_eq!(Attribute::Hostname.value(&n), Some("web-12"));
        assert_eq!(Attribute::Role.value(&n), Some("worker"));
        assert_eq!(Attribute::Id.value(&n), Some("n1abc"));
    }

    #[test]
    fn errors_in_the_text_and_attribute() {
        assert_error("", 1, "empty constraint");
        assert_error("   ", 1, "empty constraint");
        assert_error(&"x".repeat(513), 513, "more than the limit of 512");
        assert_error("node.name == a", 1, "unknown attribute \"node.name\"");
        assert_error(
            "  zone == a",
            3,
            "expected node.labels.<key>, node.hostname",
        );
        assert_error("== a", 1, "missing attribute before \"==\"");
        assert_error("node.labels == a", 1, "missing label key");
        assert_error("node.labels. == a", 13, "missing label key");
        assert_error(
            "node.labels._x == a",
            13,
            "must start with a letter or digit",
        );
        assert_error("node.labels.ab$c == a", 15, "contains '$'");
        assert_error(
            &format!("node.labels.{} == a", "k".repeat(64)),
            13,
            "more than the limit of 63",
        );
    }

    #[test]
    fn errors_in_the_operator() {
        assert_error(
            "node.role",
            10,
            "missing operator after node.role (expected ==",
        );
        assert_error("node.role   ", 13, "missing operator");
        assert_error(
            "node.labels.zone = a",
            18,
            "unknown operator \"=\" (expected ==, !=, in, not in, =~, !~, semver, contains, \
             not contains, exists, not exists)",
        );
        assert_error("node.labels.zone === a", 18, "unknown operator \"===\"");
        assert_error("node.labels.zone >= a", 18, "unknown operator \">=\"");
        assert_error("node.labels.zone is a", 18, "unknown operator \"is\"");
        assert_error("node.labels.zone (a)", 18, "unknown operator \"(a)\"");
        assert_error(
            "node.labels.zone not eq a",
            22,
            "unknown operator \"not eq\"",
        );
        assert_error("node.labels.zone not", 21, "missing in, contains or exists");
        assert_error(
            "node.labels.zone not (a)",
            22,
            "unknown operator \"not (a)\"",
        );
        assert_error(
            "node.role == a",
            14,
            "\"a\" is not a node role (expected manager or worker)",
        );
        assert_error(
            "node.role in (worker, boss)",
            23,
            "\"boss\" is not a node role",
        );
        assert_error(
            "node.role not in (\"x y\")",
            19,
            "\"x y\" is not a node role",
        );
    }

    #[test]
    fn errors_for_operators_on_the_wrong_attribute() {
        assert_error("node.drivers == raw", 14, "use contains or not contains");
        assert_error("node.drivers in (raw)", 14, "node.drivers is a set");
        assert_error("node.drivers =~ raw", 14, "node.drivers is a set");
        assert_error(
            "node.drivers exists",
            14,
            "exists is only for node.labels.<key>",
        );
        assert_error(
            "node.labels.x contains raw",
            15,
            "contains is only for node.drivers",
        );
        assert_error(
            "node.hostname not contains a",
            15,
            "not contains is only for node.drivers",
        );
        assert_error(
            "node.hostname exists",
            15,
            "exists is only for node.labels.<key>",
        );
        assert_error(
            "node.role not exists",
            11,
            "not exists is only for node.labels.<key>",
        );
    }

    #[test]
    fn errors_in_values() {
        assert_error("node.labels.zone ==", 20, "missing value after ==");
        assert_error("node.labels.zone !=  ", 22, "missing value after !=");
        assert_error("node.drivers contains", 22, "missing value after contains");
        assert_error("node.hostname =~", 17, "missing value after =~");
        assert_error(
            "node.labels.zone == a b",
            23,
            "unexpected \"b\" after the value",
        );
        assert_error("node.labels.zone == \"a b", 21, "unterminated quote");
        assert_error("node.labels.zone == \"a\\\"", 21, "unterminated quote");
        assert_error("node.labels.zone == \"a\\", 21, "unterminated quote");
        assert_error(
            "node.labels.zone == \"a\\nb\"",
            23,
            "unknown escape \"\\n\"",
        );
        assert_error(
            "node.labels.zone == \"a\"b",
            24,
            "unexpected \"b\" after the value",
        );
        assert_error("node.labels.gpu exists yes", 24, "exists takes no value");
    }

    #[test]
    fn errors_in_lists() {
        assert_error("node.labels.zone in", 20, "missing list after in");
        assert_error(
            "node.labels.zone in a, b",
            21,
            "in needs a list in parentheses",
        );
        assert_error(
            "node.labels.zone not in a",
            25,
            "not in needs a list in parentheses",
        );
        assert_error(
            "node.labels.zone in ()",
            21,
            "empty list (expected at least one value)",
        );
        assert_error("node.labels.zone in (  )", 21, "empty list");
        assert_error("node.labels.zone in (a", 21, "unterminated list");
        assert_error("node.labels.zone in (a,", 21, "unterminated list");
        assert_error("node.labels.zone in (a,)", 24, "missing value before ')'");
        assert_error("node.labels.zone in (a,,b)", 24, "missing value before ','");
        assert_error("node.labels.zone in (,a)", 22, "missing value before ','");
        assert_error(
            "node.labels.zone in (a b)",
            24,
            "unexpected \"b)\" in the list",
        );
        assert_error(
            "node.labels.zone in (a(b))",
            23,
            "unexpected \"(b))\" in the list",
        );
        assert_error(
            "node.labels.zone in ((a))",
            22,
            "unexpected '(' in the list",
        );
        assert_error(
            "node.labels.zone in (a) b",
            25,
            "unexpected \"b\" after the list",
        );
        assert_error("node.labels.zone in (\"a)", 22, "unterminated quote");
    }

    #[test]
    fn errors_in_regexes() {
        let err = error("node.hostname =~ ^web-(");
        assert_eq!(err.column, 18);
        assert_eq!(err.message, "bad regex: unclosed group");
        assert_error(
            "node.hostname !~ \"[a-\"",
            18,
            "bad regex: unclosed character class",
        );
        assert_error(
            &format!("node.hostname =~ {}", "a".repeat(257)),
            18,
            "regex is 257 characters long, more than the limit of 256",
        );
        assert!(Constraint::parse(&format!("node.hostname =~ {}", "a".repeat(256))).is_ok());
        assert_error(
            r"node.hostname =~ \w{1000}\w{1000}",
            18,
            "bad regex: it compiles to more",
        );
    }

    #[test]
    fn errors_in_semver_requirements() {
        assert_error(
            "node.labels.kernel semver",
            26,
            "missing version requirement",
        );
        assert_error(
            "node.labels.kernel semver   ",
            29,
            "missing version requirement",
        );
        assert_error(
            "node.labels.kernel semver >=five",
            27,
            "bad semver requirement \">=five\"",
        );
        assert_error(
            "node.labels.kernel semver \">=5\" x",
            33,
            "unexpected \"x\"",
        );
        assert_error("node.labels.kernel semver \">=5", 27, "unterminated quote");
    }

    #[test]
    fn columns_count_chars_not_bytes() {
        assert_error("node.labels.zöne == a", 14, "contains 'ö'");
        assert_error("node.labels.z == \"é ü", 18, "unterminated quote");
        assert_error("node.labels.z == é ü", 20, "unexpected \"ü\"");
    }

    #[test]
    fn errors_display_with_their_column() {
        let err = error("node.labels.zone = a");
        assert_eq!(err.to_string(), format!("column 18: {}", err.message));
    }

    #[test]
    fn compares_hashes_and_orders_by_text() {
        use std::hash::{BuildHasher, RandomState};
        let a = parse("node.labels.zone == a");
        let b = parse("  node.labels.zone == a\n");
        let c = parse("node.labels.zone ==a");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(c > a);
        // Hashes by text too (a HashSet<Constraint> would trip clippy's
        // mutable_key_type: a Regex holds a cache, which the hash ignores).
        let state = RandomState::new();
        assert_eq!(state.hash_one(&a), state.hash_one(&b));
        assert_eq!(state.hash_one(&a), state.hash_one(a.as_str()));
        assert_eq!(a.to_string(), "node.labels.zone == a");
    }

    #[test]
    fn serde_round_trip() {
        let c = parse(r#" node.labels.desc in ("a, b", c) "#);
        let json = serde_json::to_string(&c).expect("serialises");
        assert_eq!(json, r#""node.labels.desc in (\"a, b\", c)""#);
        let back: Constraint = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, c);
        assert!(matches!(back.op(), Op::In(v) if v == &["a, b", "c"]));

        let err = serde_json::from_str::<Constraint>(r#""node.labels.zone = a""#)
            .expect_err("bad operator");
        assert!(err.to_string().contains("unknown operator \"=\""), "{err}");
        assert!(serde_json::from_str::<Constraint>("42").is_err());

        let attribute = Attribute::Label("zone".to_owned());
        let json = serde_json::to_string(&attribute).expect("serialises");
        assert_eq!(json, r#""node.labels.zone""#);
        assert_eq!(
            serde_json::from_str::<Attribute>(&json).expect("deserialises"),
            attribute
        );
        assert_eq!(
            serde_json::from_str::<Attribute>(r#""node.drivers""#).expect("deserialises"),
            Attribute::Drivers
        );
        assert!(serde_json::from_str::<Attribute>(r#""zone""#).is_err());
    }

    /// Texts close to the grammar, so the property tests also reach the
    /// deeper parts of the parser.
    fn near_constraint() -> impl Strategy<Value = String> {
        let attribute = prop_oneof![
            Just("node.labels.zone".to_owned()),
            "node\\.labels\\.[a-z0-9._/$-]{0,4}",
            Just("node.hostname".to_owned()),
            Just("node.role".to_owned()),
            Just("node.id".to_owned()),
            Just("node.drivers".to_owned()),
            "[a-z.]{0,8}",
        ];
        let operator = prop_oneof![
            Just("=="),
            Just("!="),
            Just("in"),
            Just("not in"),
            Just("=~"),
            Just("!~"),
            Just("semver"),
            Just("contains"),
            Just("not contains"),
            Just("exists"),
            Just("not exists"),
            Just("="),
            Just("not"),
        ];
        let operand = prop_oneof![
            "[ a-z0-9,()\"\\\\^$.*+?<>=~\\[\\]{}-]{0,12}",
            "\\PC{0,8}",
            Just("manager".to_owned()),
            Just("(a, \"b c\", worker)".to_owned()),
            Just(">=5.4, <7".to_owned()),
        ];
        (
            attribute, "\\s{0,2}", operator, "\\s{0,2}", operand, "\\s{0,2}",
        )
            .prop_map(|(a, s1, o, s2, v, s3)| format!("{s1}{a}{s2}{o} {v}{s3}"))
    }

    fn check_never_panics_and_round_trips(text: &str) {
        let nodes = [worker(), node(&[("zone", "b"), ("kernel", "v6")])];
        match Constraint::parse(text) {
            Ok(c) => {
                let again = Constraint::parse(c.as_str());
                let again = match again {
                    Ok(again) => again,
                    Err(err) => panic!("{:?} reparses: {err}", c.as_str()),
                };
                assert_eq!(again, c);
                assert_eq!(again.attribute(), c.attribute());
                assert_eq!(format!("{:?}", again.op()), format!("{:?}", c.op()));
                for n in &nodes {
                    assert_eq!(again.matches(n), c.matches(n));
                }
            }
            Err(err) => {
                let chars = u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
                assert!(
                    err.column >= 1 && err.column <= chars.saturating_add(1),
                    "column {} within {text:?}",
                    err.column
                );
                assert!(!err.message.is_empty());
                assert!(!err.message.contains('\n'), "one line: {err}");
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            check_never_panics_and_round_trips(&text);
        }

        #[test]
        fn near_constraints_never_panic_and_round_trip(text in near_constraint()) {
            check_never_panics_and_round_trips(&text);
        }
    }
}
