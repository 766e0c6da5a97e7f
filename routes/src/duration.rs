//! Go's duration syntax (`time.ParseDuration`), which Traefik uses for every duration field: `"0"`, or a
//! signed sequence of decimal numbers each with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `1h30m`,
//! `2.5s`. Checked here so that a value Traefik would refuse never reaches its file.

use std::time::Duration;

/// Why a duration was refused; each holds the text as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Not Go's syntax.
    Malformed(String),
    /// Negative (no field takes one).
    Negative(String),
    /// Beyond Go's int64 of nanoseconds.
    TooLong(String),
}

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DurationError::Malformed(text) => {
                write!(f, "{text:?} is not a duration (write it as Go does, e.g. \"10s\", \"500ms\", \"1m30s\")")
            }
            DurationError::Negative(text) => write!(f, "{text:?}: a negative duration is not allowed here"),
            DurationError::TooLong(text) => {
                write!(f, "{text:?} is longer than a Go duration can hold (about 292 years)")
            }
        }
    }
}

impl std::error::Error for DurationError {}

/// Parses a Go duration; negative durations are refused (no field takes one).
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError::Malformed(text.to_string());
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(DurationError::Negative(text.to_string()));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(bad());
        }
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
        let mut part = whole.checked_mul(nanos_per).ok_or_else(bad)?;
        // The fraction's digits beyond nanosecond precision do not matter; 18 keeps the arithmetic exact.
        let digits = &fraction[..fraction.len().min(18)];
        if !digits.is_empty() {
            let scale = 10u128.pow(digits.len() as u32);
            part += digits.parse::<u128>().map_err(|_| bad())? * nanos_per / scale;
        }
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = next;
    }
    // Go's Duration is an int64 of nanoseconds.
    if total > i64::MAX as u128 {
        return Err(DurationError::TooLong(text.to_string()));
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_syntax() {
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse(".5ms"), Ok(Duration::from_micros(500)));
        assert_eq!(parse("+1us"), Ok(Duration::from_micros(1)));
        assert_eq!(parse("3µs"), Ok(Duration::from_micros(3)));
        for bad in ["abc", "", "10", "1x", "s", "1.2.3s", "1 s", ".s"] {
            assert_eq!(parse(bad), Err(DurationError::Malformed(bad.into())), "{bad} must be refused");
        }
        assert_eq!(parse("-1s"), Err(DurationError::Negative("-1s".into())));
        for long in ["2562048h", "99999999999999999999h"] {
            assert_eq!(parse(long), Err(DurationError::TooLong(long.into())));
        }
    }
}
