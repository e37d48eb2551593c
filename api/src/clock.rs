//! Wall-clock times as RFC 3339 text (UTC, second precision), the form Kubernetes status
//! fields and the store's progress reports use, and as Unix milliseconds. The calendar arithmetic is jiff's.

use std::time::SystemTime;

use jiff::Timestamp;

/// `t` as `YYYY-MM-DDTHH:MM:SSZ`, fractions of a second dropped (times before 1970, or beyond
/// what jiff represents, print as the epoch).
pub fn rfc3339(t: SystemTime) -> String {
    let t = Timestamp::try_from(t)
        .ok()
        .filter(|t| *t >= Timestamp::UNIX_EPOCH)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    // `{:.0}`: no fractional digits (truncated, as the seconds of a clock are).
    format!("{t:.0}")
}

/// Now, in milliseconds since the Unix epoch (0 for a clock before it): the form records
/// crossing the store carry.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Now, as RFC 3339.
pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // a leap day
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_819_332);
        assert_eq!(rfc3339(t), "2026-11-27T22:42:12Z");
        // Fractions are dropped, not rounded up.
        let t = UNIX_EPOCH + Duration::from_millis(1_795_819_332_999);
        assert_eq!(rfc3339(t), "2026-11-27T22:42:12Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn now_is_rfc3339_utc_to_the_second() {
        let now = rfc3339_now();
        assert_eq!(now.len(), "2026-11-27T22:42:12Z".len(), "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
        let parsed: Timestamp = now.parse().unwrap();
        assert!((Timestamp::now().as_second() - parsed.as_second()).abs() < 60);
    }
}
