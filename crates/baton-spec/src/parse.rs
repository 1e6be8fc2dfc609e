//! Parsing and validation of submitted spec bytes. (Being written.)

use std::fmt;

use crate::{JobSpec, SpecFormat};

/// Largest spec document accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

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

/// Parses and validates a job spec.
pub fn parse_job(
    source_name: &str,
    bytes: &[u8],
    format: SpecFormat,
) -> Result<JobSpec, SpecErrors> {
    let _ = (bytes, format);
    Err(SpecErrors {
        source_name: source_name.to_owned(),
        errors: vec![SpecError {
            path: String::new(),
            line: None,
            col: None,
            message: "not yet implemented".to_owned(),
        }],
    })
}
