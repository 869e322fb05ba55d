//! `serde` for [`Limit`] (feature `serde`): read from the text form (`"100/minute"`, `"10/s
//! burst 20"`) or a structured form, written in the structured form.

use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limit::{Limit, Refill};
use crate::parse::duration_text;

/// Written as `{capacity, refill, interval, greedy}`, the interval as text (`"1s"`, `"250ms"`,
/// `"1500us"`, `"7ns"`: the largest unit that keeps it exact), so a round trip is exact.
///
/// ```
/// use tollgate::Limit;
/// let limit = Limit::per_minute(100)?;
/// let text = serde_json::to_string(&limit).unwrap();
/// assert_eq!(text, r#"{"capacity":100,"refill":100,"interval":"1m","greedy":true}"#);
/// assert_eq!(serde_json::from_str::<Limit>(&text).unwrap(), limit);
/// # Ok::<(), tollgate::LimitError>(())
/// ```
impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Limit", 4)?;
        s.serialize_field("capacity", &self.capacity())?;
        s.serialize_field("refill", &self.refill_amount())?;
        s.serialize_field("interval", &interval_text(self.refill_interval()))?;
        s.serialize_field("greedy", &(self.mode() == Refill::Greedy))?;
        s.end()
    }
}

/// Read from the text form (see [`Limit::parse`]) or the structured form
/// `{capacity, refill, interval, greedy}`, where `interval` is seconds (a number) or text
/// (`"1s"`, `"500ms"`, `"2m"`) and `greedy` defaults to false (whole refills at the end of each
/// interval, unlike the text form, which is greedy). Errors name the field or the part of the
/// text that is wrong; a field given twice is an error. For configuration formats that
/// describe themselves (JSON, TOML, YAML): binary formats that cannot (bincode, postcard) are
/// not supported.
///
/// ```
/// use tollgate::Limit;
/// let a: Limit = serde_json::from_str(r#""10/s burst 20""#).unwrap();
/// let b: Limit = serde_json::from_str(r#"{"capacity": 20, "refill": 10, "interval": 1, "greedy": true}"#).unwrap();
/// assert_eq!(a, b);
/// let e = serde_json::from_str::<Limit>(r#"{"capacity": 0, "refill": 1, "interval": "1s"}"#);
/// assert!(e.unwrap_err().to_string().contains("capacity"));
/// ```
impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Limit, D::Error> {
        deserializer.deserialize_any(LimitVisitor)
    }
}

/// The largest unit that writes `d` exactly.
fn interval_text(d: Duration) -> String {
    let ns = d.as_nanos();
    for (unit, size) in [
        ("d", 86_400_000_000_000u128),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if ns.is_multiple_of(size) {
            return format!("{}{unit}", ns / size);
        }
    }
    format!("{ns}ns")
}

struct LimitVisitor;

impl<'de> Visitor<'de> for LimitVisitor {
    type Value = Limit;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a limit: text such as \"100/minute\" or \"10/s burst 20\", or \
             {capacity, refill, interval, greedy}",
        )
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Limit, E> {
        text.parse().map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Limit, A::Error> {
        let (mut capacity, mut refill, mut interval, mut greedy) = (None, None, None, None);
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                "capacity" => set(&mut capacity, "capacity", map.next_value::<u64>()?)?,
                "refill" => set(&mut refill, "refill", map.next_value::<u64>()?)?,
                "interval" => set(&mut interval, "interval", map.next_value::<Interval>()?.0)?,
                "greedy" => set(&mut greedy, "greedy", map.next_value::<bool>()?)?,
                other => {
                    return Err(de::Error::unknown_field(
                        other,
                        &["capacity", "refill", "interval", "greedy"],
                    ))
                }
            }
        }
        let capacity = capacity.ok_or_else(|| de::Error::missing_field("capacity"))?;
        let refill = refill.ok_or_else(|| de::Error::missing_field("refill"))?;
        let interval = interval.ok_or_else(|| de::Error::missing_field("interval"))?;
        let limit = if greedy.unwrap_or(false) {
            Limit::greedy(capacity, refill, interval)
        } else {
            Limit::new(capacity, refill, interval)
        };
        limit.map_err(de::Error::custom)
    }
}

/// Sets a field read once; a second value is an error.
fn set<T, E: de::Error>(slot: &mut Option<T>, field: &'static str, value: T) -> Result<(), E> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(E::duplicate_field(field)),
    }
}

/// An interval: seconds (an integer or a float) or text (`"1s"`, `"250ms"`).
struct Interval(Duration);

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Interval, D::Error> {
        deserializer.deserialize_any(IntervalVisitor)
    }
}

struct IntervalVisitor;

impl Visitor<'_> for IntervalVisitor {
    type Value = Interval;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an interval: seconds, or text such as \"1s\", \"250ms\", \"2m\"")
    }

    fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Interval, E> {
        Ok(Interval(Duration::from_secs(secs)))
    }

    fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Interval, E> {
        u64::try_from(secs)
            .map(|s| Interval(Duration::from_secs(s)))
            .map_err(|_| E::custom(format_args!("interval: {secs} s is negative")))
    }

    fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Interval, E> {
        Duration::try_from_secs_f64(secs)
            .map(Interval)
            .map_err(|_| E::custom(format_args!("interval: {secs} is not a number of seconds")))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Interval, E> {
        duration_text(text).map(Interval).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_exact_and_errors_name_the_problem() {
        for limit in [
            Limit::per_second(10).unwrap(),
            Limit::per_hour(6).unwrap().burst(3).unwrap(),
            Limit::new(10, 2, Duration::from_millis(1500)).unwrap(),
            Limit::greedy(1_000, 3, Duration::from_nanos(3_000_001)).unwrap(),
            Limit::new(5, 5, Duration::from_secs(2 * 86_400)).unwrap(),
        ] {
            let text = serde_json::to_string(&limit).unwrap();
            assert_eq!(
                serde_json::from_str::<Limit>(&text).unwrap(),
                limit,
                "{text}"
            );
        }
        let parse = |json: &str| serde_json::from_str::<Limit>(json).map_err(|e| e.to_string());
        assert_eq!(
            parse(r#""100/minute""#),
            Ok(Limit::per_minute(100).unwrap())
        );
        assert_eq!(
            parse(r#"{"capacity": 10, "refill": 2, "interval": "500ms"}"#),
            Ok(Limit::new(10, 2, Duration::from_millis(500)).unwrap())
        );
        assert_eq!(
            parse(r#"{"capacity": 10, "refill": 2, "interval": 0.5}"#),
            Ok(Limit::new(10, 2, Duration::from_millis(500)).unwrap())
        );
        for (json, names) in [
            (r#""10/fortnight""#, "fortnight"),
            (r#""ten/s""#, "count"),
            (r#"{"capacity": 0, "refill": 1, "interval": 1}"#, "capacity"),
            (r#"{"capacity": 5, "refill": 6, "interval": 1}"#, "refill"),
            (
                r#"{"capacity": 5, "refill": 1, "interval": -1}"#,
                "negative",
            ),
            (
                r#"{"capacity": 5, "refill": 1, "interval": "1 fortnight"}"#,
                "fortnight",
            ),
            (r#"{"capacity": 5, "refill": 1}"#, "interval"),
            (
                r#"{"capacity": 5, "refill": 1, "interval": 1, "burst": 3}"#,
                "burst",
            ),
            (r#"42"#, "a limit"),
            (
                r#"{"capacity": 5, "capacity": 6, "refill": 1, "interval": 1}"#,
                "duplicate",
            ),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.contains(names), "{json}: {e}");
        }
    }
}
