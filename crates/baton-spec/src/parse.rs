//! Parsing and validation of submitted spec bytes: the size and encoding checks,
//! the two readers (YAML, JSON) that turn text into one position-carrying tree,
//! the validator that turns the tree into a [`JobSpec`], and the error types.
//!
//! Pipeline: bytes → (size, UTF-8) → [`yaml`] or [`json`] → [`tree::Node`] →
//! [`validate`] → `JobSpec`, with every problem collected as a [`SpecError`] and
//! reported sorted by position, so a user fixes a spec in one round.

use std::fmt;

use crate::{JobSpec, SpecFormat};

mod json;
mod tree;
mod validate;
mod yaml;

#[cfg(test)]
mod tests;

/// Largest spec document accepted, in bytes. Checked before any parsing, it also
/// bounds the tree (and so the memory) a document can produce.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// Deepest nesting of lists and mappings accepted. A job spec needs 4
/// (`task.resources.cpu`); 32 leaves room without letting a document such as
/// `[[[[...` drive a recursive walk deep.
pub const MAX_SPEC_DEPTH: usize = 32;

/// Most problems reported for one document. A hostile document could produce
/// one per line; after this many a user learns nothing more from the next.
pub const MAX_REPORTED_ERRORS: usize = 50;

/// One problem in a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// Field path, e.g. `task.resources.memory` (empty for document-level errors).
    pub path: String,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub col: Option<u32>,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Every problem found in one spec, in document order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecErrors {
    /// Name of the source (file name) used as the prefix of each line.
    pub source_name: String,
    /// The problems.
    pub errors: Vec<SpecError>,
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.source_name)?;
            if let (Some(line), Some(col)) = (e.line, e.col) {
                write!(f, ":{line}:{col}")?;
            }
            if e.path.is_empty() {
                write!(f, ": {}", e.message)?;
            } else {
                write!(f, ": {}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// Parses and validates a job spec: `bytes` in `format`, named `source_name`
/// in error messages (usually the file name).
///
/// Every problem is reported, sorted by position: a document that cannot be read
/// (over [`MAX_SPEC_BYTES`], not UTF-8, a syntax error, more than one YAML
/// document, nesting deeper than [`MAX_SPEC_DEPTH`]) yields the problems up to
/// that point; otherwise all field problems at once, at most
/// [`MAX_REPORTED_ERRORS`]. YAML anchors, aliases and merge keys are refused, so
/// no input expands beyond its own size. Never panics.
pub fn parse_job(
    source_name: &str,
    bytes: &[u8],
    format: SpecFormat,
) -> Result<JobSpec, SpecErrors> {
    let fail = |errors: Vec<SpecError>| SpecErrors {
        source_name: source_name.to_owned(),
        errors,
    };
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(fail(vec![SpecError {
            path: String::new(),
            line: None,
            col: None,
            message: format!(
                "document is {} bytes, more than the limit of {MAX_SPEC_BYTES} bytes (256 KiB)",
                bytes.len()
            ),
        }]));
    }
    let text = std::str::from_utf8(bytes).map_err(|err| fail(vec![utf8_error(bytes, &err)]))?;
    let mut errors = Vec::new();
    let root = match format {
        SpecFormat::Yaml => yaml::parse(text, &mut errors),
        SpecFormat::Json => json::parse(text, &mut errors),
    };
    let spec = root.and_then(|root| validate::job(&root, &mut errors));
    match spec {
        Some(spec) if errors.is_empty() => Ok(spec),
        _ => {
            if errors.is_empty() {
                // Every path that yields no spec reports why; this is a safety net.
                errors.push(SpecError {
                    path: String::new(),
                    line: None,
                    col: None,
                    message: "invalid job spec".to_owned(),
                });
            }
            Err(fail(in_document_order(errors)))
        }
    }
}

/// Sorts problems by position (stable, so problems at one position keep the
/// order they were found in) and caps their number.
fn in_document_order(mut errors: Vec<SpecError>) -> Vec<SpecError> {
    errors.sort_by_key(|err| (err.line, err.col));
    if errors.len() > MAX_REPORTED_ERRORS {
        let n_more = errors.len() - MAX_REPORTED_ERRORS;
        errors.truncate(MAX_REPORTED_ERRORS);
        errors.push(SpecError {
            path: String::new(),
            line: None,
            col: None,
            message: format!("{n_more} more problems not shown"),
        });
    }
    errors
}

/// Where the first invalid byte is, as line and column of the text before it.
fn utf8_error(bytes: &[u8], err: &std::str::Utf8Error) -> SpecError {
    let valid = bytes
        .get(..err.valid_up_to())
        .and_then(|prefix| std::str::from_utf8(prefix).ok())
        .unwrap_or_default();
    let line_start = valid.rfind('\n').map_or(0, |at| at + 1);
    let line = valid.matches('\n').count() + 1;
    let col = valid.get(line_start..).unwrap_or_default().chars().count() + 1;
    let offending = bytes.get(err.valid_up_to()).copied().unwrap_or_default();
    SpecError {
        path: String::new(),
        line: Some(u32::try_from(line).unwrap_or(u32::MAX)),
        col: Some(u32::try_from(col).unwrap_or(u32::MAX)),
        message: format!(
            "not valid UTF-8 (byte 0x{offending:02x} at offset {}; expected UTF-8 text)",
            err.valid_up_to()
        ),
    }
}
