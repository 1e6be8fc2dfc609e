//! Node labels (`zone=a`): the rules every label must meet, wherever it
//! comes from (an agent's `--label`, an operator's `baton node label`).
//!
//! A key follows the same rule as a key in a constraint (`node.labels.<key>`),
//! so every label a node can carry can be named in a placement rule. Values
//! are free text, bounded, without control characters (they are printed in
//! tables and logs). The number of labels per node is bounded too: labels
//! live in the replicated state, and a worker must not be able to grow it at
//! will.

use std::collections::BTreeMap;

/// Most labels a node may carry from one source (its agent's, or its
/// operator's).
pub const MAX_LABELS: usize = 64;

/// Longest label value, in chars.
pub const MAX_LABEL_VALUE_CHARS: usize = 255;

/// Checks one label: a key of 1 to 63 chars of `[A-Za-z0-9._/-]` starting
/// with a letter or digit (as in `node.labels.<key>`), and a value of at most
/// [`MAX_LABEL_VALUE_CHARS`] chars without control characters (it may be
/// empty).
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    check_label_key(key)?;
    let chars = value.chars().count();
    if chars > MAX_LABEL_VALUE_CHARS {
        return Err(format!(
            "label {key}: value is {chars} characters long, more than the limit of \
             {MAX_LABEL_VALUE_CHARS}"
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!(
            "label {key}: value contains the control character {c:?}"
        ));
    }
    Ok(())
}

/// Checks a label key alone (for removals): the rule of [`check_label`].
pub fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(
            "empty label key (expected 1 to 63 of A-Z a-z 0-9 . _ / -, starting with a \
             letter or digit)"
                .to_owned(),
        );
    }
    // One definition of a key for labels and constraints: the constraint
    // parser's.
    crate::constraint::check_label_key(key).map_err(|(_, message)| message)
}

/// Checks a node's whole set of labels from one source: at most
/// [`MAX_LABELS`] of them, each valid ([`check_label`]). The first problem is
/// returned.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels, more than the limit of {MAX_LABELS}",
            labels.len()
        ));
    }
    labels
        .iter()
        .try_for_each(|(key, value)| check_label(key, value))
}

/// Parses `key=value` as given to `--label` and `baton node label add`, and
/// checks it with [`check_label`]. The value may be empty (`key=`) and may
/// contain `=`; the key may not.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!(
            "{text:?} is not a label (expected key=value, e.g. zone=a)"
        ));
    };
    check_label(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_constraint_rule() {
        for key in ["zone", "a", "Z9", "topology.example/zone", "a-b_c.d/e", "0"] {
            assert_eq!(check_label(key, "x"), Ok(()), "{key}");
        }
        let longest = "k".repeat(63);
        assert_eq!(check_label(&longest, "x"), Ok(()));
        for (key, expected) in [
            ("", "empty label key"),
            ("-zone", "must start with a letter or digit"),
            ("_zone", "must start with a letter or digit"),
            (".zone", "must start with a letter or digit"),
            ("zo ne", "contains ' '"),
            ("zone=a", "contains '='"),
            ("zöne", "contains 'ö'"),
            ("zone\n", "contains '\\n'"),
        ] {
            let err = check_label(key, "x").expect_err(key);
            assert!(err.contains(expected), "{key:?}: {err}");
        }
        let err = check_label(&"k".repeat(64), "x").expect_err("too long");
        assert!(err.contains("more than the limit of 63"), "{err}");
    }

    #[test]
    fn every_valid_key_is_usable_in_a_constraint() {
        for key in ["zone", "topology.example/zone", "a-b_c.d/e"] {
            check_label(key, "a").expect("valid");
            let text = format!("node.labels.{key} == a");
            assert!(crate::Constraint::parse(&text).is_ok(), "{text}");
        }
    }

    #[test]
    fn values_are_bounded_and_printable() {
        assert_eq!(check_label("zone", ""), Ok(()));
        assert_eq!(check_label("desc", "big, fast box = é"), Ok(()));
        assert_eq!(check_label("v", &"é".repeat(255)), Ok(()));
        let err = check_label("v", &"x".repeat(256)).expect_err("too long");
        assert_eq!(
            err,
            "label v: value is 256 characters long, more than the limit of 255"
        );
        for value in ["a\nb", "a\tb", "\u{1b}[31m", "a\u{7f}"] {
            let err = check_label("v", value).expect_err(value);
            assert!(err.contains("control character"), "{value:?}: {err}");
        }
    }

    #[test]
    fn a_set_of_labels_is_bounded() {
        let labels = |n: usize| -> BTreeMap<String, String> {
            (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect()
        };
        assert_eq!(check_labels(&BTreeMap::new()), Ok(()));
        assert_eq!(check_labels(&labels(MAX_LABELS)), Ok(()));
        assert_eq!(
            check_labels(&labels(MAX_LABELS + 1)),
            Err("65 labels, more than the limit of 64".to_owned())
        );
        let mut bad = labels(3);
        bad.insert("ok".to_owned(), "a\u{0}b".to_owned());
        let err = check_labels(&bad).expect_err("control char");
        assert!(err.starts_with("label ok: value contains"), "{err}");
    }

    #[test]
    fn labels_parse_from_key_equals_value() {
        assert_eq!(parse_label("zone=a"), Ok(("zone".into(), "a".into())));
        assert_eq!(parse_label("zone="), Ok(("zone".into(), String::new())));
        assert_eq!(parse_label("k=a=b"), Ok(("k".into(), "a=b".into())));
        let err = parse_label("zone").expect_err("no =");
        assert_eq!(
            err,
            "\"zone\" is not a label (expected key=value, e.g. zone=a)"
        );
        assert!(parse_label("=a").is_err());
        assert!(parse_label("-x=a").is_err());
    }
}
