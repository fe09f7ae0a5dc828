//! The agent's wall clock, read through `jiff`: Unix seconds for ages and file names, RFC 3339
//! in UTC to the second (`2023-11-14T22:13:20Z`) for the times it writes into files and statuses.

use jiff::Timestamp;

/// Seconds since the Unix epoch (0 before it).
pub fn unix_now() -> i64 {
    Timestamp::now().as_second().max(0)
}

/// Now, as RFC 3339.
pub fn now_rfc3339() -> String {
    rfc3339(Timestamp::now())
}

/// `t` as RFC 3339 in UTC, its fraction of a second cut off.
fn rfc3339(t: Timestamp) -> String {
    format!("{t:.0}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_to_the_second_with_the_fraction_cut_off() {
        let at = |s, ns| rfc3339(Timestamp::new(s, ns).unwrap());
        assert_eq!(at(946_684_800, 0), "2000-01-01T00:00:00Z");
        assert_eq!(at(1_700_000_000, 0), "2023-11-14T22:13:20Z");
        assert_eq!(at(1_700_000_000, 999_999_999), "2023-11-14T22:13:20Z");
        assert_eq!(at(0, 0), "1970-01-01T00:00:00Z");
    }
}
