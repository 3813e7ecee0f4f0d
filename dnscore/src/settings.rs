//! The builder's settings by name: the one table that the sidecar's flags, environment
//! variables and TOML keys, the C configuration and the Go package read, so that a setting
//! has one name everywhere (`max-ttl`, `DNSCORE_MAX_TTL`, `max-ttl = "30s"`,
//! `"max-ttl=30s"`) and is declared once, here. The builder methods keep their own docs
//! (the reasons for the defaults); this table gives each a line of help.
//!
//! Values are text: counts (`10000`), durations (`500ms`, `30s`, `2m`, `1h`, `100us`, or bare
//! seconds `1.5`), TTLs in whole seconds (`30` or `30s`, `5m`), shares between 0 and 1
//! (`0.05`), flags (`true`/`false`, `on`/`off`, `1`/`0`) and the selection policy.

use std::time::Duration;

use crate::config::ResolverBuilder;
use crate::upstream::Selection;

/// What a setting's value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// A whole number.
    Count,
    /// A whole number, or `auto` for the default rule named in its help.
    CountOrAuto,
    /// Whole seconds, as `30`, `30s` or `5m`.
    Seconds,
    /// A duration: `500ms`, `30s`, `2m`, `1h`, or bare seconds (`1.5`).
    Duration,
    /// A share between 0 and 1.
    Ratio,
    /// `true` or `false` (also `on`/`off`, `yes`/`no`, `1`/`0`).
    Flag,
    /// `lowest-rtt`, `random`, `round-robin` or `sequential`.
    Selection,
    /// A domain name, as `cluster.local`.
    Domain,
}

impl Kind {
    /// How the value is written, for help texts: `N`, `DURATION`...
    pub fn placeholder(self) -> &'static str {
        match self {
            Self::Count => "N",
            Self::CountOrAuto => "N|auto",
            Self::Seconds => "SECONDS",
            Self::Duration => "DURATION",
            Self::Ratio => "SHARE",
            Self::Flag => "BOOL",
            Self::Selection => "POLICY",
            Self::Domain => "DOMAIN",
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Self::Count => "a whole number",
            Self::CountOrAuto => "a whole number or \"auto\"",
            Self::Seconds => "whole seconds (30, 30s, 5m)",
            Self::Duration => "a duration (500ms, 30s, 2m, 1h, or seconds)",
            Self::Ratio => "a number between 0 and 1",
            Self::Flag => "true or false",
            Self::Selection => "lowest-rtt, random, round-robin or sequential",
            Self::Domain => "a domain name (cluster.local)",
        }
    }
}

/// One setting of [`ResolverBuilder`], by the name every interface gives it.
pub struct Setting {
    /// The name: kebab-case, as a flag without its dashes and as a TOML key.
    pub name: &'static str,
    /// One line on what it does.
    pub help: &'static str,
    /// What its value is.
    pub kind: Kind,
    get: fn(&ResolverBuilder) -> String,
    set: fn(&mut ResolverBuilder, &str) -> Option<()>,
}

impl std::fmt::Debug for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setting")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Setting {
    /// The value `builder` has for this setting, written as it would be set.
    pub fn value(&self, builder: &ResolverBuilder) -> String {
        (self.get)(builder)
    }

    /// The default value, written as it would be set.
    pub fn default_value(&self) -> String {
        (self.get)(&ResolverBuilder::default())
    }

    /// The environment variable of this setting: `DNSCORE_` and the name in capitals.
    pub fn env_var(&self) -> String {
        format!(
            "DNSCORE_{}",
            self.name.replace('-', "_").to_ascii_uppercase()
        )
    }
}

/// A setting that could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// No setting has this name.
    #[error("unknown setting {0:?}")]
    Unknown(String),
    /// The value is not of the setting's kind.
    #[error("{name}: {value:?} is not {expected}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A `name=value` pair without the `=`.
    #[error("{0:?} is not name=value")]
    NotAPair(String),
}

/// Every setting, by name.
pub fn settings() -> &'static [Setting] {
    SETTINGS
}

/// The setting called `name`.
pub fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

impl ResolverBuilder {
    /// Sets the setting called `name` from its text (see [`settings`] for the names and
    /// the module docs for how values are written): `builder.set("max-ttl", "30s")`.
    /// Ranges are checked by [`build`](Self::build).
    pub fn set(mut self, name: &str, value: &str) -> Result<Self, SettingError> {
        let setting = setting(name).ok_or_else(|| SettingError::Unknown(name.to_string()))?;
        (setting.set)(&mut self, value.trim()).ok_or_else(|| SettingError::Invalid {
            name: setting.name,
            value: value.to_string(),
            expected: setting.kind.expected(),
        })?;
        Ok(self)
    }

    /// The value of the setting called `name`, written as it would be set.
    pub fn get(&self, name: &str) -> Option<String> {
        setting(name).map(|s| s.value(self))
    }

    /// Sets a setting written `name=value`, as the C configuration and the Go package pass
    /// them.
    pub fn set_pair(self, pair: &str) -> Result<Self, SettingError> {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| SettingError::NotAPair(pair.to_string()))?;
        self.set(name.trim(), value)
    }
}

/// Parses a count: digits, optionally grouped with `_` (`10_000`).
pub fn parse_count<T: std::str::FromStr>(text: &str) -> Option<T> {
    text.trim().replace('_', "").parse().ok()
}

/// Parses a duration: `500ms`, `30s`, `2m`, `1h`, or bare (possibly fractional) seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(number * scale).ok()
}

/// Writes a duration as [`parse_duration`] reads it: `500ms`, `1.5s`, `30s`, `2m`, `1h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        format!("{}us", d.as_micros())
    } else if ms.is_multiple_of(3_600_000) && ms > 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Parses a domain name: letters, digits, `-` and `_` in labels of 1 to 63 bytes, under 254
/// in all, an optional trailing dot; returned in lower case without the dot.
pub(crate) fn parse_domain(text: &str) -> Option<String> {
    let name = text.strip_suffix('.').unwrap_or(text);
    let good_label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (!name.is_empty() && name.len() < 254 && name.split('.').all(good_label))
        .then(|| name.to_ascii_lowercase())
}

/// How each kind of value is read and written.
mod value {
    use super::*;

    pub(super) mod count {
        pub(crate) fn parse<T: std::str::FromStr>(text: &str) -> Option<T> {
            super::parse_count(text)
        }
        pub(crate) fn show<T: std::fmt::Display>(v: &T) -> String {
            v.to_string()
        }
    }

    pub(super) mod count_or_auto {
        pub(crate) fn parse(text: &str) -> Option<Option<usize>> {
            if text.eq_ignore_ascii_case("auto") {
                Some(None)
            } else {
                super::count::parse(text).map(Some)
            }
        }
        pub(crate) fn show(v: &Option<usize>) -> String {
            v.map_or_else(|| "auto".to_string(), |n| n.to_string())
        }
    }

    pub(super) mod seconds {
        pub(crate) fn parse(text: &str) -> Option<u32> {
            let d = super::parse_duration(text)?;
            (d.subsec_nanos() == 0)
                .then(|| u32::try_from(d.as_secs()).ok())
                .flatten()
        }
        pub(crate) fn show(v: &u32) -> String {
            v.to_string()
        }
    }

    pub(super) mod duration {
        pub(crate) fn parse(text: &str) -> Option<std::time::Duration> {
            super::parse_duration(text)
        }
        pub(crate) fn show(v: &std::time::Duration) -> String {
            super::format_duration(*v)
        }
    }

    pub(super) mod ratio {
        pub(crate) fn parse(text: &str) -> Option<f64> {
            text.parse().ok().filter(|v: &f64| v.is_finite())
        }
        pub(crate) fn show(v: &f64) -> String {
            v.to_string()
        }
    }

    pub(super) mod flag {
        pub(crate) fn parse(text: &str) -> Option<bool> {
            match text.to_ascii_lowercase().as_str() {
                "true" | "on" | "yes" | "1" => Some(true),
                "false" | "off" | "no" | "0" => Some(false),
                _ => None,
            }
        }
        pub(crate) fn show(v: &bool) -> String {
            v.to_string()
        }
    }

    pub(super) mod domain {
        pub(crate) fn parse(text: &str) -> Option<String> {
            super::parse_domain(text)
        }
        pub(crate) fn show(v: &str) -> String {
            v.to_owned()
        }
    }

    pub(super) mod selection {
        use super::Selection;

        const NAMES: [(&str, Selection); 4] = [
            ("lowest-rtt", Selection::LowestRtt),
            ("random", Selection::Random),
            ("round-robin", Selection::RoundRobin),
            ("sequential", Selection::Sequential),
        ];

        pub(crate) fn parse(text: &str) -> Option<Selection> {
            NAMES
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(text))
                .map(|&(_, s)| s)
        }
        pub(crate) fn show(v: &Selection) -> String {
            NAMES
                .iter()
                .find(|(_, s)| s == v)
                .map_or("lowest-rtt", |&(name, _)| name)
                .to_string()
        }
    }
}

/// Declares the table: name, builder field, kind (a module of `value` and a [`Kind`]), help.
macro_rules! settings {
    ($($name:literal => $field:ident: $module:ident $kind:ident, $help:literal;)*) => {
        static SETTINGS: &[Setting] = &[$(Setting {
            name: $name,
            help: $help,
            kind: Kind::$kind,
            get: |b| value::$module::show(&b.$field),
            set: |b, text| {
                b.$field = value::$module::parse(text)?;
                Some(())
            },
        }),*];
    };
}

settings! {
    "cache-capacity" => cache_capacity: count Count, "Cached answers at most (one per 1232 bytes begun)";
    "min-ttl" => min_ttl: seconds Seconds, "Floor on a positive answer's TTL (0: the upstream's)";
    "max-ttl" => max_ttl: seconds Seconds, "Ceiling on a positive answer's TTL";
    "negative-min-ttl" => negative_min_ttl: seconds Seconds, "Floor on a negative (NXDOMAIN, NODATA) answer's TTL";
    "negative-max-ttl" => negative_max_ttl: seconds Seconds, "Ceiling on a negative (NXDOMAIN, NODATA) answer's TTL";
    "cluster-domain" => cluster_domain: domain Domain, "The Kubernetes cluster domain, whose names get cluster-min-ttl";
    "cluster-min-ttl" => cluster_min_ttl: seconds Seconds, "Floor on the TTL of answers (positive and negative) for names under the cluster domain (0: none)";
    "timeout" => timeout: duration Duration, "Deadline for a whole query, all attempts included; then SERVFAIL";
    "attempt-timeout" => attempt_timeout: duration Duration, "Ceiling on one attempt's adaptive timeout";
    "min-attempt-timeout" => min_attempt_timeout: duration Duration, "Floor on one attempt's adaptive timeout";
    "max-attempts" => max_attempts: count_or_auto CountOrAuto, "Attempts per query in all (auto: twice the upstreams, at least 6)";
    "max-failures" => max_failures: count Count, "Transport failures in a row that mark an upstream down";
    "probe-interval" => probe_interval: duration Duration, "First interval between health probes of a failing upstream";
    "max-probe-interval" => max_probe_interval: duration Duration, "Ceiling on the interval between health probes";
    "selection" => selection: selection Selection, "How attempts pick their upstream";
    "hedge-share" => hedge_share: ratio Ratio, "Share of queries that may send a hedge to a second upstream (0: none)";
    "retry-budget" => retry_budget: ratio Ratio, "Speculative sends (hedges, re-sends) per first attempt, on top of 2 per second";
    "upstream-sockets" => upstream_sockets: count Count, "Sticky UDP sockets per upstream (0: a fresh socket per attempt)";
    "case-randomization" => case_randomization: flag Flag, "Randomise the letter case of upstream queries (0x20) and require it echoed";
    "tcp-connections" => tcp_connections: count Count, "TCP connections per upstream, for truncated answers";
    "tcp-idle-timeout" => tcp_idle_timeout: duration Duration, "Idle time after which a TCP connection to an upstream is closed";
    "stale-answer-timeout" => stale_answer_timeout: duration Duration, "Wait for the upstreams before an expired answer is served stale";
    "max-stale" => max_stale: duration Duration, "How long past its TTL an answer may be served stale (0: never)";
    "failure-ttl" => failure_ttl: duration Duration, "How long a question that failed everywhere is answered SERVFAIL without asking (0: not at all)";
    "prefetch" => prefetch: flag Flag, "Refresh an entry asked for in the last tenth of its TTL, in the background";
    "minimal-responses" => minimal_responses: flag Flag, "Answer clients asking with RD without the authority NS set and glue";
    "max-rrsigs" => max_rrsigs: count Count, "RRSIGs kept per RRset of an upstream answer; the rest are dropped";
    "max-in-flight" => max_in_flight: count Count, "Distinct upstream queries in flight at most; past it, SERVFAIL at once";
    "max-waiters" => max_waiters: count Count, "Callers waiting on one upstream query at most; past it, SERVFAIL at once";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_corefiles_and_manifests_write_them() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms"), Some(ms(500)));
        assert_eq!(parse_duration("30s"), Some(ms(30_000)));
        assert_eq!(parse_duration("2m"), Some(ms(120_000)));
        assert_eq!(parse_duration("1h"), Some(ms(3_600_000)));
        assert_eq!(parse_duration("30"), Some(ms(30_000)));
        assert_eq!(parse_duration("1.5"), Some(ms(1500)));
        assert_eq!(parse_duration(" 0 "), Some(Duration::ZERO));
        for bad in [
            "", "s", "-1s", "30x", "1e3", "NaN", "inf", "30 s s", "1.2.3s",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        for d in [
            ms(500),
            ms(1500),
            ms(30_000),
            ms(120_000),
            ms(3_600_000),
            ms(0),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Some(d), "{d:?}");
        }
    }

    #[test]
    fn every_setting_is_set_by_name_and_reads_back() {
        let mut names = std::collections::HashSet::new();
        for s in settings() {
            assert!(names.insert(s.name), "{} twice", s.name);
            assert!(
                s.name.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "{} is kebab-case",
                s.name
            );
            // The default, written out and read back, is the default.
            let default = s.default_value();
            let b = ResolverBuilder::default().set(s.name, &default).unwrap();
            assert_eq!(s.value(&b), default, "{}", s.name);
        }
        let b = ResolverBuilder::default()
            .set("max-ttl", "30s")
            .unwrap()
            .set_pair("negative-max-ttl=5")
            .unwrap()
            .set("attempt-timeout", "800ms")
            .unwrap()
            .set("selection", "round-robin")
            .unwrap()
            .set("prefetch", "off")
            .unwrap()
            .set("max-attempts", "4")
            .unwrap()
            .set("cluster-domain", "Kube.Example.")
            .unwrap();
        let value = |name| setting(name).unwrap().value(&b);
        assert_eq!(value("max-ttl"), "30");
        assert_eq!(value("negative-max-ttl"), "5");
        assert_eq!(value("attempt-timeout"), "800ms");
        assert_eq!(value("selection"), "round-robin");
        assert_eq!(value("prefetch"), "false");
        assert_eq!(value("max-attempts"), "4");
        assert_eq!(value("cluster-domain"), "kube.example");
        assert_eq!(setting("cluster-min-ttl").unwrap().default_value(), "30");
        assert_eq!(setting("max-attempts").unwrap().default_value(), "auto");
        assert_eq!(setting("max-ttl").unwrap().env_var(), "DNSCORE_MAX_TTL");
    }

    #[test]
    fn bad_names_and_values_are_clear_errors() {
        let err = ResolverBuilder::default().set("max-tll", "30").unwrap_err();
        assert_eq!(err, SettingError::Unknown("max-tll".into()));
        let err = ResolverBuilder::default()
            .set("max-ttl", "1.5s")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "max-ttl: \"1.5s\" is not whole seconds (30, 30s, 5m)"
        );
        for (name, value) in [
            ("cache-capacity", "-1"),
            ("cache-capacity", "ten"),
            ("hedge-share", "NaN"),
            ("prefetch", "maybe"),
            ("selection", "fastest"),
            ("timeout", "2 weeks"),
            ("max-ttl", "99999999999"),
            ("cluster-domain", ""),
            ("cluster-domain", "."),
            ("cluster-domain", "cluster..local"),
            ("cluster-domain", "clüster.local"),
            ("cluster-domain", "a b"),
        ] {
            assert!(
                matches!(
                    ResolverBuilder::default().set(name, value),
                    Err(SettingError::Invalid { .. })
                ),
                "{name}={value}"
            );
        }
        assert!(matches!(
            ResolverBuilder::default().set_pair("max-ttl"),
            Err(SettingError::NotAPair(_))
        ));
    }
}
