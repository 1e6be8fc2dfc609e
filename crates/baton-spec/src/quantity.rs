//! Quantities users write: CPU (`100m`, `0.5`, `2`), memory (`64Mi`, `1G`) and
//! durations (`5s`, `100ms`, `1m30s`).

use std::time::Duration;

/// Parses CPU into millicores: `250m`, `0.5` (= 500m), `2` (= 2000m).
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a CPU quantity (use 100m, 0.5, 2, ...)");
    if let Some(m) = s.strip_suffix('m') {
        return m.parse::<u64>().map_err(|_| bad());
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() || frac.len() > 3 {
        return Err(bad());
    }
    let int: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac_ms: u64 = if frac.is_empty() {
        0
    } else {
        let digits: u64 = frac.parse().map_err(|_| bad())?;
        digits * 10u64.pow(3 - u32::try_from(frac.len()).map_err(|_| bad())?)
    };
    int.checked_mul(1000)
        .and_then(|v| v.checked_add(frac_ms))
        .ok_or_else(bad)
}

/// Parses memory into bytes: `64Mi`, `1Gi`, `512M`, `1000` (bytes).
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size (use 64Mi, 1Gi, ...)");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Parses a duration: a sequence of `<integer><unit>` with units `ms`, `s`, `m`, `h`
/// (`100ms`, `5s`, `1m30s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (use 100ms, 5s, 1m30s, ...)");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (digits, tail) = rest.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = tail;
    }
    Ok(total)
}

/// Formats a duration the way users write it (`1m30s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = ms / 1000;
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// Formats bytes exactly, with the largest binary unit that divides them
/// (`64Mi`), else in bytes: `parse_memory` reads it back to the same value.
pub fn format_memory(bytes: u64) -> String {
    for (unit, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Formats bytes for people: the largest binary unit that keeps the value at
/// least 1, exact values as integers (`64Mi`), others with one decimal (`23.5Gi`).
pub fn human_memory(bytes: u64) -> String {
    for (unit, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        let size = 1u64 << shift;
        if bytes >= size {
            if bytes.is_multiple_of(size) {
                return format!("{}{unit}", bytes >> shift);
            }
            // Display only: rounding a huge value through f64 does not matter.
            #[allow(clippy::cast_precision_loss)]
            let value = bytes as f64 / size as f64;
            return format!("{value:.1}{unit}");
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_cpu("100m"), Ok(100));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu(".25"), Ok(250));
        assert!(parse_cpu("1.2345").is_err());
        assert!(parse_cpu("abc").is_err());
        assert!(parse_cpu("").is_err());
    }

    #[test]
    fn memory_forms() {
        assert_eq!(parse_memory("64Mi"), Ok(64 << 20));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("1000"), Ok(1000));
        assert_eq!(
            parse_memory("64XB"),
            Err("\"64XB\" is not a size (use 64Mi, 1Gi, ...)".to_owned())
        );
        assert!(parse_memory("99999999999Ti").is_err());
        assert_eq!(format_memory(64 << 20), "64Mi");
        assert_eq!(format_memory((1 << 20) + 1), "1048577");
        assert_eq!(human_memory((23 << 30) + (1 << 29)), "23.5Gi");
        assert_eq!(human_memory(64 << 20), "64Mi");
        assert_eq!(format_memory(1000), "1000");
    }

    #[test]
    fn duration_forms_round_trip() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }
}
