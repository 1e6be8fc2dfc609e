//! The generic document tree that both the YAML and the JSON reader produce and
//! the validator walks: mappings, lists and scalars, each with the 1-based line
//! and column where it starts in the source.
//!
//! Scalars keep the text as written (after escape processing), so a value such as
//! `0.50` or `0x1f` reaches an environment variable or an error message unchanged.

/// A 1-based position in the source, counted in characters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Pos {
    /// 1-based line.
    pub(crate) line: u32,
    /// 1-based column, in characters.
    pub(crate) col: u32,
}

impl Pos {
    /// A position from counts that may not fit `u32` (they always do for a
    /// document under `MAX_SPEC_BYTES`, but saturating costs nothing).
    pub(crate) fn new(line: usize, col: usize) -> Pos {
        Pos {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            col: u32::try_from(col).unwrap_or(u32::MAX),
        }
    }
}

/// One value in the document and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    /// Where the value starts.
    pub(crate) pos: Pos,
    /// The value.
    pub(crate) value: Value,
}

/// The shapes a value can take.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    /// A string, number, boolean or null.
    Scalar(Scalar),
    /// A list.
    Seq(Vec<Node>),
    /// A mapping, entries in document order, duplicates kept (the validator reports them).
    Map(Vec<Entry>),
    /// A value the reader already reported (an alias, a refused tag): the validator
    /// skips it so one mistake yields one error.
    Invalid,
}

/// A scalar and the type it resolved to.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Scalar {
    /// The resolved type.
    pub(crate) kind: ScalarKind,
    /// The text as written, after escape processing.
    pub(crate) text: String,
}

/// The type of a scalar: YAML 1.2 core schema for plain YAML scalars, JSON's own
/// types for JSON; quoted and block YAML scalars are always strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScalarKind {
    /// `null`, `~` or nothing.
    Null,
    /// `true` or `false`.
    Bool,
    /// An integer (decimal; YAML also allows `0x` and `0o`).
    Int,
    /// Any other number.
    Float,
    /// A string.
    Str,
}

/// One `key: value` pair of a mapping.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    /// The key's text.
    pub(crate) key: String,
    /// Where the key starts.
    pub(crate) key_pos: Pos,
    /// The value.
    pub(crate) value: Node,
}

impl Node {
    /// What this value is, for "expected X, found Y" messages: scalars show
    /// (a prefix of) their text, collections their shape.
    pub(crate) fn describe(&self) -> String {
        match &self.value {
            Value::Scalar(Scalar {
                kind: ScalarKind::Str,
                text,
            }) => quote(text),
            Value::Scalar(Scalar {
                kind: ScalarKind::Null,
                ..
            }) => "null".to_owned(),
            Value::Scalar(Scalar { text, .. }) => truncate(text),
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
            Value::Invalid => "an invalid value".to_owned(),
        }
    }

    /// The scalar, if this is one.
    pub(crate) fn scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(scalar) => Some(scalar),
            _ => None,
        }
    }

    /// Whether this is an explicit null (`key:` with nothing after it).
    pub(crate) fn is_null(&self) -> bool {
        matches!(
            self.value,
            Value::Scalar(Scalar {
                kind: ScalarKind::Null,
                ..
            })
        )
    }
}

/// Longest piece of user text echoed in a message or path, in characters: enough
/// to recognize a value, short enough that a hostile document cannot make an
/// error line megabytes long.
const MAX_ECHO_CHARS: usize = 40;

/// `text` cut to [`MAX_ECHO_CHARS`] characters, with `...` when cut.
pub(crate) fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}...", text.get(..cut).unwrap_or_default()),
    }
}

/// `text` as a quoted, escaped string literal (so newlines cannot split an error
/// line), cut to [`MAX_ECHO_CHARS`] characters.
pub(crate) fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}...", text.get(..cut).unwrap_or_default()),
    }
}

/// The path of field `key` inside `parent`: `task.env.FOO`, or
/// `task.env["a b"]` for keys that are not plain words.
pub(crate) fn field_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key.len() <= MAX_ECHO_CHARS
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{}]", quote(key)),
    }
}

/// The path of list item `idx` inside `parent`: `task.command[0]`.
pub(crate) fn index_path(parent: &str, idx: usize) -> String {
    format!("{parent}[{idx}]")
}

/// The value of an integer scalar's text: decimal with an optional sign, or YAML's
/// `0x` (hex) and `0o` (octal). `None` when it is not an integer or does not fit.
pub(crate) fn int_value(text: &str) -> Option<i128> {
    if let Some(hex) = text.strip_prefix("0x") {
        return i128::from_str_radix(hex, 16)
            .ok()
            .filter(|_| !hex.starts_with(['+', '-']));
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return i128::from_str_radix(oct, 8)
            .ok()
            .filter(|_| !oct.starts_with(['+', '-']));
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_unusual_keys() {
        assert_eq!(field_path("", "name"), "name");
        assert_eq!(field_path("task.env", "FOO_1"), "task.env.FOO_1");
        assert_eq!(field_path("task.env", "a b"), "task.env[\"a b\"]");
        assert_eq!(field_path("task.env", "a\nb"), "task.env[\"a\\nb\"]");
        assert_eq!(field_path("", ""), "[\"\"]");
        assert_eq!(index_path("task.command", 0), "task.command[0]");
    }

    #[test]
    fn long_text_is_cut() {
        let long = "x".repeat(100);
        assert_eq!(quote(&long), format!("{:?}...", "x".repeat(40)));
        assert_eq!(truncate(&long), format!("{}...", "x".repeat(40)));
        assert_eq!(quote("é"), "\"é\"");
    }

    #[test]
    fn int_forms() {
        assert_eq!(int_value("42"), Some(42));
        assert_eq!(int_value("-7"), Some(-7));
        assert_eq!(int_value("+7"), Some(7));
        assert_eq!(int_value("0x1f"), Some(31));
        assert_eq!(int_value("0o17"), Some(15));
        assert_eq!(int_value("0x-1"), None);
        assert_eq!(int_value("9".repeat(50).as_str()), None);
    }
}
