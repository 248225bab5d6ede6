//! `keyturn-lambda`: the AWS Lambda function of keyturn (`provided.al2023`, handler
//! `bootstrap`). A shim over `lambda_runtime`: every decision is in
//! `keyturn::lambda`, which tells the three event shapes apart (a scheduled fleet
//! run, a Secrets Manager rotation step, `{"Rotate": ...}`) and handles them.
//!
//! An error is returned to the Runtime API as the invocation's error, which is what
//! makes Secrets Manager retry a rotation step. Error texts never carry a secret.

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The invocation's deadline as an `Instant` (the `Context` gives epoch milliseconds).
fn deadline_of(ctx: &lambda_runtime::Context) -> tokio::time::Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_millis(ctx.deadline.saturating_sub(now_ms))
}

/// `errorType`: `keyturn.Refused` for a safety guard or invalid input (nothing was
/// changed), `keyturn.Failed` for an AWS or runtime failure.
fn diagnostic(e: &keyturn::Error) -> Diagnostic {
    let kind = if e.exit_code() == keyturn::error::exit::GUARD {
        "keyturn.Refused"
    } else {
        "keyturn.Failed"
    };
    Diagnostic {
        error_type: kind.into(),
        error_message: e.to_string(),
    }
}

async fn handler(ev: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let inv = keyturn::lambda::Invocation {
        deadline: deadline_of(&ev.context),
        function_arn: ev.context.invoked_function_arn.clone(),
    };
    match keyturn::lambda::handle(ev.payload, &inv).await {
        Ok(v) => Ok(v),
        Err(e) => {
            tracing::error!("{e}");
            Err(diagnostic(&e))
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .without_time()
        .with_writer(std::io::stderr)
        .init();
    lambda_runtime::run(service_fn(handler)).await
}
