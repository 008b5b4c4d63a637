//! Byte sizes on the command line ("100KiB", "1GiB", "4096") and in reports.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("size {0:?}: expected a number with an optional unit (B, KiB, MiB, GiB, KB, MB, GB)")]
    Malformed(String),
    #[error("size {0:?} does not fit in 64 bits")]
    Overflow(String),
}

const UNITS: [(&str, u64); 11] = [
    ("gib", 1 << 30),
    ("mib", 1 << 20),
    ("kib", 1 << 10),
    ("gb", 1_000_000_000),
    ("mb", 1_000_000),
    ("kb", 1_000),
    ("g", 1 << 30),
    ("m", 1 << 20),
    ("k", 1 << 10),
    ("b", 1),
    ("", 1),
];

/// Parses "100KiB", "1 GiB", "4k" (binary), "2MB" (decimal) or "4096".
pub fn parse_bytes(text: &str) -> Result<u64, SizeError> {
    let lower = text.trim().to_ascii_lowercase();
    for (suffix, scale) in UNITS {
        if let Some(number) = lower.strip_suffix(suffix) {
            let number = number.trim();
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let value: u64 = number
                .parse()
                .map_err(|_| SizeError::Overflow(text.into()))?;
            return value
                .checked_mul(scale)
                .ok_or_else(|| SizeError::Overflow(text.into()));
        }
    }
    Err(SizeError::Malformed(text.into()))
}

/// clap value parser for byte sizes.
pub fn bytes_arg(text: &str) -> Result<u64, String> {
    parse_bytes(text).map_err(|e| e.to_string())
}

/// "1 GiB", "100 KiB", "1.5 MiB", "512 B": binary units, short.
pub fn format_bytes(bytes: u64) -> String {
    const NAMES: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, scale) in NAMES {
        if bytes >= scale {
            let value = bytes as f64 / scale as f64;
            return if bytes % scale == 0 {
                format!("{} {name}", bytes / scale)
            } else {
                format!("{value:.1} {name}")
            };
        }
    }
    format!("{bytes} B")
}

/// A figure with 3 significant digits and no exponent: 12345 -> "12,345",
/// 1.2345 -> "1.23", 0.01234 -> "0.0123".
pub fn format_value(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        return group_thousands(value.round() as i64);
    }
    let decimals = if magnitude >= 100.0 {
        0
    } else if magnitude >= 10.0 {
        1
    } else if magnitude >= 1.0 {
        2
    } else if magnitude == 0.0 {
        0
    } else {
        // Enough decimals for 3 significant digits.
        (2 - magnitude.log10().floor() as i32).clamp(0, 9) as usize
    };
    format!("{value:.decimals$}")
}

fn group_thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_and_plain_sizes() {
        assert_eq!(parse_bytes("100KiB"), Ok(100 << 10));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("4k"), Ok(4096));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("7b"), Ok(7));
        assert!(matches!(
            parse_bytes("1.5GiB"),
            Err(SizeError::Malformed(_))
        ));
        assert!(matches!(parse_bytes("GiB"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_bytes(""), Err(SizeError::Malformed(_))));
        assert!(matches!(
            parse_bytes("99999999999GiB"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn formats_sizes_and_values() {
        assert_eq!(format_bytes(1 << 30), "1 GiB");
        assert_eq!(format_bytes(100 << 10), "100 KiB");
        assert_eq!(format_bytes(3 << 19), "1.5 MiB");
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_value(12345.4), "12,345");
        assert_eq!(format_value(-1234567.0), "-1,234,567");
        assert_eq!(format_value(123.4), "123");
        assert_eq!(format_value(12.34), "12.3");
        assert_eq!(format_value(1.2345), "1.23");
        assert_eq!(format_value(0.012345), "0.0123");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(f64::NAN), "n/a");
    }
}
