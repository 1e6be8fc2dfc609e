//! When to renew a certificate: the one schedule agents and managers share.
//!
//! The loop sleeps until the renewal point of the current certificate
//! (`baton_pki::renew_in`: a random point between 50 % and 80 % of its
//! lifetime, the jitter drawn once per certificate so that recomputing the
//! wait does not move it), then calls the caller's renewal. A failed attempt
//! is retried after [`retry_delay`]: 1 s, 2 s, 4 s ... capped at 60 s, so a
//! manager that is down for a minute costs a node about six attempts, and one
//! that comes back is noticed within a minute. The renewal band leaves at
//! least 20 % of the lifetime (18 days by default) for these retries.
//!
//! A renewal can also be asked for at once through the loop's `now` handle
//! (a root CA rotation: the node's certificate comes from the root being
//! retired); a failed one is then retried on the same back-off.
//!
//! The wall clock is read only here ([`unix_now`]); the timing itself is
//! `baton_pki`'s pure function of `(now, not_before, not_after, jitter)`.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_pki::CertValidity;
use rustls::pki_types::CertificateDer;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// First retry delay after a failed renewal.
pub const RENEW_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay after failed renewals.
pub const RENEW_RETRY_MAX: Duration = Duration::from_secs(60);
/// The longest single sleep: the renewal point is recomputed at least this
/// often, so a wall clock that jumps (suspend, NTP step) is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// How long to wait after the `failures`-th failed attempt in a row:
/// [`RENEW_RETRY_MIN`] doubled per failure, capped at [`RENEW_RETRY_MAX`].
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RENEW_RETRY_MIN
        .saturating_mul(1u32 << doublings)
        .min(RENEW_RETRY_MAX)
}

/// Seconds since the Unix epoch, from the wall clock.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Renews on schedule until `shutdown` is cancelled. `current` returns the
/// certificate in use now; `renew_once` makes, stores and swaps in a new one
/// and returns its validity. Never returns an error and never panics:
/// failures are logged and retried.
pub async fn run_renewals<F, Fut, E>(
    current: impl Fn() -> Option<CertificateDer<'static>>,
    mut renew_once: F,
    now: Arc<Notify>,
    shutdown: CancellationToken,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<CertValidity, E>>,
    E: Display,
{
    let validity = || current().and_then(|leaf| baton_pki::cert_validity(&leaf).ok());
    // Drawn once per certificate: recomputing the wait must not move the point.
    let mut jitter: f64 = rand::random();
    let mut failures: u32 = 0;
    loop {
        let wait = if failures > 0 {
            retry_delay(failures)
        } else {
            match validity() {
                Some(v) => v.renew_in(unix_now(), jitter),
                None => {
                    tracing::error!("cannot read the current certificate");
                    RENEW_RETRY_MAX
                }
            }
        };
        if !wait.is_zero() {
            let asked = tokio::select! {
                () = shutdown.cancelled() => return,
                () = now.notified() => true,
                () = tokio::time::sleep(wait.min(MAX_SLEEP)) => false,
            };
            if failures == 0 && !asked {
                // Look at the clock again: a capped sleep ends early, and the
                // wall clock may have jumped while sleeping.
                continue;
            }
        }
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return,
            res = renew_once() => res,
        };
        match attempt {
            Ok(new) => {
                failures = 0;
                jitter = rand::random();
                tracing::info!(
                    not_after = new.not_after,
                    renew_at = new.renew_at(jitter),
                    "certificate renewed"
                );
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if validity().is_some_and(|v| v.not_after <= unix_now()) {
                    tracing::error!(
                        error = %e,
                        "certificate expired and renewal failed: this node must join again"
                    );
                } else {
                    tracing::warn!(
                        error = %e,
                        failures,
                        retry_in_secs = retry_delay(failures).as_secs(),
                        "certificate renewal failed"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_one_second_to_a_minute() {
        let delays: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(retry_delay(0), RENEW_RETRY_MIN);
        assert_eq!(retry_delay(u32::MAX), RENEW_RETRY_MAX);
    }
}
