//! Limits written as text, as configuration files and operators write them: `"100/minute"`,
//! `"10/s burst 20"`, `"5/30s"`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::limit::{Limit, LimitError};

/// What the text form looks like, for error messages.
const FORM: &str = "`<count>/<period>` with an optional ` burst <capacity>`, e.g. \"100/minute\", \
                    \"10/s burst 20\", \"5/30s\"";

/// Why a text was not a limit: which part, and what was expected.
///
/// ```
/// use tollgate::{Limit, ParseLimitError};
/// let e = "10/fortnight".parse::<Limit>().unwrap_err();
/// assert!(matches!(e, ParseLimitError::Unit { .. }));
/// assert!(e.to_string().contains("fortnight"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseLimitError {
    /// The text is not of the form `<count>/<period>[ burst <capacity>]`.
    Syntax {
        /// The text given.
        input: String,
    },
    /// A number that is not a whole number, or does not fit in 64 bits.
    Number {
        /// Which number: `count`, `period` or `burst`.
        part: &'static str,
        /// Its text.
        text: String,
    },
    /// A period unit this parser does not know.
    Unit {
        /// The unit given.
        unit: String,
    },
    /// The numbers parse, but make no valid limit (a zero, a burst below the rate, ...).
    Invalid(LimitError),
}

impl fmt::Display for ParseLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseLimitError::Syntax { input } => {
                write!(f, "invalid limit {input:?}: expected {FORM}")
            }
            ParseLimitError::Number { part, text } => {
                write!(
                    f,
                    "invalid limit: the {part} {text:?} is not a whole number that fits"
                )
            }
            ParseLimitError::Unit { unit } => write!(
                f,
                "invalid limit: unknown period unit {unit:?} (use ns, us, ms, s, m, h or d, or \
                 their names: second, minute, hour, day)"
            ),
            ParseLimitError::Invalid(e) => write!(f, "invalid limit: {e}"),
        }
    }
}

impl std::error::Error for ParseLimitError {}

impl From<LimitError> for ParseLimitError {
    fn from(e: LimitError) -> Self {
        ParseLimitError::Invalid(e)
    }
}

/// `<count>/<period>[ burst <capacity>]`: `count` tokens every `period`, spread evenly (greedy
/// refill: one token every `period / count`), with a burst of `count`, or `capacity` when
/// given. The period is an optional whole number and a unit: `ns`, `us`, `ms`, `s`, `m`, `h`,
/// `d`, or their names (`second`, `minute`, ..., plural too; `sec`, `min`, `hr` as well).
/// Case and spaces around the parts do not matter. Nothing is rounded: `"100/minute"` is
/// exactly [`Limit::per_minute(100)`](Limit::per_minute).
///
/// ```
/// use std::time::Duration;
/// use tollgate::Limit;
/// assert_eq!("100/minute".parse::<Limit>()?, Limit::per_minute(100)?);
/// assert_eq!("10/s burst 20".parse::<Limit>()?, Limit::per_second(10)?.burst(20)?);
/// assert_eq!("5 / 30s".parse::<Limit>()?, Limit::greedy(5, 5, Duration::from_secs(30))?);
/// assert!("0/s".parse::<Limit>().is_err()); // names the problem: a zero capacity
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl FromStr for Limit {
    type Err = ParseLimitError;

    fn from_str(input: &str) -> Result<Limit, ParseLimitError> {
        let syntax = || ParseLimitError::Syntax {
            input: input.to_owned(),
        };
        let text = input.to_ascii_lowercase();
        // `burst` is a word of its own, followed by exactly one word.
        let words: Vec<&str> = text.split_whitespace().collect();
        let (rate, burst) = match words.iter().position(|w| *w == "burst") {
            Some(at) => match &words[at + 1..] {
                [capacity] => (words[..at].concat(), Some(*capacity)),
                _ => return Err(syntax()),
            },
            None => (words.concat(), None),
        };
        let (count, period) = rate.split_once('/').ok_or_else(syntax)?;
        if count.is_empty() {
            return Err(syntax());
        }
        let count = number("count", count)?;
        let period = period_of(period).ok_or_else(syntax)??;
        let limit = Limit::greedy(count, count, period)?;
        match burst {
            None => Ok(limit),
            Some(capacity) => Ok(limit.burst(number("burst", capacity)?)?),
        }
    }
}

impl Limit {
    /// Parses the text form (see [`FromStr` for `Limit`](#impl-FromStr-for-Limit)).
    ///
    /// ```
    /// let limit = tollgate::Limit::parse("600/hour burst 50")?;
    /// assert_eq!(limit.capacity(), 50);
    /// # Ok::<(), tollgate::ParseLimitError>(())
    /// ```
    ///
    /// # Errors
    /// [`ParseLimitError`], which says which part is wrong.
    pub fn parse(text: &str) -> Result<Limit, ParseLimitError> {
        text.parse()
    }
}

fn number(part: &'static str, text: &str) -> Result<u64, ParseLimitError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseLimitError::Number {
            part,
            text: text.to_owned(),
        });
    }
    text.parse().map_err(|_| ParseLimitError::Number {
        part,
        text: text.to_owned(),
    })
}

/// `[<k>]<unit>`: `None` when there is no unit at all (a syntax error).
fn period_of(text: &str) -> Option<Result<Duration, ParseLimitError>> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (k, unit) = text.split_at(digits);
    let unit = unit.trim();
    if unit.is_empty() {
        return None;
    }
    if !unit.starts_with(|c: char| c.is_alphabetic()) {
        // `0.5s`, `-1s`: the period's number is not a whole one.
        return Some(Err(ParseLimitError::Number {
            part: "period",
            text: text.to_owned(),
        }));
    }
    let k = if k.is_empty() {
        1
    } else {
        match number("period", k) {
            Ok(k) => k,
            Err(e) => return Some(Err(e)),
        }
    };
    let unit_ns: u64 = match unit {
        "ns" | "nanosecond" | "nanoseconds" => 1,
        "us" | "µs" | "microsecond" | "microseconds" => 1_000,
        "ms" | "millisecond" | "milliseconds" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000_000_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000_000_000,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000_000_000,
        "d" | "day" | "days" => 86_400_000_000_000,
        other => {
            return Some(Err(ParseLimitError::Unit {
                unit: other.to_owned(),
            }))
        }
    };
    Some(
        k.checked_mul(unit_ns)
            .map(Duration::from_nanos)
            .ok_or_else(|| ParseLimitError::Number {
                part: "period",
                text: text.to_owned(),
            }),
    )
}

/// A duration as text, `<k><unit>` (`"1s"`, `"250ms"`, `"2m"`), as the period of the text form.
#[cfg_attr(not(feature = "serde"), allow(dead_code))]
pub(crate) fn duration_text(text: &str) -> Result<Duration, ParseLimitError> {
    let trimmed = text.trim().to_ascii_lowercase();
    period_of(&trimmed).unwrap_or_else(|| {
        Err(ParseLimitError::Syntax {
            input: text.to_owned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_their_errors() {
        let secs = Duration::from_secs;
        assert_eq!(
            Limit::parse("100/minute"),
            Limit::per_minute(100).map_err(Into::into)
        );
        assert_eq!(
            Limit::parse(" 1 /Hour "),
            Limit::per_hour(1).map_err(Into::into)
        );
        assert_eq!(
            Limit::parse("5/30s"),
            Limit::greedy(5, 5, secs(30)).map_err(Into::into)
        );
        assert_eq!(
            Limit::parse("10/s BURST 20"),
            Limit::per_second(10).unwrap().burst(20).map_err(Into::into)
        );
        assert_eq!(
            Limit::parse("2/500ms"),
            Limit::greedy(2, 2, Duration::from_millis(500)).map_err(Into::into)
        );
        assert_eq!(
            Limit::parse("1/2d").unwrap().refill_interval(),
            secs(172_800)
        );
        for bad in [
            "",
            "abc",
            "10",
            "10/",
            "/s",
            "10/s burst",
            "10 per second",
            "10/s burst 20 burst 30",
            "10/s burst 20 30",
        ] {
            assert!(
                matches!(Limit::parse(bad), Err(ParseLimitError::Syntax { .. })),
                "{bad:?}"
            );
        }
        // `burst` glued to other words is no keyword: the unit is then unknown.
        assert!(matches!(
            Limit::parse("10/sburst20"),
            Err(ParseLimitError::Unit { .. })
        ));
        for bad in ["1/0.5s", "10/-1s"] {
            assert!(
                matches!(
                    Limit::parse(bad),
                    Err(ParseLimitError::Number { part: "period", .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Limit::parse("10/fortnight"),
            Err(ParseLimitError::Unit { unit }) if unit == "fortnight"
        ));
        assert!(matches!(
            Limit::parse("99999999999999999999/s"),
            Err(ParseLimitError::Number { part: "count", .. })
        ));
        assert!(matches!(
            Limit::parse("-1/s"),
            Err(ParseLimitError::Number { part: "count", .. })
        ));
        assert!(matches!(
            Limit::parse("10/s burst x"),
            Err(ParseLimitError::Number { part: "burst", .. })
        ));
        assert!(matches!(
            Limit::parse("10/99999999999h"),
            Err(ParseLimitError::Number { part: "period", .. })
        ));
        assert_eq!(
            Limit::parse("0/s"),
            Err(ParseLimitError::Invalid(LimitError::ZeroCapacity))
        );
        let e = Limit::parse("abc").unwrap_err().to_string();
        assert!(e.contains("\"abc\"") && e.contains("100/minute"), "{e}");
    }
}
