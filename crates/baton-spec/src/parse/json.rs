//! JSON text to a [`Node`] tree: a small recursive-descent reader (RFC 8259)
//! written here because `serde_json` gives a visitor no positions, and every
//! value and key needs its line and column. Duplicate keys are kept in the
//! tree for the validator to report, as in YAML.
//!
//! Recursion is bounded by [`MAX_SPEC_DEPTH`], so the stack is too.

use super::tree::{Entry, Node, Pos, Scalar, ScalarKind, Value};
use super::{MAX_SPEC_DEPTH, SpecError};

/// Reads one JSON value into a tree. `None` means the text is not valid JSON;
/// the one syntax error (reading cannot go on after it) is in `errors`.
pub(crate) fn parse(text: &str, errors: &mut Vec<SpecError>) -> Option<Node> {
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        idx: 0,
        line: 1,
        col: 1,
    };
    // A leading byte order mark is allowed to be ignored (RFC 8259 §8.1).
    if text.starts_with('\u{feff}') {
        reader.idx = '\u{feff}'.len_utf8();
    }
    match reader.document() {
        Ok(root) => Some(root),
        Err(SyntaxError { pos, message }) => {
            errors.push(SpecError {
                path: String::new(),
                line: Some(pos.line),
                col: Some(pos.col),
                message: format!("invalid JSON: {message}"),
            });
            None
        }
    }
}

struct SyntaxError {
    pos: Pos,
    message: String,
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    /// Byte offset of the next character.
    idx: usize,
    line: usize,
    /// Column in characters, as the YAML parser counts them.
    col: usize,
}

impl Reader<'_> {
    fn document(&mut self) -> Result<Node, SyntaxError> {
        self.skip_whitespace();
        if self.peek().is_none() {
            return Err(self.error("empty document (expected a job spec object)"));
        }
        let root = self.value(0)?;
        self.skip_whitespace();
        if self.peek().is_some() {
            return Err(self.error("unexpected characters after the end of the document"));
        }
        Ok(root)
    }

    fn value(&mut self, depth: usize) -> Result<Node, SyntaxError> {
        let pos = self.pos();
        let value = match self.peek() {
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => Value::Scalar(Scalar {
                kind: ScalarKind::Str,
                text: self.string()?,
            }),
            Some(b't') => self.literal("true", ScalarKind::Bool)?,
            Some(b'f') => self.literal("false", ScalarKind::Bool)?,
            Some(b'n') => self.literal("null", ScalarKind::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(_) => return Err(self.error_here("a value")),
            None => return Err(self.error("unexpected end of input (expected a value)")),
        };
        Ok(Node { pos, value })
    }

    fn object(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.enter(depth)?;
        let mut entries = Vec::new();
        self.skip_whitespace();
        if self.eat(b'}') {
            return Ok(Value::Map(entries));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error_here("a string key"));
            }
            let key_pos = self.pos();
            let key = self.string()?;
            self.skip_whitespace();
            if !self.eat(b':') {
                return Err(self.error_here("':'"));
            }
            self.skip_whitespace();
            let value = self.value(depth + 1)?;
            entries.push(Entry {
                key,
                key_pos,
                value,
            });
            self.skip_whitespace();
            if self.eat(b'}') {
                return Ok(Value::Map(entries));
            }
            if !self.eat(b',') {
                return Err(self.error_here("',' or '}'"));
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.enter(depth)?;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.eat(b']') {
            return Ok(Value::Seq(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            if self.eat(b']') {
                return Ok(Value::Seq(items));
            }
            if !self.eat(b',') {
                return Err(self.error_here("',' or ']'"));
            }
        }
    }

    /// Consumes the opening bracket of a collection at `depth`.
    fn enter(&mut self, depth: usize) -> Result<(), SyntaxError> {
        if depth >= MAX_SPEC_DEPTH {
            return Err(self.error(&format!(
                "nesting deeper than {MAX_SPEC_DEPTH} levels (a job spec needs 4)"
            )));
        }
        self.bump();
        Ok(())
    }

    fn string(&mut self) -> Result<String, SyntaxError> {
        self.bump(); // the opening quote
        let mut out = String::new();
        loop {
            let start = self.idx;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.bump();
            }
            // Both ends sit on an ASCII byte or the end, so on char boundaries.
            out.push_str(self.text.get(start..self.idx).unwrap_or_default());
            match self.peek() {
                Some(b'"') => {
                    self.bump();
                    return Ok(out);
                }
                Some(b'\\') => out.push(self.escape()?),
                Some(_) => {
                    return Err(self.error("control character in a string (expected it escaped)"));
                }
                None => return Err(self.error("unexpected end of input inside a string")),
            }
        }
    }

    fn escape(&mut self) -> Result<char, SyntaxError> {
        let pos = self.pos();
        self.bump(); // the backslash
        let Some(b) = self.peek() else {
            return Err(self.error("unexpected end of input inside a string"));
        };
        self.bump();
        let c = match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4(pos)?;
                let code = match unit {
                    0xd800..=0xdbff => {
                        // A high surrogate must be followed by an escaped low one.
                        if !(self.eat(b'\\') && self.eat(b'u')) {
                            return Err(bad_escape(pos));
                        }
                        let low = self.hex4(pos)?;
                        if !(0xdc00..=0xdfff).contains(&low) {
                            return Err(bad_escape(pos));
                        }
                        0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00)
                    }
                    0xdc00..=0xdfff => return Err(bad_escape(pos)),
                    _ => unit,
                };
                char::from_u32(code).ok_or_else(|| bad_escape(pos))?
            }
            _ => return Err(bad_escape(pos)),
        };
        Ok(c)
    }

    fn hex4(&mut self, escape_pos: Pos) -> Result<u32, SyntaxError> {
        let mut unit = 0;
        for _ in 0..4 {
            let digit = self
                .peek()
                .and_then(|b| char::from(b).to_digit(16))
                .ok_or_else(|| bad_escape(escape_pos))?;
            self.bump();
            unit = unit * 16 + digit;
        }
        Ok(unit)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`
    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.idx;
        let mut kind = ScalarKind::Int;
        self.eat(b'-');
        if !self.eat(b'0') && self.digits() == 0 {
            return Err(self.error_here("a digit"));
        }
        if self.eat(b'.') {
            kind = ScalarKind::Float;
            if self.digits() == 0 {
                return Err(self.error_here("a digit"));
            }
        }
        if self.eat(b'e') || self.eat(b'E') {
            kind = ScalarKind::Float;
            let _ = self.eat(b'+') || self.eat(b'-');
            if self.digits() == 0 {
                return Err(self.error_here("a digit"));
            }
        }
        let text = self
            .text
            .get(start..self.idx)
            .unwrap_or_default()
            .to_owned();
        Ok(Value::Scalar(Scalar { kind, text }))
    }

    fn digits(&mut self) -> usize {
        let mut n_digits = 0;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.bump();
            n_digits += 1;
        }
        n_digits
    }

    fn literal(&mut self, word: &str, kind: ScalarKind) -> Result<Value, SyntaxError> {
        let rest = self.bytes.get(self.idx..).unwrap_or_default();
        if !rest.starts_with(word.as_bytes()) {
            return Err(self.error_here("a value"));
        }
        for _ in 0..word.len() {
            self.bump();
        }
        Ok(Value::Scalar(Scalar {
            kind,
            text: word.to_owned(),
        }))
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.bump();
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.idx).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.bump();
            true
        } else {
            false
        }
    }

    /// Moves past one byte, counting lines and (character) columns.
    fn bump(&mut self) {
        let Some(b) = self.peek() else { return };
        self.idx += 1;
        if b == b'\n' {
            self.line += 1;
            self.col = 1;
        } else if b & 0xc0 != 0x80 {
            // Each character counts once, at its first byte (UTF-8 continuation
            // bytes are 0b10xx_xxxx).
            self.col += 1;
        }
    }

    fn pos(&self) -> Pos {
        Pos::new(self.line, self.col)
    }

    fn error(&self, message: &str) -> SyntaxError {
        SyntaxError {
            pos: self.pos(),
            message: message.to_owned(),
        }
    }

    /// "unexpected X (expected `what`)" for the character at the current position.
    fn error_here(&self, what: &str) -> SyntaxError {
        let found = match self
            .text
            .get(self.idx..)
            .and_then(|rest| rest.chars().next())
        {
            Some(c) => format!("unexpected {c:?}"),
            None => "unexpected end of input".to_owned(),
        };
        self.error(&format!("{found} (expected {what})"))
    }
}

fn bad_escape(pos: Pos) -> SyntaxError {
    SyntaxError {
        pos,
        message: "invalid escape sequence in a string".to_owned(),
    }
}
