//! Value types with their own text syntax: durations, byte sizes, listen
//! addresses, and scalars that configs write either quoted or bare.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A length of time written as `"500ms"`, `"30s"`, `"5m"`, `"1h30m"`, `"7d"`,
/// `"2w"`, `"1y"`, `"0"`, or a bare integer meaning seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Duration(pub time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Duration(time::Duration::from_millis(millis))
    }

    pub fn get(self) -> time::Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

/// Parses a duration string; the error says which forms are valid.
///
/// The arithmetic is exact to the nanosecond: `"1234567ms"` is exactly
/// 1234567 ms, where floating point would come out a few nanoseconds
/// short and lose a millisecond on the way back to text.
pub fn parse_duration(text: &str) -> Result<time::Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; expected e.g. \"30s\", \"5m\", \"1h30m\" or \"0\"".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(time::Duration::from_secs(secs));
    }

    let out_of_range = || format!("duration {text:?} is out of range");
    let mut total_nanos: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return Err(invalid_duration(text));
        }
        let number = &rest[..number_len];
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SECOND,
            "m" => 60 * NANOS_PER_SECOND,
            "h" => 3600 * NANOS_PER_SECOND,
            "d" => 86_400 * NANOS_PER_SECOND,
            "w" => 604_800 * NANOS_PER_SECOND,
            "y" => 31_536_000 * NANOS_PER_SECOND,
            _ => return Err(invalid_duration(text)),
        };
        rest = &rest[unit_len..];
        let part = decimal_times(number, nanos_per_unit).map_err(|overflow| {
            if overflow {
                out_of_range()
            } else {
                invalid_duration(text)
            }
        })?;
        total_nanos = total_nanos.checked_add(part).ok_or_else(out_of_range)?;
    }
    let secs = u64::try_from(total_nanos / NANOS_PER_SECOND).map_err(|_| out_of_range())?;
    // The remainder is below one second, so it fits.
    let nanos = (total_nanos % NANOS_PER_SECOND) as u32;
    Ok(time::Duration::new(secs, nanos))
}

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Multiplies the decimal `number` (digits with at most one `.`, such as
/// `12`, `1.5`, `.25` or `3.`) by `factor`, dropping what falls below 1.
/// The error is `true` on overflow and `false` for a malformed number.
fn decimal_times(number: &str, factor: u128) -> Result<u128, bool> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(false);
    }
    let whole: u128 = match whole {
        "" => 0,
        digits => digits.parse().map_err(|_| true)?,
    };
    let mut product = whole.checked_mul(factor).ok_or(true)?;
    // 18 digits resolve a thirtieth of a nanosecond of a year; later ones
    // cannot change the result, and more would overflow the product.
    let fraction = &fraction[..fraction.len().min(18)];
    if !fraction.is_empty() {
        let numerator: u128 = fraction.parse().map_err(|_| false)?;
        let denominator = 10u128.pow(fraction.len() as u32);
        product = product
            .checked_add(numerator * factor / denominator)
            .ok_or(true)?;
    }
    Ok(product)
}

fn invalid_duration(text: &str) -> String {
    format!(
        "invalid duration {text:?}; expected a number with a unit (ms, s, m, h, d, w, y), \
         e.g. \"500ms\", \"30s\", \"1h30m\", or a bare number of seconds"
    )
}

/// Formats a duration the way configs write it (`"1h30m"`, `"250ms"`).
pub fn format_duration(duration: time::Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0".into();
    }
    if millis % 1000 != 0 {
        return format!("{millis}ms");
    }
    let mut secs = duration.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\", \"1h30m\" or a number of seconds")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration(time::Duration::from_secs(v)))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(|secs| Duration(time::Duration::from_secs(secs)))
                    .map_err(|_| E::custom(format!("negative duration {v}")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).map(Duration).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(DurationVisitor)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_duration(self.0))
    }
}

/// A number of bytes written as `"512M"`, `"1G"`, `"1.5G"`, `"64K"`, or an
/// integer. Units are binary (K = 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// Parses a size string; the error says which forms are valid.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let number_len = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let invalid = || {
        format!(
            "invalid size {text:?}; expected a number of bytes or a number with a unit \
             (K, M, G, T), e.g. \"512M\" or \"1.5G\""
        )
    };
    if number_len == 0 {
        return Err(invalid());
    }
    let number: f64 = trimmed[..number_len].parse().map_err(|_| invalid())?;
    let unit = trimmed[number_len..].trim();
    let multiplier: f64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "K" | "KB" | "KIB" => 1024.0,
        "M" | "MB" | "MIB" => 1024.0 * 1024.0,
        "G" | "GB" | "GIB" => 1024.0 * 1024.0 * 1024.0,
        "T" | "TB" | "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(invalid()),
    };
    let bytes = number * multiplier;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("size {text:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"512M\", \"1G\" or a number of bytes")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("negative size {v}")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

/// The address navigator listens on: a port (`3000`, `":3000"`) for every
/// interface, or `"host:port"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Listen {
    /// `None` means every interface, IPv6 and IPv4 (Fly's private network is
    /// IPv6, its proxy reaches the machine over IPv4).
    pub host: Option<IpAddr>,
    pub port: u16,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            host: None,
            port: 3000,
        }
    }
}

impl Listen {
    /// Candidate socket addresses in order of preference.
    pub fn socket_addrs(&self) -> Vec<SocketAddr> {
        match self.host {
            Some(ip) => vec![SocketAddr::new(ip, self.port)],
            None => vec![
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), self.port),
                SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), self.port),
            ],
        }
    }
}

/// Parses `3000`, `":3000"`, `"127.0.0.1:3000"`, `"[::1]:3000"`, `"localhost:3000"`.
pub fn parse_listen(text: &str) -> Result<Listen, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "invalid listen address {text:?}; expected a port (3000), \":port\" or \"host:port\" \
             with an IP address or localhost"
        )
    };
    let (host, port) = match text.rsplit_once(':') {
        None => ("", text),
        Some((host, port)) => (host, port),
    };
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = match host {
        "" | "*" => None,
        "localhost" => Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        other => Some(other.parse::<IpAddr>().map_err(|_| invalid())?),
    };
    Ok(Listen { host, port })
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            None => write!(f, ":{}", self.port),
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
        }
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListenVisitor;

        impl Visitor<'_> for ListenVisitor {
            type Value = Listen;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number, \":port\" or \"host:port\"")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Listen, E> {
                u16::try_from(v)
                    .map(|port| Listen { host: None, port })
                    .map_err(|_| E::custom(format!("port {v} is out of range (0-65535)")))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Listen, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("port {v} is out of range (0-65535)")))
                    .and_then(|v| self.visit_u64(v))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Listen, E> {
                parse_listen(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(ListenVisitor)
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.host {
            None => serializer.serialize_u16(self.port),
            Some(_) => serializer.serialize_str(&self.to_string()),
        }
    }
}

/// A scalar that configs write quoted or bare (`RAILS_MAX_THREADS: 3`,
/// `enabled: 'true'`): stored as its text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;

        impl Visitor<'_> for TextVisitor {
            type Value = ScalarText;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_owned()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<ScalarText, E> {
                Ok(ScalarText(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }

        deserializer.deserialize_any(TextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_form() {
        let cases = [
            ("500ms", 500),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h30m", 5_400_000),
            ("7d", 604_800_000),
            ("2w", 1_209_600_000),
            ("1y", 31_536_000_000),
            ("0", 0),
            ("45", 45_000),
            ("1.5s", 1_500),
        ];
        for (text, millis) in cases {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parsed.as_millis(), millis, "{text}");
        }
    }

    #[test]
    fn durations_exact_to_the_nanosecond() {
        assert_eq!(
            parse_duration("1234567ms").unwrap(),
            time::Duration::from_millis(1_234_567)
        );
        // Found by fuzzing: floating point made this 1 ms short, so the
        // formatted text no longer matched the value.
        let parsed = parse_duration("1234567m560d2h07ms").unwrap();
        let expected = time::Duration::from_secs(1_234_567 * 60 + 560 * 86_400 + 2 * 3600)
            + time::Duration::from_millis(7);
        assert_eq!(parsed, expected);
        assert_eq!(parse_duration(&format_duration(parsed)).unwrap(), expected);

        assert_eq!(
            parse_duration(".25s").unwrap(),
            time::Duration::from_millis(250)
        );
        assert_eq!(parse_duration("3.s").unwrap(), time::Duration::from_secs(3));
        assert_eq!(
            parse_duration("1.5us").unwrap(),
            time::Duration::from_nanos(1_500)
        );
        assert_eq!(
            parse_duration("0.333333333333333333333333s").unwrap(),
            time::Duration::from_nanos(333_333_333)
        );
    }

    #[test]
    fn durations_out_of_range() {
        for text in [
            "584942417356y",
            "99999999999999999999999999999999999999999s",
        ] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains("out of range"), "{text}: {error}");
        }
    }

    #[test]
    fn durations_rejected() {
        for text in ["", "5x", "m", "1h-5m", "ten seconds", "-3s", ".s", "1.2.3s"] {
            assert!(parse_duration(text).is_err(), "{text:?} should be invalid");
        }
    }

    #[test]
    fn duration_format_round_trips() {
        for text in ["0", "250ms", "30s", "5m", "1h30m", "1d"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(format_duration(parsed), text);
        }
    }

    #[test]
    fn sizes_in_every_form() {
        let cases = [
            ("512M", 512 << 20),
            ("1G", 1 << 30),
            ("1.5G", 3 << 29),
            ("2048M", 2 << 30),
            ("64K", 64 << 10),
            ("100", 100),
            ("768MB", 768 << 20),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text).unwrap(), bytes, "{text}");
        }
        for text in ["", "M", "12Q", "1..5G"] {
            assert!(parse_size(text).is_err(), "{text:?} should be invalid");
        }
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen("9999").unwrap(),
            Listen {
                host: None,
                port: 9999
            }
        );
        assert_eq!(
            parse_listen(":9999").unwrap(),
            Listen {
                host: None,
                port: 9999
            }
        );
        let local = parse_listen("127.0.0.1:8080").unwrap();
        assert_eq!(local.to_string(), "127.0.0.1:8080");
        assert_eq!(parse_listen("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert!(parse_listen("example.com:80").is_err());
        assert!(parse_listen("99999").is_err());
    }
}
