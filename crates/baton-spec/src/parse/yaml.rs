//! YAML bytes to a [`Node`] tree, driven by the event stream of
//! `granit-parser` (the parser under serde-saphyr, re-exported by it), so every
//! node keeps its line and column and the hostile parts of YAML are refused
//! before they cost anything.
//!
//! What is refused, and why:
//! - Anchors and aliases, entirely. A job spec has no use for them, and refusing
//!   them at the event level means an alias is never expanded: a "billion laughs"
//!   document costs what its bytes cost (the ~1 KB bomb in the tests is refused
//!   in well under a millisecond in a debug build) instead of relying on
//!   expansion budgets. The first one is reported; later ones are skipped.
//! - Tags, except `!!str`, `!!seq` and `!!map` on a node of that kind (the only
//!   ones that mean nothing beyond what the value already is, or force a string).
//! - More than one document, and nesting deeper than [`MAX_SPEC_DEPTH`].
//!
//! Merge keys (`<<`) are ordinary keys here; the validator refuses them.

use serde_saphyr::granit_parser::{self, ErrorKind, Event, Marker, Parser, ScalarStyle, Span, Tag};

use super::tree::{Entry, Node, Pos, Scalar, ScalarKind, Value, field_path, index_path, truncate};
use super::{MAX_SPEC_DEPTH, SpecError};

/// Reads one YAML document into a tree. Problems go to `errors` (in document
/// order); `None` means the document could not be read to the end.
pub(crate) fn parse(text: &str, errors: &mut Vec<SpecError>) -> Option<Node> {
    let options = granit_parser::options! {
        emit_comments: false,
        // An `Anchor` event carries the position of the `&name` token itself.
        emit_anchor_events: true,
        // `*missing` becomes an event we refuse like any alias, not a scan error.
        emit_unresolved_aliases: true,
        // The parser's scanner reads ahead, so for `[[[[...` it meets the limit
        // before the builder sees the events; both limits are the same.
        flow_nesting_limit: MAX_SPEC_DEPTH,
        block_nesting_limit: MAX_SPEC_DEPTH,
    };
    let mut builder = Builder {
        stack: Vec::new(),
        root: None,
        errors,
        anchors_refused: false,
        anchored_path: None,
        n_documents: 0,
    };
    for item in Parser::new_from_str_with_options(text, options) {
        match item {
            Ok((event, span)) => builder.event(event, span).ok()?,
            Err(err) => {
                let message = if matches!(err.kind(), ErrorKind::RecursionLimitExceeded) {
                    too_deep()
                } else {
                    format!("invalid YAML: {}", err.info().replace('\n', "; "))
                };
                builder.push_error(String::new(), marker_pos(err.marker()), message);
                return None;
            }
        }
    }
    if builder.root.is_none() {
        builder.push_error(
            String::new(),
            Pos::new(1, 1),
            "empty document (expected a job spec mapping)".to_owned(),
        );
    }
    builder.root
}

/// A collection being read.
struct Frame {
    pos: Pos,
    kind: FrameKind,
}

enum FrameKind {
    Seq(Vec<Node>),
    Map { entries: Vec<Entry>, next: MapState },
}

/// What the next node of a mapping is.
enum MapState {
    /// A key.
    Key,
    /// The value of this key.
    Value { key: String, key_pos: Pos },
    /// The value of a key that was refused: read and dropped.
    SkipValue,
}

/// Reading stopped at a fatal problem (already reported).
struct Stop;

struct Builder<'e> {
    stack: Vec<Frame>,
    root: Option<Node>,
    errors: &'e mut Vec<SpecError>,
    /// Whether an anchor or alias was reported already (one error is enough).
    anchors_refused: bool,
    /// Path of the node whose `Anchor` event comes next.
    anchored_path: Option<String>,
    n_documents: usize,
}

impl Builder<'_> {
    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), Stop> {
        let pos = marker_pos(&span.start);
        match event {
            Event::DocumentStart(..) => {
                self.n_documents += 1;
                if self.n_documents > 1 {
                    self.push_error(
                        String::new(),
                        pos,
                        "more than one YAML document in the file (expected exactly one job spec)"
                            .to_owned(),
                    );
                    return Err(Stop);
                }
            }
            Event::Alias(_) | Event::UnresolvedAlias(_) => {
                let path = self.path();
                self.refuse_anchors(path, pos);
                self.attach(Node {
                    pos,
                    value: Value::Invalid,
                });
            }
            Event::Anchor(..) => {
                let path = self.anchored_path.take().unwrap_or_default();
                self.refuse_anchors(path, pos);
            }
            Event::Scalar(text, style, anchor_id, tag) => {
                self.note_anchor(anchor_id);
                let value = match tag {
                    None => Value::Scalar(resolve(text.into_owned(), style)),
                    Some(tag) if tag.is_yaml_core_schema_tag("str") => Value::Scalar(Scalar {
                        kind: ScalarKind::Str,
                        text: text.into_owned(),
                    }),
                    Some(tag) => {
                        self.refuse_tag(&tag, &span);
                        Value::Invalid
                    }
                };
                self.attach(Node { pos, value });
            }
            Event::SequenceStart(_, anchor_id, tag) => {
                self.note_anchor(anchor_id);
                self.check_tag(tag.as_deref(), "seq", &span);
                self.open(pos, FrameKind::Seq(Vec::new()))?;
            }
            Event::MappingStart(_, anchor_id, tag) => {
                self.note_anchor(anchor_id);
                self.check_tag(tag.as_deref(), "map", &span);
                self.open(
                    pos,
                    FrameKind::Map {
                        entries: Vec::new(),
                        next: MapState::Key,
                    },
                )?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(frame) = self.stack.pop() {
                    let value = match frame.kind {
                        FrameKind::Seq(items) => Value::Seq(items),
                        FrameKind::Map { entries, .. } => Value::Map(entries),
                    };
                    self.attach(Node {
                        pos: frame.pos,
                        value,
                    });
                }
            }
            // Stream and document ends, comments (not emitted), and event kinds a
            // later parser version may add: none carries data a spec needs.
            _ => {}
        }
        Ok(())
    }

    fn open(&mut self, pos: Pos, kind: FrameKind) -> Result<(), Stop> {
        if self.stack.len() >= MAX_SPEC_DEPTH {
            // No path: at this depth it would only be a long run of `[0]`.
            self.push_error(String::new(), pos, too_deep());
            return Err(Stop);
        }
        self.stack.push(Frame { pos, kind });
        Ok(())
    }

    /// Puts a finished node where it belongs: the root, a list item, a key or a value.
    fn attach(&mut self, node: Node) {
        let Some(frame) = self.stack.last_mut() else {
            // One document has one root; a second is refused at its DocumentStart.
            if self.root.is_none() {
                self.root = Some(node);
            }
            return;
        };
        let FrameKind::Map { entries, next } = &mut frame.kind else {
            if let FrameKind::Seq(items) = &mut frame.kind {
                items.push(node);
            }
            return;
        };
        match std::mem::replace(next, MapState::Key) {
            MapState::Key => match node.value {
                Value::Scalar(scalar) => {
                    *next = MapState::Value {
                        key: scalar.text,
                        key_pos: node.pos,
                    }
                }
                Value::Invalid => *next = MapState::SkipValue,
                Value::Seq(_) | Value::Map(_) => {
                    *next = MapState::SkipValue;
                    let path = self.path();
                    self.push_error(
                        path,
                        node.pos,
                        format!("expected a string key, found {}", node.describe()),
                    );
                }
            },
            MapState::Value { key, key_pos } => entries.push(Entry {
                key,
                key_pos,
                value: node,
            }),
            MapState::SkipValue => {}
        }
    }

    /// The field path of the node that comes next.
    fn path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match &frame.kind {
                FrameKind::Seq(items) => path = index_path(&path, items.len()),
                FrameKind::Map {
                    next: MapState::Value { key, .. },
                    ..
                } => path = field_path(&path, key),
                FrameKind::Map { .. } => {}
            }
        }
        path
    }

    fn note_anchor(&mut self, anchor_id: usize) {
        if anchor_id != 0 {
            self.anchored_path = Some(self.path());
        }
    }

    fn refuse_anchors(&mut self, path: String, pos: Pos) {
        if !self.anchors_refused {
            self.anchors_refused = true;
            self.push_error(
                path,
                pos,
                "anchors and aliases are not supported in job specs (write the value out)"
                    .to_owned(),
            );
        }
    }

    fn check_tag(&mut self, tag: Option<&Tag>, allowed: &str, span: &Span) {
        if let Some(tag) = tag
            && !tag.is_yaml_core_schema_tag(allowed)
        {
            self.refuse_tag(tag, span);
        }
    }

    fn refuse_tag(&mut self, tag: &Tag, span: &Span) {
        let path = self.path();
        let pos = marker_pos(span.tag_start.as_ref().unwrap_or(&span.start));
        self.push_error(
            path,
            pos,
            format!(
                "unsupported tag {} (job specs allow only !!str, !!seq and !!map)",
                truncate(&tag.original())
            ),
        );
    }

    fn push_error(&mut self, path: String, pos: Pos, message: String) {
        self.errors.push(SpecError {
            path,
            line: Some(pos.line),
            col: Some(pos.col),
            message,
        });
    }
}

fn too_deep() -> String {
    format!("nesting deeper than {MAX_SPEC_DEPTH} levels (a job spec needs 4)")
}

/// The parser counts lines from 1 and columns from 0.
fn marker_pos(marker: &Marker) -> Pos {
    Pos::new(marker.line(), marker.col().saturating_add(1))
}

/// Resolves an untagged scalar: quoted and block scalars are strings, plain ones
/// follow the YAML 1.2 core schema (so `yes`, `on` and `0777` stay what YAML 1.2
/// says: a string, a string and the integer 777).
fn resolve(text: String, style: ScalarStyle) -> Scalar {
    let kind = if style == ScalarStyle::Plain {
        plain_kind(&text)
    } else {
        ScalarKind::Str
    };
    Scalar { kind, text }
}

fn plain_kind(text: &str) -> ScalarKind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return ScalarKind::Null,
        "true" | "True" | "TRUE" | "false" | "False" | "FALSE" => return ScalarKind::Bool,
        ".nan" | ".NaN" | ".NAN" => return ScalarKind::Float,
        _ => {}
    }
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    let radix_digits = match (text.strip_prefix("0x"), text.strip_prefix("0o")) {
        (Some(hex), _) => Some((hex, 16)),
        (None, Some(oct)) => Some((oct, 8)),
        (None, None) => None,
    };
    if let Some((rest, radix)) = radix_digits
        && digits(rest, radix)
    {
        return ScalarKind::Int;
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits(unsigned, 10) {
        return ScalarKind::Int;
    }
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") || is_core_float(unsigned) {
        return ScalarKind::Float;
    }
    ScalarKind::Str
}

/// `(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, the core schema's float
/// without its sign.
fn is_core_float(text: &str) -> bool {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (
            text.get(..at).unwrap_or_default(),
            Some(text.get(at + 1..).unwrap_or_default()),
        ),
        None => (text, None),
    };
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            // `.5` and `1.` are floats, `.` is not.
            all_digits(int) && all_digits(frac) && (!int.is_empty() || !frac.is_empty())
        }
        None => !mantissa.is_empty() && all_digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        let cases = [
            ("", ScalarKind::Null),
            ("~", ScalarKind::Null),
            ("null", ScalarKind::Null),
            ("true", ScalarKind::Bool),
            ("FALSE", ScalarKind::Bool),
            ("yes", ScalarKind::Str),
            ("on", ScalarKind::Str),
            ("42", ScalarKind::Int),
            ("-42", ScalarKind::Int),
            ("0x1F", ScalarKind::Int),
            ("0o17", ScalarKind::Int),
            ("0o19", ScalarKind::Str),
            ("1.5", ScalarKind::Float),
            ("1.", ScalarKind::Float),
            (".5", ScalarKind::Float),
            ("1e3", ScalarKind::Float),
            ("-1.5E-3", ScalarKind::Float),
            (".inf", ScalarKind::Float),
            ("-.inf", ScalarKind::Float),
            (".nan", ScalarKind::Float),
            (".", ScalarKind::Str),
            ("e3", ScalarKind::Str),
            ("1e", ScalarKind::Str),
            ("100m", ScalarKind::Str),
            ("64Mi", ScalarKind::Str),
            ("1.2.3", ScalarKind::Str),
        ];
        for (text, kind) in cases {
            assert_eq!(plain_kind(text), kind, "{text:?}");
        }
    }
}
