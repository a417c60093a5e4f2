//! Output formatting shared by the commands: kubectl-style tables, relative
//! times, and JSON/YAML of the commands' documented structures.

use jiff::Timestamp;
use serde::Serialize;

use super::Error;

/// How a command prints its answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Columns left-aligned, three spaces apart, as kubectl prints them.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == last {
                    (*c).to_owned()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        padded.join("   ")
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out.push('\n');
    out
}

/// A duration as kubectl's AGE column shows it: `45s`, `7m30s`, `42m`,
/// `3h12m`, `30h`, `3d4h`, `12d`.
pub fn human(seconds: u64) -> String {
    let (m, h, d) = (seconds / 60, seconds / 3600, seconds / 86400);
    let with = |big: u64, unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    match seconds {
        s if s < 120 => format!("{s}s"),
        _ if m < 10 => with(m, "m", seconds % 60, "s"),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => with(h, "h", m % 60, "m"),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => with(d, "d", h % 24, "h"),
        _ => format!("{d}d"),
    }
}

/// How far `then` is from `now`: `42m` ahead, `5m ago` behind, `-` if unknown.
pub fn relative(now: Timestamp, then: Option<Timestamp>) -> String {
    let Some(then) = then else {
        return "-".into();
    };
    let seconds = then.as_second() - now.as_second();
    if seconds >= 0 {
        human(seconds.unsigned_abs())
    } else {
        format!("{} ago", human(seconds.unsigned_abs()))
    }
}

/// JSON or YAML of a command's structure; None for the table format.
pub fn render<T: Serialize>(format: Format, value: &T) -> Result<Option<String>, Error> {
    match format {
        Format::Table => Ok(None),
        Format::Json => serde_json::to_string_pretty(value)
            .map(|s| Some(s + "\n"))
            .map_err(|e| Error::Output(e.to_string())),
        Format::Yaml => serde_norway::to_string(value)
            .map(Some)
            .map_err(|e| Error::Output(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_leave_the_last_unpadded() {
        let rows = vec![
            vec!["a".to_owned(), "long value".to_owned(), "x".to_owned()],
            vec!["bbbb".to_owned(), "-".to_owned(), "y".to_owned()],
        ];
        assert_eq!(
            table(&["NAME", "V", "LAST"], &rows),
            "NAME   V            LAST\na      long value   x\nbbbb   -            y\n"
        );
    }

    #[test]
    fn durations_read_like_kubectl_ages() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (120, "2m"),
            (450, "7m30s"),
            (42 * 60, "42m"),
            (179 * 60, "179m"),
            (3 * 3600 + 12 * 60, "3h12m"),
            (5 * 3600, "5h"),
            (30 * 3600, "30h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (12 * 86400, "12d"),
        ];
        for (secs, want) in cases {
            assert_eq!(human(secs), want, "{secs}s");
        }
    }

    #[test]
    fn relative_times_say_ahead_behind_or_unknown() {
        let now = Timestamp::from_second(1_800_000_000).expect("a time");
        let later = Timestamp::from_second(1_800_000_000 + 42 * 60).expect("a time");
        let earlier = Timestamp::from_second(1_800_000_000 - 300).expect("a time");
        assert_eq!(relative(now, Some(later)), "42m");
        assert_eq!(relative(now, Some(earlier)), "5m ago");
        assert_eq!(relative(now, None), "-");
    }

    #[test]
    fn structures_render_as_json_or_yaml_and_tables_print_themselves() {
        let v = serde_json::json!({"a": 1});
        assert_eq!(render(Format::Table, &v).ok().flatten(), None);
        assert_eq!(
            render(Format::Json, &v).ok().flatten().as_deref(),
            Some("{\n  \"a\": 1\n}\n")
        );
        assert_eq!(
            render(Format::Yaml, &v).ok().flatten().as_deref(),
            Some("a: 1\n")
        );
    }
}
