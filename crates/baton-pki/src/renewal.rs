//! When a node renews its certificate: a pure function of the certificate's
//! validity and a jitter value the caller draws from its own RNG, in the style
//! of linkerd's `refresh_in` (this module never reads the clock).
//!
//! A node renews at a random point between 50 % and 80 % of its certificate's
//! lifetime (SwarmKit's `CertLowerRotationRange`/`CertUpperRotationRange` use
//! the same band):
//! - not before 50 %: renewing sooner only makes more CSRs for the CA, and
//!   half the lifetime is left for retries if the managers are unreachable
//!   (45 days with the default 90-day expiry);
//! - not after 80 %: at least 20 % (18 days by default, 2 s for a 10 s test
//!   certificate) is left to retry before the certificate expires and the node
//!   drops out of the cluster;
//! - a random point in a 30 % wide band spreads the renewals of nodes that
//!   joined together, so the CA sees no thundering herd 45 days later.
//!
//! Times are whole Unix seconds. A certificate issued by [`crate::ClusterCa`]
//! is backdated by at most a quarter of its validity, so its renewal point
//! always lies after the moment it was issued, even for seconds-long test
//! certificates.

use std::time::Duration;

use crate::PkiError;

/// The validity window of a certificate, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CertValidity {
    /// First second the certificate is valid.
    pub not_before: i64,
    /// Last second the certificate is valid.
    pub not_after: i64,
}

impl CertValidity {
    /// [`renew_at`] for this window.
    pub fn renew_at(&self, jitter: f64) -> i64 {
        renew_at(self.not_before, self.not_after, jitter)
    }

    /// [`renew_in`] for this window.
    pub fn renew_in(&self, now: i64, jitter: f64) -> Duration {
        renew_in(now, self.not_before, self.not_after, jitter)
    }
}

/// Reads the validity window of a DER certificate.
pub fn cert_validity(cert_der: &[u8]) -> Result<CertValidity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    Ok(CertValidity {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// Earliest renewal point, as a fraction of the lifetime.
pub const RENEW_BAND_START: f64 = 0.5;
/// Latest renewal point, as a fraction of the lifetime.
pub const RENEW_BAND_END: f64 = 0.8;

/// The Unix second at which to renew a certificate valid from `not_before` to
/// `not_after`: `not_before + lifetime × (0.5 + 0.3 × jitter)`, rounded down.
///
/// `jitter` is a uniform draw from `[0, 1]` made by the caller; values outside
/// are clamped, NaN counts as 0. The result is always within
/// `[not_before, not_after]` and never decreases as `jitter` grows. A
/// certificate whose `not_after` is not after its `not_before` renews at
/// `not_after`, that is at once.
pub fn renew_at(not_before: i64, not_after: i64, jitter: f64) -> i64 {
    if not_after <= not_before {
        return not_after;
    }
    // i128: the difference of two i64 values always fits.
    let lifetime = i128::from(not_after) - i128::from(not_before);
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let fraction = RENEW_BAND_START + (RENEW_BAND_END - RENEW_BAND_START) * jitter;
    // Every step is monotone in `jitter`; `as` saturates, and the clamp keeps
    // float rounding on huge lifetimes from leaving the validity window.
    let offset = ((lifetime as f64) * fraction).floor() as i128;
    let offset = offset.clamp(0, lifetime);
    i64::try_from(i128::from(not_before) + offset).unwrap_or(not_after)
}

/// How long from `now` until the renewal point [`renew_at`] gives: zero if it
/// has passed, which includes every expired certificate. The caller should
/// still space out retries after a failed renewal.
pub fn renew_in(now: i64, not_before: i64, not_after: i64, jitter: f64) -> Duration {
    let at = renew_at(not_before, not_after, jitter);
    let wait = i128::from(at) - i128::from(now);
    u64::try_from(wait).map_or(Duration::ZERO, Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    #[test]
    fn ninety_day_certificate_renews_between_day_45_and_day_72() {
        assert_eq!(renew_at(NOW, NOW + 90 * DAY, 0.0), NOW + 45 * DAY);
        assert_eq!(renew_at(NOW, NOW + 90 * DAY, 1.0), NOW + 72 * DAY);
        assert_eq!(renew_at(NOW, NOW + 90 * DAY, 0.5), NOW + 58 * DAY + 43_200);
    }

    #[test]
    fn ten_second_test_certificate_renews_between_5_and_8_seconds() {
        assert_eq!(renew_at(NOW, NOW + 10, 0.0), NOW + 5);
        assert_eq!(renew_at(NOW, NOW + 10, 0.5), NOW + 6);
        assert_eq!(renew_at(NOW, NOW + 10, 1.0), NOW + 8);
    }

    #[test]
    fn tiny_and_empty_lifetimes_stay_inside_the_window() {
        assert_eq!(renew_at(NOW, NOW + 1, 1.0), NOW);
        assert_eq!(renew_at(NOW, NOW + 2, 0.0), NOW + 1);
        assert_eq!(renew_at(NOW, NOW, 0.7), NOW);
        assert_eq!(renew_at(NOW, NOW - 5, 0.7), NOW - 5);
    }

    #[test]
    fn jitter_outside_the_unit_interval_is_clamped() {
        assert_eq!(renew_at(0, 100, -3.0), 50);
        assert_eq!(renew_at(0, 100, 7.0), 80);
        assert_eq!(renew_at(0, 100, f64::NAN), 50);
        assert_eq!(renew_at(0, 100, f64::INFINITY), 80);
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        assert_eq!(renew_at(i64::MIN, i64::MAX, 0.0), 0);
        assert_eq!(renew_at(i64::MAX - 10, i64::MAX, 1.0), i64::MAX - 2);
        assert_eq!(
            renew_in(i64::MIN, i64::MAX - 1, i64::MAX, 0.0),
            Duration::from_secs(u64::MAX - 1)
        );
    }

    #[test]
    fn renew_in_counts_down_and_is_zero_once_due_or_expired() {
        let not_after = NOW + 90 * DAY;
        assert_eq!(
            renew_in(NOW, NOW, not_after, 0.0),
            Duration::from_secs(45 * 86_400)
        );
        assert_eq!(
            renew_in(NOW + 45 * DAY, NOW, not_after, 0.0),
            Duration::ZERO
        );
        assert_eq!(
            renew_in(NOW + 60 * DAY, NOW, not_after, 0.0),
            Duration::ZERO
        );
        assert_eq!(renew_in(not_after + 1, NOW, not_after, 1.0), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn renewal_point_is_within_the_validity_window(
            not_before in any::<i64>(),
            not_after in any::<i64>(),
            jitter in any::<f64>(),
        ) {
            let at = renew_at(not_before, not_after, jitter);
            if not_before <= not_after {
                prop_assert!(not_before <= at && at <= not_after, "{at}");
            } else {
                prop_assert_eq!(at, not_after);
            }
        }

        #[test]
        fn renewal_point_never_decreases_with_jitter(
            not_before in any::<i64>(),
            lifetime in 0i64..=(400 * DAY),
            a in 0.0f64..=1.0,
            b in 0.0f64..=1.0,
        ) {
            let not_after = not_before.saturating_add(lifetime);
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(renew_at(not_before, not_after, low) <= renew_at(not_before, not_after, high));
        }

        #[test]
        fn renewal_point_is_in_the_band(
            not_before in -(1i64 << 40)..(1i64 << 40),
            lifetime in 10i64..=(400 * DAY),
            jitter in 0.0f64..=1.0,
        ) {
            let offset = renew_at(not_before, not_before + lifetime, jitter) - not_before;
            prop_assert!(offset >= lifetime / 2 && offset <= lifetime * 4 / 5, "{offset} of {lifetime}");
        }
    }
}
