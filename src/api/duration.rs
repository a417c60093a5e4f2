//! Go-style durations (`90s`, `1h30m`) and Kubernetes quantities (`100Mi`), the
//! notations users already write in every other manifest.
//!
//! The CRD stores them as strings and the schema rejects malformed ones; the
//! controller parses them again so that anything the schema let through is
//! still reported as `InvalidSpec` instead of breaking the watch.

use std::time::Duration;

/// Parses a Go duration: a sequence of decimal numbers, each with an optional
/// fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), e.g. `1h30m`.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let bad = || format!("{input:?} is not a duration like 90s, 15m or 1h30m");
    if input.is_empty() {
        return Err(bad());
    }
    let mut rest = input;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(bad()),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(bad());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(bad)?;
        let mut scale = unit_nanos;
        for digit in frac.chars() {
            scale /= 10;
            nanos += u128::from(digit.to_digit(10).ok_or_else(bad)?) * scale;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(bad)?;
        rest = tail;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Formats a duration the way Go prints it (`1h30m0s`), for messages.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// Parses a Kubernetes quantity into a whole number of units (bytes here):
/// plain integers, decimal suffixes (`k`, `M`, `G`, `T`, `P`, `E`) and binary
/// ones (`Ki` … `Ei`). Fractions must come out whole (`1.5Ki` is 1536).
pub fn parse_quantity(input: &str) -> Result<u64, String> {
    let bad = || format!("{input:?} is not a non-negative size like 1048576, 500k or 100Mi");
    let split = input
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(input.len());
    let (number, suffix) = input.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => return Err(bad()),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || frac.contains('.') {
        return Err(bad());
    }
    let whole: u128 = whole.parse().map_err(|_| bad())?;
    let mut value = whole.checked_mul(multiplier).ok_or_else(bad)?;
    let mut scale = multiplier * 10u128.pow(frac.len() as u32);
    for digit in frac.chars() {
        scale /= 10;
        let d = u128::from(digit.to_digit(10).ok_or_else(bad)?);
        value = value
            .checked_add(d * scale / 10u128.pow(frac.len() as u32))
            .ok_or_else(bad)?;
    }
    u64::try_from(value).map_err(|_| bad())
}

/// The regular expression the CRD schema uses for Go durations.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("168h"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in ["", "1", "h", "1d", "1h30", "-1h", "1..5h", "1 h", "1hh"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m0s");
        assert_eq!(format_duration(Duration::from_secs(61)), "1m1s");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
    }

    #[test]
    fn parses_quantities() {
        assert_eq!(parse_quantity("100Mi"), Ok(100 * 1024 * 1024));
        assert_eq!(parse_quantity("1048576"), Ok(1_048_576));
        assert_eq!(parse_quantity("5k"), Ok(5_000));
        assert_eq!(parse_quantity("1.5Ki"), Ok(1_536));
        assert_eq!(parse_quantity("0"), Ok(0));
    }

    #[test]
    fn rejects_malformed_quantities() {
        for bad in ["", "-1", "1X", "Mi", "1.2.3", "1 Mi"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
