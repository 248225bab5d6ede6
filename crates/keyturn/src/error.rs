//! Typed errors and the exit codes they map to.
//!
//! Every failure a user can hit gets a message that says what happened and what to do
//! next. The CLI prints errors with `{:#}`-style chains and exits with
//! [`Error::exit_code`]: 0 success, 1 AWS or runtime failure, 2 invalid input or a
//! safety guard, 3 audit findings (used by `audit` only).
//!
//! Error messages never contain secret values: the only secret type,
//! [`crate::secret::SecretKey`], cannot be formatted.

use crate::plan::Refusal;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use std::fmt;
use std::path::PathBuf;

/// Process exit codes (documented in `--help` and the README).
pub mod exit {
    pub const SUCCESS: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const GUARD: i32 = 2;
    pub const FINDINGS: i32 = 3;
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The planner refused (a safety guard). Nothing was changed.
    #[error(transparent)]
    Refused(Box<Refusal>),

    /// Bad flags, files or settings.
    #[error("{0}")]
    InvalidInput(String),

    /// The IAM user does not exist.
    #[error("IAM user '{user}' does not exist in this account (IAM answered NoSuchEntity); check the name, and --profile/--endpoint-url select the right account")]
    NoSuchUser { user: String },

    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),

    /// The new key never proved itself; it was deleted again.
    #[error("the new access key {key_id} did not verify within {timeout_secs} s ({attempts} attempts; last result: {last}); {cleanup}")]
    VerificationFailed {
        key_id: String,
        timeout_secs: u64,
        attempts: u32,
        last: String,
        cleanup: String,
    },

    /// A later step failed after the new key was created and handed out.
    #[error("{step} failed after the new key {key_id} was created and delivered: {source}")]
    AfterDelivery {
        step: String,
        key_id: String,
        #[source]
        source: Box<Error>,
    },

    /// A rotation failed before any sink held the new key, and the new key was dealt
    /// with (deleted again, or the clean-up failed): the cause keeps its class.
    #[error("{source}; {cleanup}")]
    CleanedUp { source: Box<Error>, cleanup: String },

    /// A delivery sink failed (see [`crate::sink`]).
    #[error("{}", sink_message(.sink, .kind, .stage, .message, .source.as_deref()))]
    Sink {
        sink: String,
        kind: &'static str,
        stage: crate::sink::SinkStage,
        /// Whether the destination may already hold (part of) the new key.
        written: crate::sink::Written,
        message: String,
        source: Option<Box<Error>>,
    },

    /// Delivery stopped after some sinks received the new key (see
    /// [`PartialDelivery`]).
    #[error(transparent)]
    PartialDelivery(Box<PartialDelivery>),

    /// Local I/O.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A file keyturn must parse is malformed.
    #[error("{}:{line}: {message}", .path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// Another process holds the lock for this work.
    #[error("{0}")]
    Locked(String),

    /// The journal cannot be used (corrupt, foreign, newer schema, or planted by another
    /// user): a safety guard, nothing was changed.
    #[error("{0}")]
    Journal(String),

    /// The journal could not be read or written (disk full, read-only, I/O error, the
    /// journal service unreachable). The journal itself is intact; AWS may already hold
    /// what the run did, which [`JournalIo::context`] says once the engine knows it.
    #[error(transparent)]
    JournalIo(Box<JournalIo>),

    /// Anything else at run time.
    #[error("{0}")]
    Runtime(String),
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Error::Refused(Box::new(r))
    }
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Refused(_)
            | Error::InvalidInput(_)
            | Error::NoSuchUser { .. }
            | Error::Parse { .. }
            | Error::Locked(_)
            | Error::Journal(_) => exit::GUARD,
            Error::AfterDelivery { source, .. } => source.exit_code().max(exit::FAILURE),
            // Something was created (and deleted again): never "nothing changed".
            Error::CleanedUp { .. } => exit::FAILURE,
            Error::Sink { .. } | Error::PartialDelivery(_) => exit::FAILURE,
            Error::Aws(_)
            | Error::VerificationFailed { .. }
            | Error::Io { .. }
            | Error::JournalIo(_)
            | Error::Runtime(_) => exit::FAILURE,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The error without advice (for reporting an expected failure, such as a new key
    /// IAM does not accept yet, where the advice would point at the wrong key).
    pub fn summary(&self) -> String {
        match self {
            Error::Aws(e) => e.summary(),
            other => other.to_string(),
        }
    }

    /// A journal I/O failure (see [`JournalIo`]).
    pub fn journal_io(
        location: impl Into<String>,
        op: impl Into<String>,
        kind: JournalIoKind,
        message: impl Into<String>,
    ) -> Self {
        Error::JournalIo(Box::new(JournalIo {
            location: location.into(),
            op: op.into(),
            kind,
            message: message.into(),
            context: None,
        }))
    }

    /// A journal I/O failure with what AWS now holds and what to do; other errors as
    /// they are.
    pub fn with_journal_context(self, context: impl FnOnce() -> String) -> Self {
        match self {
            Error::JournalIo(j) if j.context.is_none() => {
                Error::JournalIo(Box::new(j.with_context(context())))
            }
            other => other,
        }
    }

    /// The journal I/O failure, if this is one.
    pub fn as_journal_io(&self) -> Option<&JournalIo> {
        match self {
            Error::JournalIo(j) => Some(j),
            _ => None,
        }
    }

    /// The AWS error kind, if this is an AWS failure (also behind a sink failure).
    pub fn aws_kind(&self) -> Option<&AwsErrorKind> {
        match self {
            Error::Aws(e) => Some(&e.kind),
            Error::Sink {
                source: Some(s), ..
            } => s.aws_kind(),
            Error::CleanedUp { source, .. } | Error::AfterDelivery { source, .. } => {
                source.aws_kind()
            }
            _ => None,
        }
    }

    /// A sink failure that may have left (part of) the new key in the destination.
    pub fn may_have_delivered(&self) -> bool {
        matches!(
            self,
            Error::Sink {
                written: crate::sink::Written::Maybe,
                ..
            }
        )
    }
}

/// Delivery stopped after some sinks received the new key: both keys stay Active,
/// the old key was not retired, and `keyturn resume RUN_ID` delivers to the rest.
#[derive(Debug, thiserror::Error)]
#[error("{source}. The new key {key_id} is in {}{}; {} still hold{} the old key. Both keys stay Active and no old key was retired; fix the cause and run `keyturn resume {run_id}` to deliver to the rest and retire the old key as planned", list_or(.holding_new, "no sink yet"), .uncertain.as_ref().map(|s| format!("; {s} failed part-way and may hold it")).unwrap_or_default(), list_or(.holding_old, "no sink"), if .holding_old.len() <= 1 { "s" } else { "" })]
pub struct PartialDelivery {
    pub run_id: String,
    pub key_id: String,
    /// Sinks that hold the new key (delivery finished).
    pub holding_new: Vec<String>,
    /// The sink that failed after it may have written something.
    pub uncertain: Option<String>,
    /// Sinks not delivered yet (they hold what they held before).
    pub holding_old: Vec<String>,
    pub source: Box<Error>,
}

fn sink_message(
    sink: &str,
    kind: &str,
    stage: &crate::sink::SinkStage,
    message: &str,
    source: Option<&Error>,
) -> String {
    let mut s = format!("sink '{sink}' ({kind}) {stage} failed");
    if !message.is_empty() {
        s.push_str(": ");
        s.push_str(message);
    }
    if let Some(e) = source {
        s.push_str(": ");
        s.push_str(&e.to_string());
    }
    s
}

fn list_or(v: &[String], none: &str) -> String {
    if v.is_empty() {
        none.to_string()
    } else {
        v.join(", ")
    }
}

/// What kind of journal I/O failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalIoKind {
    /// No space left (SQLite `SQLITE_FULL`, `ENOSPC`, a file-size limit).
    Full,
    /// The file or its file system is read-only.
    ReadOnly,
    /// Any other I/O error (`SQLITE_IOERR`, cannot open).
    Io,
    /// Another process kept the journal busy past the wait.
    Busy,
    /// A networked journal (DynamoDB, KMS) could not be reached or refused the call.
    Unavailable,
}

impl JournalIoKind {
    /// What to do about it, when the engine has nothing more specific to say.
    pub fn advice(&self) -> &'static str {
        match self {
            JournalIoKind::Full => "free space on that file system (or move the journal with --journal), then run `keyturn resume`",
            JournalIoKind::ReadOnly => "make the journal writable (remount read-write, fix the file mode) or choose another with --journal; `keyturn history` can still read it",
            JournalIoKind::Io => "check the disk and the file system (dmesg), then run `keyturn resume`",
            JournalIoKind::Busy => "another keyturn process is writing the journal; retry, then run `keyturn resume`",
            JournalIoKind::Unavailable => "check access to the journal table and its KMS key (network, permissions, throttling), then run `keyturn resume`",
        }
    }
}

/// A journal I/O failure, with enough structure for callers to add what AWS now holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalIo {
    /// The journal file (or `dynamodb:TABLE`).
    pub location: String,
    /// What keyturn was doing (`recording the new key`, `opening`, ...).
    pub op: String,
    pub kind: JournalIoKind,
    /// The cause as the journal backend reported it.
    pub message: String,
    /// What AWS now holds and what to do, set by the engine (replaces the advice).
    pub context: Option<String>,
}

impl JournalIo {
    /// The same failure with what AWS now holds and what to do (shown instead of the
    /// generic advice).
    pub fn with_context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into());
        self
    }
}

impl fmt::Display for JournalIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "journal {}: {} failed: {}; ",
            self.location,
            self.op,
            self.message.trim_end_matches('.')
        )?;
        match &self.context {
            Some(c) => f.write_str(c),
            None => f.write_str(self.kind.advice()),
        }
    }
}

impl std::error::Error for JournalIo {}

/// The AWS failures users hit, each with advice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsErrorKind {
    AccessDenied,
    LimitExceeded,
    NoSuchEntity,
    Throttling,
    InvalidClientTokenId,
    SignatureDoesNotMatch,
    ExpiredToken,
    /// No credentials could be loaded for the caller.
    NoCredentials,
    /// The endpoint could not be reached, or timed out.
    Network,
    Other(String),
}

impl AwsErrorKind {
    fn from_code(code: &str) -> Self {
        match code {
            "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => {
                AwsErrorKind::AccessDenied
            }
            "LimitExceeded" | "LimitExceededException" => AwsErrorKind::LimitExceeded,
            "NoSuchEntity" | "NoSuchEntityException" => AwsErrorKind::NoSuchEntity,
            "Throttling"
            | "ThrottlingException"
            | "TooManyRequestsException"
            | "RequestLimitExceeded" => AwsErrorKind::Throttling,
            "InvalidClientTokenId" | "UnrecognizedClientException" => {
                AwsErrorKind::InvalidClientTokenId
            }
            "SignatureDoesNotMatch" => AwsErrorKind::SignatureDoesNotMatch,
            "ExpiredToken" | "ExpiredTokenException" | "RequestExpired" => {
                AwsErrorKind::ExpiredToken
            }
            other => AwsErrorKind::Other(other.to_string()),
        }
    }

    /// What the user should do about it.
    pub fn advice(&self, action: &str) -> String {
        match self {
            AwsErrorKind::AccessDenied => format!(
                "the calling principal is not allowed to perform {action}; grant it (see 'IAM permissions' in the README) or call with a --profile that has it"
            ),
            AwsErrorKind::LimitExceeded => "the user already has two access keys (the IAM limit), possibly created by someone else meanwhile; run `keyturn rotate --dry-run` to see the keys".to_string(),
            AwsErrorKind::NoSuchEntity => "the user or key no longer exists (deleted by someone else?); check with `aws iam list-access-keys`".to_string(),
            AwsErrorKind::Throttling => "IAM throttled the requests and retries ran out; wait a minute and re-run (for fleets, lower --concurrency)".to_string(),
            AwsErrorKind::InvalidClientTokenId => "the access key used to call AWS is unknown, deleted or Inactive; check --profile or AWS_ACCESS_KEY_ID".to_string(),
            AwsErrorKind::SignatureDoesNotMatch => "the secret access key does not belong to the access key id; check the credentials file or AWS_SECRET_ACCESS_KEY".to_string(),
            AwsErrorKind::ExpiredToken => "the session credentials expired; refresh them (for SSO: aws sso login) and re-run".to_string(),
            AwsErrorKind::NoCredentials => "no AWS credentials were found; set --profile, AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".to_string(),
            AwsErrorKind::Network => "the AWS endpoint could not be reached; check the network, --region and --endpoint-url".to_string(),
            AwsErrorKind::Other(_) => "AWS's own code and message are shown above; check the request (names, ARNs, region) and AWS's status".to_string(),
        }
    }
}

impl fmt::Display for AwsErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AwsErrorKind::Other(c) => f.write_str(c),
            AwsErrorKind::NoCredentials => f.write_str("NoCredentials"),
            AwsErrorKind::Network => f.write_str("NetworkError"),
            k => write!(f, "{k:?}"),
        }
    }
}

/// A failed AWS call: which action, what kind of failure, AWS's message, and advice.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{action} failed: {kind}{}. {}", .message.as_ref().map(|m| format!(": {}", m.trim_end_matches('.'))).unwrap_or_default(), .kind.advice(.action))]
pub struct AwsError {
    /// `service:Action`, e.g. `iam:CreateAccessKey`.
    pub action: &'static str,
    pub kind: AwsErrorKind,
    pub message: Option<String>,
}

impl AwsError {
    /// Whether the call may have taken effect although it failed: the request may have
    /// reached AWS but no answer came back (a lost or cut response, a timeout, a
    /// server-side failure). A clear refusal (AccessDenied, Throttling, LimitExceeded,
    /// NoSuchEntity...) was not carried out.
    pub fn is_ambiguous(&self) -> bool {
        match &self.kind {
            AwsErrorKind::Network => true,
            AwsErrorKind::Other(code) if code.starts_with("HTTP 5") => true,
            AwsErrorKind::Other(code) => matches!(
                code.as_str(),
                "DispatchFailure"
                    | "ResponseError"
                    | "ServiceFailure"
                    | "ServiceUnavailable"
                    | "InternalFailure"
                    | "InternalError"
            ),
            _ => false,
        }
    }

    /// `action failed: Kind: message`, without advice.
    pub fn summary(&self) -> String {
        match &self.message {
            Some(m) => format!(
                "{} failed: {}: {}",
                self.action,
                self.kind,
                m.trim_end_matches('.')
            ),
            None => format!("{} failed: {}", self.action, self.kind),
        }
    }

    /// Classify an SDK error. `E` is the operation's modeled error type.
    pub fn from_sdk<E>(action: &'static str, err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match err {
            SdkError::ServiceError(se) => {
                let e = se.err();
                match e.code() {
                    Some(code) => AwsError {
                        action,
                        kind: AwsErrorKind::from_code(code),
                        message: e.message().map(str::to_string),
                    },
                    // No error code could be read: show what AWS did send (the HTTP
                    // status and the start of the body), never "Unknown" alone.
                    None => {
                        let status = se.raw().status().as_u16();
                        let body = se
                            .raw()
                            .body()
                            .bytes()
                            .map(|b| {
                                String::from_utf8_lossy(b)
                                    .chars()
                                    .take(300)
                                    .collect::<String>()
                            })
                            .filter(|b| !b.trim().is_empty());
                        AwsError {
                            action,
                            kind: AwsErrorKind::Other(format!("HTTP {status}")),
                            message: e.message().map(str::to_string).or(body),
                        }
                    }
                }
            }
            SdkError::DispatchFailure(df) => {
                let msg = chain(err);
                let kind = if df.is_timeout() || df.is_io() {
                    AwsErrorKind::Network
                } else if msg.contains("no credentials") || msg.contains("credential provider") {
                    // Credentials are resolved while dispatching the first request.
                    AwsErrorKind::NoCredentials
                } else {
                    AwsErrorKind::Other("DispatchFailure".into())
                };
                AwsError {
                    action,
                    kind,
                    message: Some(msg),
                }
            }
            SdkError::TimeoutError(_) => AwsError {
                action,
                kind: AwsErrorKind::Network,
                message: Some("the request timed out".into()),
            },
            SdkError::ConstructionFailure(_) => {
                let msg = chain(err);
                let kind = if msg.contains("credentials") || msg.contains("Credentials") {
                    AwsErrorKind::NoCredentials
                } else {
                    AwsErrorKind::Other("ConstructionFailure".into())
                };
                AwsError {
                    action,
                    kind,
                    message: Some(msg),
                }
            }
            _ => AwsError {
                action,
                kind: AwsErrorKind::Other("ResponseError".into()),
                message: Some(chain(err)),
            },
        }
    }
}

/// An error and all its sources on one line (`a: b: c`), like anyhow's `{:#}`.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        let m = s.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_iam::operation::create_access_key::CreateAccessKeyError;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    /// A service error as the SDK builds it from an IAM error response.
    fn service_error(code: &str, message: &str) -> SdkError<CreateAccessKeyError, Response> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(
            CreateAccessKeyError::generic(meta),
            Response::new(StatusCode::try_from(400).unwrap(), SdkBody::empty()),
        )
    }

    #[test]
    fn sdk_service_errors_are_classified_with_advice() {
        for (code, kind, advice) in [
            (
                "LimitExceeded",
                AwsErrorKind::LimitExceeded,
                "two access keys",
            ),
            (
                "NoSuchEntity",
                AwsErrorKind::NoSuchEntity,
                "no longer exists",
            ),
            (
                "AccessDenied",
                AwsErrorKind::AccessDenied,
                "not allowed to perform iam:CreateAccessKey",
            ),
            ("Throttling", AwsErrorKind::Throttling, "retries ran out"),
            (
                "InvalidClientTokenId",
                AwsErrorKind::InvalidClientTokenId,
                "unknown, deleted or Inactive",
            ),
            (
                "SignatureDoesNotMatch",
                AwsErrorKind::SignatureDoesNotMatch,
                "does not belong",
            ),
            ("ExpiredToken", AwsErrorKind::ExpiredToken, "expired"),
        ] {
            let e = AwsError::from_sdk("iam:CreateAccessKey", &service_error(code, "AWS says no."));
            assert_eq!(e.kind, kind);
            let text = Error::Aws(e.clone()).to_string();
            assert!(
                text.starts_with(&format!(
                    "iam:CreateAccessKey failed: {code}: AWS says no. "
                )),
                "{text}"
            );
            assert!(text.contains(advice), "{code}: {text}");
            assert_eq!(Error::Aws(e).exit_code(), exit::FAILURE);
        }
        let other = AwsError::from_sdk(
            "iam:CreateAccessKey",
            &service_error("ServiceFailure", "boom"),
        );
        assert_eq!(other.kind, AwsErrorKind::Other("ServiceFailure".into()));
    }

    #[test]
    fn journal_io_errors_exit_1_and_carry_context() {
        let e = Error::journal_io(
            "/j.sqlite",
            "recording the new key",
            JournalIoKind::Full,
            "database or disk is full",
        );
        assert_eq!(e.exit_code(), exit::FAILURE);
        assert_eq!(
            e.to_string(),
            format!(
                "journal /j.sqlite: recording the new key failed: database or disk is full; {}",
                JournalIoKind::Full.advice()
            )
        );
        let io = e.as_journal_io().unwrap().clone();
        assert_eq!(io.kind, JournalIoKind::Full);
        let with = Error::JournalIo(Box::new(io.with_context(
            "IAM now holds the new key AKIA...; `keyturn resume RUN` finishes the run",
        )));
        assert!(with
            .to_string()
            .ends_with("`keyturn resume RUN` finishes the run"));
        assert_eq!(Error::Journal("corrupt".into()).exit_code(), exit::GUARD);
    }

    #[test]
    fn timeouts_are_network_errors() {
        let err: SdkError<CreateAccessKeyError, Response> =
            SdkError::timeout_error("operation timed out");
        let e = AwsError::from_sdk("iam:CreateAccessKey", &err);
        assert_eq!(e.kind, AwsErrorKind::Network);
        assert!(Error::Aws(e).to_string().contains("could not be reached"));
    }

    #[test]
    fn codes_map_to_kinds_and_exit_codes() {
        assert_eq!(
            AwsErrorKind::from_code("AccessDenied"),
            AwsErrorKind::AccessDenied
        );
        assert_eq!(
            AwsErrorKind::from_code("Throttling"),
            AwsErrorKind::Throttling
        );
        assert_eq!(
            AwsErrorKind::from_code("InvalidClientTokenId"),
            AwsErrorKind::InvalidClientTokenId
        );
        let e = Error::Aws(AwsError {
            action: "iam:CreateAccessKey",
            kind: AwsErrorKind::AccessDenied,
            message: Some("User: x is not authorized".into()),
        });
        assert_eq!(e.exit_code(), exit::FAILURE);
        let msg = e.to_string();
        assert!(msg.contains("iam:CreateAccessKey failed: AccessDenied: User: x"));
        assert!(msg.contains("not allowed to perform iam:CreateAccessKey"));
        assert_eq!(
            Error::NoSuchUser { user: "x".into() }.exit_code(),
            exit::GUARD
        );
    }
}
