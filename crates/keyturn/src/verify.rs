//! Proving a new key works before anything old is retired.
//!
//! IAM is eventually consistent: a fresh key can fail with `InvalidClientTokenId` for
//! 10-20 s on real AWS, and can succeed on one request and fail on the next. keyturn
//! calls STS `GetCallerIdentity` with the new key until it has seen
//! [`VerifyPolicy::consecutive`] successes in a row that name the expected user,
//! backing off only after a failure (a key that works at once costs milliseconds),
//! and gives up at the deadline.

use crate::aws::KeyApi;
use crate::error::Error;
use std::time::Duration;
use tokio::time::Instant;

/// Upper bound of a single `GetCallerIdentity` call.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How hard to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyPolicy {
    pub timeout: Duration,
    /// Successes in a row required. Three: one success on a fresh key is not proof
    /// that every IAM replica knows it.
    pub consecutive: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            consecutive: 3,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What verification observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub attempts: u32,
    pub elapsed: Duration,
    pub arn: String,
}

/// Why verification failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyFailure {
    /// The deadline passed; `last` is the last error seen.
    TimedOut { attempts: u32, last: String },
    /// The key authenticated as somebody else (never retried).
    WrongIdentity { arn: String },
}

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyFailure::TimedOut { last, .. } => f.write_str(last),
            VerifyFailure::WrongIdentity { arn } => {
                write!(f, "the key authenticated as {arn}, not as the rotated user")
            }
        }
    }
}

/// Who the new key must authenticate as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected<'a> {
    pub user_name: &'a str,
    /// Checked when known (self-rotation knows the caller's account).
    pub account: Option<&'a str>,
}

/// Exponential backoff bounded by a deadline: the waits between attempts of a call
/// that IAM's eventual consistency may reject for a while.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    deadline: Instant,
}

impl Backoff {
    /// Starts now; gives up `policy.timeout` from now.
    pub fn new(policy: &VerifyPolicy) -> Self {
        Self {
            next: policy.initial_backoff,
            max: policy.max_backoff,
            deadline: Instant::now() + policy.timeout,
        }
    }

    /// How long to wait before the next attempt, or `None` once the deadline passed.
    pub fn next_wait(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        let wait = self.next.min(self.deadline - now);
        self.next = (self.next * 2).min(self.max);
        Some(wait)
    }
}

/// Call `GetCallerIdentity` through `api` (already signing with the new key).
pub async fn verify_key<A: KeyApi>(
    api: &A,
    expected: &Expected<'_>,
    policy: &VerifyPolicy,
) -> Result<Verified, VerifyFailure> {
    let start = Instant::now();
    let mut backoff = Backoff::new(policy);
    let mut attempts = 0u32;
    let mut successes = 0u32;
    loop {
        attempts += 1;
        // The deadline decides whether to start an attempt; an attempt in flight gets
        // its own bound so that its real answer is what gets reported.
        let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, api.whoami()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Runtime(format!(
                "GetCallerIdentity did not answer within {ATTEMPT_TIMEOUT:?}"
            ))),
        };
        match result {
            Ok(id) => {
                let name_ok = id.user_name() == Some(expected.user_name);
                let account_ok = expected.account.is_none_or(|a| a == id.account);
                if !(name_ok && account_ok) {
                    return Err(VerifyFailure::WrongIdentity { arn: id.arn });
                }
                successes += 1;
                tracing::debug!(attempt = attempts, successes, "new key verified once");
                if successes >= policy.consecutive {
                    return Ok(Verified {
                        attempts,
                        elapsed: start.elapsed(),
                        arn: id.arn,
                    });
                }
            }
            Err(e) => {
                successes = 0;
                let Some(wait) = backoff.next_wait() else {
                    return Err(VerifyFailure::TimedOut {
                        attempts,
                        last: e.summary(),
                    });
                };
                let kind = e.aws_kind().map(|k| k.to_string());
                tracing::info!(
                    "new key not accepted yet ({}, attempt {attempts}); retrying in {} ms",
                    kind.as_deref().unwrap_or("error"),
                    wait.as_millis()
                );
                tracing::debug!("verification attempt {attempts} failed: {e}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Backoff and verification over tokio's paused clock: the waits are exact and the
/// tests take no real time.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::NewKey;
    use crate::fake::FakeApi;
    use crate::model::KeyStatus;

    fn policy(timeout_ms: u64, initial_ms: u64, max_ms: u64) -> VerifyPolicy {
        VerifyPolicy {
            timeout: Duration::from_millis(timeout_ms),
            consecutive: 3,
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
        }
    }

    fn ms(v: u64) -> Option<Duration> {
        Some(Duration::from_millis(v))
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_its_maximum() {
        let mut b = Backoff::new(&policy(60_000, 250, 1_000));
        let waits: Vec<_> = (0..5).map(|_| b.next_wait()).collect();
        assert_eq!(waits, [ms(250), ms(500), ms(1000), ms(1000), ms(1000)]);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_never_waits_past_the_deadline_then_gives_up() {
        let mut b = Backoff::new(&policy(1_000, 400, 5_000));
        assert_eq!(b.next_wait(), ms(400));
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(b.next_wait(), ms(600), "800 would overshoot the deadline");
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(b.next_wait(), None);
        assert_eq!(b.next_wait(), None);
    }

    /// A user with one new key, signed with by the returned API.
    async fn new_key_api(api: &FakeApi) -> FakeApi {
        api.add_key("ci-bot", "K1", KeyStatus::Active, 10);
        let key: NewKey = crate::aws::KeyApi::create_key(api, "ci-bot").await.unwrap();
        crate::aws::KeyApi::as_key(api, &key)
    }

    const CI_BOT: Expected<'static> = Expected {
        user_name: "ci-bot",
        account: Some(crate::fake::ACCOUNT),
    };

    #[tokio::test(start_paused = true)]
    async fn a_failure_resets_the_run_of_successes() {
        let api = FakeApi::new(&["ci-bot"]);
        let signed = new_key_api(&api).await;
        api.state.lock().unwrap().whoami_script = [true, true, false, true, true, true].into();
        let t0 = Instant::now();
        let v = verify_key(&signed, &CI_BOT, &policy(60_000, 250, 5_000))
            .await
            .unwrap();
        assert_eq!(
            v.attempts, 6,
            "two successes, a failure, then three in a row"
        );
        assert_eq!(
            v.elapsed,
            Duration::from_millis(250),
            "one wait, after the failure"
        );
        assert_eq!(t0.elapsed(), Duration::from_millis(250));
        assert_eq!(
            v.arn,
            format!("arn:aws:iam::{}:user/ci-bot", crate::fake::ACCOUNT)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_that_never_works_times_out_at_the_deadline() {
        let api = FakeApi::new(&["ci-bot"]);
        api.state.lock().unwrap().new_key_warmup = u32::MAX;
        let signed = new_key_api(&api).await;
        let t0 = Instant::now();
        let f = verify_key(&signed, &CI_BOT, &policy(2_000, 250, 5_000))
            .await
            .unwrap_err();
        // Attempts at 0, 250, 750, 1750 and 2000 ms (the last wait cut to the deadline).
        let VerifyFailure::TimedOut { attempts, last } = &f else {
            panic!("{f:?}")
        };
        assert_eq!(*attempts, 5);
        assert!(last.contains("InvalidClientTokenId"), "{last}");
        assert_eq!(t0.elapsed(), Duration::from_millis(2_000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_of_somebody_else_fails_at_once() {
        let api = FakeApi::new(&["ci-bot"]);
        let signed = new_key_api(&api).await;
        let other = Expected {
            user_name: "deploy-bot",
            account: Some(crate::fake::ACCOUNT),
        };
        let t0 = Instant::now();
        let f = verify_key(&signed, &other, &policy(60_000, 250, 5_000))
            .await
            .unwrap_err();
        assert!(matches!(f, VerifyFailure::WrongIdentity { .. }), "{f:?}");
        assert!(f.to_string().contains("user/ci-bot"), "{f}");
        assert_eq!(t0.elapsed(), Duration::ZERO, "never retried");
        let wrong_account = Expected {
            user_name: "ci-bot",
            account: Some("210987654321"),
        };
        let f = verify_key(&signed, &wrong_account, &policy(60_000, 250, 5_000))
            .await
            .unwrap_err();
        assert!(matches!(f, VerifyFailure::WrongIdentity { .. }), "{f:?}");
    }
}
