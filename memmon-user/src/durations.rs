//! The longest span any option or API request may ask for.
//!
//! Every duration memmon is given ends up added to an `Instant` or a `SystemTime` (a capture
//! window's end, a cooldown's end, a cleanup's cutoff), and `Duration::from_secs_f64` itself
//! panics on values past `u64::MAX` seconds. Bounding the input once, where it is parsed, keeps
//! every later conversion and addition safe; a hundred years is beyond any real setting.

use std::time::Duration;

pub const MAX_SECONDS: u64 = 100 * 365 * 86_400;
/// How the bound reads in an error message.
pub const MAX_DESCRIBED: &str = "100 years";

/// `value` units of `unit_seconds` seconds each, if it is a finite number ≥ 0 and the span is at
/// most `MAX_SECONDS`.
pub fn of(value: f64, unit_seconds: f64) -> Option<Duration> {
    let seconds = value * unit_seconds;
    (seconds.is_finite() && seconds >= 0.0 && seconds <= MAX_SECONDS as f64).then(|| Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_past_the_bound_or_not_numbers_are_refused() {
        assert_eq!(of(1.5, 60.0), Some(Duration::from_secs(90)));
        assert_eq!(of(0.0, 86_400.0), Some(Duration::ZERO));
        assert_eq!(of(100.0 * 365.0, 86_400.0), Some(Duration::from_secs(MAX_SECONDS)));
        for (value, unit) in [(1e300, 60.0), (36_501.0, 86_400.0), (-1.0, 1.0), (f64::NAN, 1.0), (f64::INFINITY, 1.0)] {
            assert_eq!(of(value, unit), None, "{value} × {unit} s");
        }
    }
}
