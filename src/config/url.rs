//! Backend URLs: splitting `scheme://location?options`, durations, and hiding secrets.

use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

use crate::error::{Error, Result};
use crate::manager::MIN_TTL;

/// Query options whose values are secrets; [`redact_url`] masks them.
const SECRET_OPTIONS: &[&str] = &["password", "token"];

/// What a secret is replaced with in Debug output, logs and errors.
pub const REDACTED: &str = "<redacted>";

/// A backend URL split into scheme, location and query options.
///
/// Its Debug output masks passwords and tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// `file`, `memory`, `etcd`, `consul`, ...
    pub scheme: String,
    /// Everything between `://` and `?`: a path, or `[user:password@]host:port[,host:port]`.
    pub location: String,
    /// The query options, percent-decoded, in order.
    pub query: Vec<(String, String)>,
}

impl std::fmt::Debug for BackendUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let query: Vec<(&str, &str)> = self
            .query
            .iter()
            .map(|(k, v)| {
                let shown = if SECRET_OPTIONS.contains(&k.as_str()) {
                    REDACTED
                } else {
                    v.as_str()
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("BackendUrl")
            .field("scheme", &self.scheme)
            .field("location", &redact_userinfo(&self.location))
            .field("query", &query)
            .finish()
    }
}

impl BackendUrl {
    /// Splits `scheme://location?key=value&...`; the scheme is lower-cased.
    pub fn parse(url: &str) -> Result<Self> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            Error::invalid_input(format!(
                "backend URL {:?} has no scheme; expected one of {}",
                redact_url(url),
                super::KNOWN_SCHEMES
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        Ok(BackendUrl {
            scheme: scheme.to_ascii_lowercase(),
            location: location.to_owned(),
            query: url::form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        })
    }

    /// `user` and `password` from `user:password@` before the hosts, percent-decoded, and the
    /// hosts after it.
    pub fn userinfo(&self) -> (Option<(String, String)>, &str) {
        match self.location.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (
                    Some((percent_decode(user), percent_decode(password))),
                    hosts,
                )
            }
            None => (None, self.location.as_str()),
        }
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The URL with its password (`user:password@`) and `password` / `token` options masked, for
/// logs and error messages. It errs on the side of hiding: everything between the user name and
/// the last `@` is masked, whatever characters a password holds.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let rest = redact_userinfo(rest);
    let (head, query) = match rest.split_once('?') {
        Some((head, query)) => (head, query),
        None => return format!("{scheme}{rest}"),
    };
    let options: Vec<String> = query
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(key, _)| key);
            if SECRET_OPTIONS.contains(&percent_decode(key).as_str()) {
                format!("{key}={REDACTED}")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    format!("{scheme}{head}?{}", options.join("&"))
}

/// `user:password@rest` with the password masked; text without both is returned as it is.
fn redact_userinfo(location: &str) -> String {
    match location.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{hosts}"),
            None => location.to_owned(),
        },
        None => location.to_owned(),
    }
}

/// Parses `10`, `2.5`, `10s`, `500ms` or `2m` into a duration (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = || Error::invalid_input(format!("{text:?} is not a duration (e.g. 10, 2.5s, 500ms)"));
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: f64 = number.trim().parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// A duration that may serve as a liveness TTL: at least [`MIN_TTL`].
pub(crate) fn check_ttl(ttl: Duration) -> Result<Duration> {
    if ttl < MIN_TTL {
        return Err(Error::invalid_input(format!(
            "ttl {ttl:?} is below the minimum of {MIN_TTL:?}"
        )));
    }
    Ok(ttl)
}

/// Serde support for durations written as `10`, `2.5`, `"10s"` or `"500ms"` (see
/// [`parse_duration`]); use with `#[serde(deserialize_with = ...)]`.
pub mod duration {
    use super::*;

    /// Deserializes a duration from a number of seconds or a string with a unit.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    /// Deserializes an optional duration (see [`deserialize`]).
    pub fn deserialize_option<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        deserializer.deserialize_any(DurationVisitor).map(Some)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration: seconds as a number, or a string such as \"10s\" or \"500ms\"")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration(text).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(seconds))
        }

        fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Duration, E> {
            u64::try_from(seconds)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("{seconds} is not a duration")))
        }

        fn visit_f64<E: de::Error>(self, seconds: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(seconds)
                .map_err(|_| E::custom(format!("{seconds} is not a duration")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        for bad in ["", "abc", "5h", "-1", "1e400"] {
            assert_eq!(
                parse_duration(bad).unwrap_err().kind(),
                ErrorKind::InvalidInput,
                "{bad}"
            );
        }
        assert_eq!(
            check_ttl(Duration::from_millis(500)).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }

    #[test]
    fn urls_split_into_scheme_location_and_options() {
        let url = BackendUrl::parse("FILE://./dir/routes.json?ttl=5s&poll=200ms").unwrap();
        assert_eq!(url.scheme, "file");
        assert_eq!(url.location, "./dir/routes.json");
        assert_eq!(
            url.query,
            vec![
                ("ttl".to_owned(), "5s".to_owned()),
                ("poll".to_owned(), "200ms".to_owned())
            ]
        );
        let encoded = BackendUrl::parse("memory://?prefix=a%2Fb%2F").unwrap();
        assert_eq!(
            encoded.query,
            vec![("prefix".to_owned(), "a/b/".to_owned())]
        );
        let etcd = BackendUrl::parse("etcd://ad%40min:p%3Ass@h1:2379,h2:2379").unwrap();
        let (credentials, hosts) = etcd.userinfo();
        assert_eq!(credentials, Some(("ad@min".to_owned(), "p:ss".to_owned())));
        assert_eq!(hosts, "h1:2379,h2:2379");
    }

    #[test]
    fn secrets_are_masked_in_urls_and_debug() {
        let url = "etcd://root:hunter2@127.0.0.1:2379?password=hunter3&ttl=5s&token=abc";
        let redacted = redact_url(url);
        assert_eq!(
            redacted,
            "etcd://root:<redacted>@127.0.0.1:2379?password=<redacted>&ttl=5s&token=<redacted>"
        );
        let debug = format!("{:?}", BackendUrl::parse(url).unwrap());
        for secret in ["hunter2", "hunter3", "abc"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        let encoded_key = redact_url("etcd://h:2379?pass%77ord=hunter4");
        assert!(!encoded_key.contains("hunter4"), "{encoded_key}");
        let unencoded = redact_url("etcd://root:pa?ss/wo#rd@127.0.0.1:2379");
        assert_eq!(unencoded, "etcd://root:<redacted>@127.0.0.1:2379");
        assert!(debug.contains("127.0.0.1:2379") && debug.contains("5s"));
    }
}
