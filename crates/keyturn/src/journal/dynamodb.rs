//! The DynamoDB journal backend, for Lambda and multi-runner setups: the same
//! [`Journal`] contract as SQLite, on one table with a string partition key `PK` and a
//! string sort key `SK` (on-demand capacity). The item layout is in `docs/journal.md`:
//!
//! | Item | PK | SK |
//! | --- | --- | --- |
//! | lease of (account, user) | `LOCK#<account>#<user>` | `LOCK` |
//! | run | `USER#<user>` | `RUN#<run id>` |
//! | step event | `USER#<user>` | `RUN#<run id>#STEP#<seq, 8 digits>` |
//! | run pointer (run id -> user) | `RUN#<run id>` | `RUN` |
//!
//! Every write is conditional: a lease changes only at the version it was read at
//! (`Version`), a run and its steps are written in one transaction with a check that
//! this journal holds the user's lease (which it renews) and with the run's next step
//! number (`NextSeq`), so a holder that was taken over, or two writers racing, fail
//! with [`Error::Locked`], never with a corrupt run. Secrets are sealed with a KMS data
//! key ([`Sealer::Kms`]) and never stored in clear. `ExpiresAt` (epoch seconds) is set
//! only when a run ends, for DynamoDB's TTL to clean finished runs up.
//!
//! An AWS failure talking to the table (network, throttling after the SDK's retries,
//! access denied) is a [`Error::JournalIo`] of kind `Unavailable` (exit 1).

use super::lease::{self, Clock, Holder, Lease};
use super::seal::{DataKey, Sealed, Sealer};
use super::{
    rfc3339, Journal, JournalOptions, RunMeta, RunRecord, RunStatus, StepPhase, StepRecord,
};
use crate::aws::NewKey;
use crate::error::{AwsError, Error, JournalIoKind, Result};
use crate::plan::Step;
use crate::secret::SecretKey;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, KeySchemaElement,
    KeyType, Put, ScalarAttributeType, TimeToLiveSpecification, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use time::OffsetDateTime;

type Item = HashMap<String, AttributeValue>;

/// Default retention of finished runs (`ExpiresAt` = finish + this).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(365 * 24 * 3600);

const TTL_ATTRIBUTE: &str = "ExpiresAt";

pub struct DynamoJournal {
    client: Client,
    table: String,
    sealer: Sealer,
    me: Holder,
    lease: Duration,
    clock: Clock,
    retention: Duration,
    /// Data keys fetched by `reserve_secret`, by run id.
    reserved: Mutex<HashMap<String, DataKey>>,
}

impl std::fmt::Debug for DynamoJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DynamoJournal({})", self.table)
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s(item: &Item, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

fn get_n(item: &Item, k: &str) -> Option<i64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|x| x.parse().ok())
}

fn get_b(item: &Item, k: &str) -> Option<Vec<u8>> {
    item.get(k)
        .and_then(|v| v.as_b().ok())
        .map(|b| b.as_ref().to_vec())
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("PK".to_string(), s(pk)), ("SK".to_string(), s(sk))])
}

fn lease_key(account: &str, user: &str) -> Item {
    key(format!("LOCK#{account}#{user}"), "LOCK")
}

fn run_key(user: &str, run_id: &str) -> Item {
    key(format!("USER#{user}"), &format!("RUN#{run_id}"))
}

fn step_key(user: &str, run_id: &str, seq: i64) -> Item {
    key(
        format!("USER#{user}"),
        &format!("RUN#{run_id}#STEP#{seq:08}"),
    )
}

fn pointer_key(run_id: &str) -> Item {
    key(format!("RUN#{run_id}"), "RUN")
}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn parse_time(v: &str) -> OffsetDateTime {
    OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// `#Name` placeholders of the expressions, mapped to attribute names (every attribute
/// is named this way, so no reserved word can clash).
fn names_in(exprs: &[&str]) -> Option<HashMap<String, String>> {
    let mut m = HashMap::new();
    for e in exprs {
        let b = e.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'#' {
                let len = b[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric())
                    .count();
                m.insert(
                    e[i..i + 1 + len].to_string(),
                    e[i + 1..i + 1 + len].to_string(),
                );
                i += 1 + len;
            } else {
                i += 1;
            }
        }
    }
    (!m.is_empty()).then_some(m)
}

fn vals(v: &[(&str, AttributeValue)]) -> Option<Item> {
    (!v.is_empty()).then(|| v.iter().map(|(k, a)| (k.to_string(), a.clone())).collect())
}

fn built<T>(
    r: std::result::Result<T, aws_smithy_types::error::operation::BuildError>,
) -> Result<T> {
    r.map_err(|e| Error::Runtime(format!("building a DynamoDB request: {e}")))
}

/// What a failed DynamoDB call means for the journal.
enum Failure {
    /// A condition did not hold: another writer got there first.
    Conflict,
    Other(Error),
}

/// The writes of one transaction.
#[derive(Default)]
struct Tx(Vec<TransactWriteItem>);

impl Tx {
    fn put(
        &mut self,
        table: &str,
        item: Item,
        cond: &str,
        v: &[(&str, AttributeValue)],
    ) -> Result<()> {
        let p = Put::builder()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression(cond)
            .set_expression_attribute_names(names_in(&[cond]))
            .set_expression_attribute_values(vals(v));
        self.0
            .push(TransactWriteItem::builder().put(built(p.build())?).build());
        Ok(())
    }

    fn update(
        &mut self,
        table: &str,
        key: Item,
        expr: &str,
        cond: &str,
        v: &[(&str, AttributeValue)],
    ) -> Result<()> {
        let u = Update::builder()
            .table_name(table)
            .set_key(Some(key))
            .update_expression(expr)
            .condition_expression(cond)
            .set_expression_attribute_names(names_in(&[expr, cond]))
            .set_expression_attribute_values(vals(v));
        self.0.push(
            TransactWriteItem::builder()
                .update(built(u.build())?)
                .build(),
        );
        Ok(())
    }

    fn check(
        &mut self,
        table: &str,
        key: Item,
        cond: &str,
        v: &[(&str, AttributeValue)],
    ) -> Result<()> {
        let c = ConditionCheck::builder()
            .table_name(table)
            .set_key(Some(key))
            .condition_expression(cond)
            .set_expression_attribute_names(names_in(&[cond]))
            .set_expression_attribute_values(vals(v));
        self.0.push(
            TransactWriteItem::builder()
                .condition_check(built(c.build())?)
                .build(),
        );
        Ok(())
    }

    fn delete(
        &mut self,
        table: &str,
        key: Item,
        cond: &str,
        v: &[(&str, AttributeValue)],
    ) -> Result<()> {
        let d = Delete::builder()
            .table_name(table)
            .set_key(Some(key))
            .condition_expression(cond)
            .set_expression_attribute_names(names_in(&[cond]))
            .set_expression_attribute_values(vals(v));
        self.0.push(
            TransactWriteItem::builder()
                .delete(built(d.build())?)
                .build(),
        );
        Ok(())
    }
}

/// A step event to write.
struct Event<'a> {
    index: Option<usize>,
    step: &'a str,
    key_id: Option<&'a str>,
    phase: StepPhase,
    detail: &'a str,
}

/// A run item and its steps, as read.
struct RunItem {
    status: RunStatus,
    next_seq: i64,
}

impl DynamoJournal {
    /// Open the journal on `table` (which must exist with the PK/SK string keys).
    /// Secrets are sealed with `sealer`, which must be a KMS sealer.
    pub async fn open(
        client: Client,
        table: &str,
        sealer: Sealer,
        options: JournalOptions,
        retention: Duration,
    ) -> Result<Self> {
        if !matches!(sealer, Sealer::Kms { .. }) {
            return Err(Error::InvalidInput(
                "the DynamoDB journal seals secrets with KMS: set [journal] kms_key (or --journal-kms-key)".into(),
            ));
        }
        let j = Self {
            client,
            table: table.to_string(),
            sealer,
            me: Holder::current(),
            lease: options.lease,
            clock: options.clock,
            retention,
            reserved: Mutex::new(HashMap::new()),
        };
        let out = j
            .client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| match e.as_service_error().and_then(|s| s.code()) {
                Some("ResourceNotFoundException") => Error::Journal(format!(
                    "the DynamoDB journal table {table} does not exist; create it (string partition key PK, string sort key SK, on-demand; see docs/journal.md) or set [journal] table"
                )),
                _ => j.unavailable("dynamodb:DescribeTable", "opening", &e),
            })?;
        let schema: Vec<(String, String)> = out
            .table()
            .map(|t| {
                t.key_schema()
                    .iter()
                    .map(|k| {
                        (
                            k.attribute_name().to_string(),
                            k.key_type().as_str().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let want = [
            ("PK".to_string(), "HASH".to_string()),
            ("SK".to_string(), "RANGE".to_string()),
        ];
        if schema != want {
            return Err(Error::Journal(format!(
                "DynamoDB table {table} has key schema {schema:?}; a keyturn journal table has the string partition key PK and the string sort key SK (see docs/journal.md)"
            )));
        }
        Ok(j)
    }

    /// Create a journal table (PK/SK strings, on-demand, TTL on `ExpiresAt`) and wait
    /// until it is active. For tests and first-time setup; deploy templates do the same.
    pub async fn create_table(client: &Client, table: &str) -> Result<()> {
        let attr = |name: &str| {
            built(
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build(),
            )
        };
        let key_el = |name: &str, t: KeyType| {
            built(
                KeySchemaElement::builder()
                    .attribute_name(name)
                    .key_type(t)
                    .build(),
            )
        };
        let io = |action: &'static str, e: &dyn std::fmt::Display| {
            Error::journal_io(
                format!("dynamodb:{table}"),
                "creating the journal table",
                JournalIoKind::Unavailable,
                format!("{action} failed: {e}"),
            )
        };
        client
            .create_table()
            .table_name(table)
            .attribute_definitions(attr("PK")?)
            .attribute_definitions(attr("SK")?)
            .key_schema(key_el("PK", KeyType::Hash)?)
            .key_schema(key_el("SK", KeyType::Range)?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .map_err(|e| io("dynamodb:CreateTable", &crate::error::chain(&e)))?;
        for _ in 0..120 {
            let out = client
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(|e| io("dynamodb:DescribeTable", &crate::error::chain(&e)))?;
            if out
                .table()
                .and_then(|t| t.table_status())
                .is_some_and(|s| s.as_str() == "ACTIVE")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(built(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(TTL_ATTRIBUTE)
                    .build(),
            )?)
            .send()
            .await
            .map_err(|e| io("dynamodb:UpdateTimeToLive", &crate::error::chain(&e)))?;
        Ok(())
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Who this journal writes as.
    pub fn holder(&self) -> &Holder {
        &self.me
    }

    fn location(&self) -> String {
        format!("dynamodb:{}", self.table)
    }

    fn unavailable<E>(&self, action: &'static str, op: &str, e: &SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        Error::journal_io(
            self.location(),
            op,
            JournalIoKind::Unavailable,
            AwsError::from_sdk(action, e).summary(),
        )
    }

    fn failure<E>(&self, action: &'static str, op: &str, e: &SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match e.as_service_error().and_then(|s| s.code()) {
            Some("ConditionalCheckFailedException" | "TransactionConflictException") => {
                Failure::Conflict
            }
            _ => Failure::Other(self.unavailable(action, op, e)),
        }
    }

    async fn transact(&self, op: &str, tx: Tx) -> std::result::Result<(), Failure> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(tx.0))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let conflict = match e.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(tc)) => {
                        tc.cancellation_reasons().iter().any(|r| {
                            matches!(
                                r.code(),
                                Some("ConditionalCheckFailed" | "TransactionConflict")
                            )
                        })
                    }
                    Some(other) => other.code() == Some("TransactionConflictException"),
                    None => false,
                };
                if conflict {
                    Err(Failure::Conflict)
                } else {
                    Err(Failure::Other(self.unavailable(
                        "dynamodb:TransactWriteItems",
                        op,
                        &e,
                    )))
                }
            }
        }
    }

    async fn get(&self, op: &str, key: Item) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.unavailable("dynamodb:GetItem", op, &e))?;
        Ok(out.item().cloned())
    }

    async fn read_lease(&self, account: &str, user: &str) -> Result<Option<Lease>> {
        let item = self
            .get("reading the lease", lease_key(account, user))
            .await?;
        Ok(item.map(|i| Lease {
            account: account.to_string(),
            user: user.to_string(),
            run_id: get_s(&i, "RunId").unwrap_or_default(),
            holder: Holder::parse(&get_s(&i, "Holder").unwrap_or_default()),
            since: parse_time(&get_s(&i, "Since").unwrap_or_default()),
            expires: from_millis(get_n(&i, "LeaseUntil").unwrap_or(0)),
            version: get_n(&i, "Version").unwrap_or(0) as u64,
        }))
    }

    async fn read_run(&self, user: &str, run_id: &str) -> Result<Option<RunItem>> {
        let item = self.get("reading a run", run_key(user, run_id)).await?;
        Ok(item.map(|i| RunItem {
            status: RunStatus::parse(&get_s(&i, "Status").unwrap_or_default())
                .unwrap_or(RunStatus::Failed),
            next_seq: get_n(&i, "NextSeq").unwrap_or(1),
        }))
    }

    /// (user, account) of run `run_id`, from its pointer item.
    async fn owner_of(&self, run_id: &str) -> Result<Option<(String, String)>> {
        let item = self.get("reading a run", pointer_key(run_id)).await?;
        Ok(item.and_then(|i| Some((get_s(&i, "UserName")?, get_s(&i, "Account")?))))
    }

    fn lease_item(
        &self,
        account: &str,
        user: &str,
        run_id: &str,
        now: OffsetDateTime,
        version: u64,
    ) -> Item {
        let mut item = lease_key(account, user);
        item.extend([
            ("Kind".into(), s("lease")),
            ("Account".into(), s(account)),
            ("UserName".into(), s(user)),
            ("RunId".into(), s(run_id)),
            ("Holder".into(), s(self.me.to_json())),
            ("Owner".into(), s(&self.me.owner)),
            ("Since".into(), s(rfc3339(now))),
            ("LeaseUntil".into(), n(millis(now + self.lease))),
            ("Version".into(), n(version)),
        ]);
        item
    }

    /// Put the lease (conditional on the version read, or on there being none).
    async fn put_lease(
        &self,
        op: &str,
        item: Item,
        read_version: Option<u64>,
    ) -> std::result::Result<(), Failure> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        req = match read_version {
            None => req.condition_expression("attribute_not_exists(PK)"),
            Some(v) => req
                .condition_expression("#Version = :v")
                .expression_attribute_names("#Version", "Version")
                .expression_attribute_values(":v", n(v)),
        };
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| self.failure("dynamodb:PutItem", op, &e))
    }

    /// Why this journal may not write run `run_id` of `user` (its lease is elsewhere).
    async fn lost(&self, run_id: &str, account: &str, user: &str) -> Error {
        match self.read_lease(account, user).await {
            Ok(l) => Error::Locked(super::sqlite::lost(run_id, user, l.as_ref())),
            Err(e) => e,
        }
    }

    /// A fenced write to run `run_id`: in one transaction, the run item (next step
    /// number, plus `set`/`remove`), an optional step event, and the renewal of the
    /// user's lease, which this journal must hold. Retried when only the step number
    /// moved (another write of the same holder).
    async fn run_write(
        &self,
        op: &'static str,
        run_id: &str,
        step: Option<Event<'_>>,
        set: &[(&str, AttributeValue)],
        remove: &[&str],
    ) -> Result<()> {
        let Some((user, account)) = self.owner_of(run_id).await? else {
            return Err(Error::Locked(format!("no run {run_id} in the journal")));
        };
        for _ in 0..5 {
            let Some(run) = self.read_run(&user, run_id).await? else {
                return Err(Error::Locked(format!("no run {run_id} in the journal")));
            };
            let now = self.clock.now();
            let seq = run.next_seq;
            let mut expr = String::from("SET #NextSeq = :next, #Version = #Version + :one");
            let mut v: Vec<(String, AttributeValue)> = vec![
                (":seq".into(), n(seq)),
                (
                    ":next".into(),
                    n(if step.is_some() { seq + 1 } else { seq }),
                ),
                (":one".into(), n(1)),
            ];
            for (i, (name, value)) in set.iter().enumerate() {
                expr.push_str(&format!(", #{name} = :s{i}"));
                v.push((format!(":s{i}"), value.clone()));
            }
            if !remove.is_empty() {
                expr.push_str(" REMOVE ");
                expr.push_str(
                    &remove
                        .iter()
                        .map(|r| format!("#{r}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
            }
            let vref: Vec<(&str, AttributeValue)> =
                v.iter().map(|(k, a)| (k.as_str(), a.clone())).collect();
            let mut tx = Tx::default();
            tx.update(
                &self.table,
                run_key(&user, run_id),
                &expr,
                "#NextSeq = :seq",
                &vref,
            )?;
            if let Some(Event {
                index: idx,
                step: name,
                key_id,
                phase,
                detail,
            }) = &step
            {
                let mut item = step_key(&user, run_id, seq);
                item.extend([
                    ("Kind".into(), s("step")),
                    ("RunId".into(), s(run_id)),
                    ("Seq".into(), n(seq)),
                    ("Step".into(), s(*name)),
                    ("Phase".into(), s(phase.as_str())),
                    ("Detail".into(), s(*detail)),
                    ("At".into(), s(rfc3339(now))),
                ]);
                if let Some(i) = idx {
                    item.insert("Idx".into(), n(i));
                }
                if let Some(k) = key_id {
                    item.insert("KeyId".into(), s(*k));
                }
                tx.put(&self.table, item, "attribute_not_exists(PK)", &[])?;
            }
            tx.update(
                &self.table,
                lease_key(&account, &user),
                "SET #LeaseUntil = :until, #Version = #Version + :one",
                "#Owner = :me",
                &[
                    (":until", n(millis(now + self.lease))),
                    (":one", n(1)),
                    (":me", s(&self.me.owner)),
                ],
            )?;
            match self.transact(op, tx).await {
                Ok(()) => return Ok(()),
                Err(Failure::Other(e)) => return Err(e),
                Err(Failure::Conflict) => {
                    let held = self
                        .read_lease(&account, &user)
                        .await?
                        .is_some_and(|l| l.held_by(&self.me));
                    if !held {
                        return Err(self.lost(run_id, &account, &user).await);
                    }
                }
            }
        }
        Err(Error::Locked(format!(
            "run {run_id}: journal writes kept conflicting with another writer; retry"
        )))
    }

    async fn step(&self, op: &'static str, run_id: &str, e: Event<'_>) -> Result<()> {
        self.run_write(op, run_id, Some(e), &[], &[]).await
    }

    /// Every item of one user's partition whose sort key starts with `prefix`.
    async fn query(&self, user: &str, prefix: &str) -> Result<Vec<Item>> {
        let mut out = vec![];
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#PK = :pk AND begins_with(#SK, :p)")
                .expression_attribute_names("#PK", "PK")
                .expression_attribute_names("#SK", "SK")
                .expression_attribute_values(":pk", s(format!("USER#{user}")))
                .expression_attribute_values(":p", s(prefix))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.unavailable("dynamodb:Query", "reading runs", &e))?;
            out.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(out),
            }
        }
    }

    /// Every run and step item of the table.
    async fn scan(&self) -> Result<Vec<Item>> {
        let mut out = vec![];
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(#PK, :u)")
                .expression_attribute_names("#PK", "PK")
                .expression_attribute_values(":u", s("USER#"))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.unavailable("dynamodb:Scan", "reading runs", &e))?;
            out.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(out),
            }
        }
    }

    /// Run records from run and step items, newest first.
    fn records(items: Vec<Item>) -> Result<Vec<RunRecord>> {
        let mut runs: Vec<(Item, Vec<StepRecord>)> = vec![];
        let mut steps: HashMap<String, Vec<StepRecord>> = HashMap::new();
        for i in items {
            match get_s(&i, "Kind").as_deref() {
                Some("run") => runs.push((i, vec![])),
                Some("step") => {
                    let run_id = get_s(&i, "RunId").unwrap_or_default();
                    steps.entry(run_id).or_default().push(StepRecord {
                        seq: get_n(&i, "Seq").unwrap_or(0) as u32,
                        index: get_n(&i, "Idx").map(|x| x as usize),
                        step: get_s(&i, "Step").unwrap_or_default(),
                        access_key_id: get_s(&i, "KeyId"),
                        phase: StepPhase::parse(&get_s(&i, "Phase").unwrap_or_default())
                            .unwrap_or(StepPhase::Note),
                        detail: get_s(&i, "Detail").unwrap_or_default(),
                        at: parse_time(&get_s(&i, "At").unwrap_or_default()),
                    })
                }
                _ => {}
            }
        }
        let mut out = vec![];
        for (item, _) in runs {
            let run_id = get_s(&item, "RunId").unwrap_or_default();
            let meta: RunMeta = serde_json::from_str(&get_s(&item, "Meta").unwrap_or_default())
                .map_err(|e| {
                    Error::Journal(format!(
                        "the journal's record of run {run_id} is unreadable: {e}"
                    ))
                })?;
            let mut st = steps.remove(&run_id).unwrap_or_default();
            st.sort_by_key(|s| s.seq);
            out.push(RunRecord {
                meta,
                status: RunStatus::parse(&get_s(&item, "Status").unwrap_or_default())
                    .unwrap_or(RunStatus::Failed),
                new_key_id: get_s(&item, "NewKeyId"),
                new_key_created: get_s(&item, "NewKeyCreated").map(|t| parse_time(&t)),
                holds_secret: item.contains_key("SealedSecret"),
                finished_at: get_s(&item, "FinishedAt").map(|t| parse_time(&t)),
                error: get_s(&item, "Error"),
                steps: st,
            });
        }
        out.sort_by(|a, b| {
            (b.meta.started_at, &b.meta.run_id).cmp(&(a.meta.started_at, &a.meta.run_id))
        });
        Ok(out)
    }

    async fn sealing_key(&self, run_id: &str) -> Result<DataKey> {
        if let Some(k) = self
            .reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(run_id)
        {
            return Ok(k);
        }
        self.sealer.kms_data_key().await
    }

    async fn reserve(&self, run_id: &str, intent: Option<(usize, &Step)>) -> Result<()> {
        let k = self.sealer.kms_data_key().await?;
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.to_string(), k);
        let marker = [("Reserved", s(rfc3339(self.clock.now())))];
        let op = "reserving room for the new key's secret";
        match intent {
            Some((idx, st)) => {
                self.run_write(
                    op,
                    run_id,
                    Some(Event {
                        index: Some(idx),
                        step: st.name(),
                        key_id: st.key_id(),
                        phase: StepPhase::Intent,
                        detail: st.reason(),
                    }),
                    &marker,
                    &[],
                )
                .await
            }
            None => self.run_write(op, run_id, None, &marker, &[]).await,
        }
    }

    /// Best effort: let DynamoDB's TTL clean up a finished run's steps and pointer.
    async fn expire_all(&self, user: &str, run_id: &str, at: i64) {
        let Ok(items) = self.query(user, &format!("RUN#{run_id}#STEP#")).await else {
            return;
        };
        let keys = items
            .iter()
            .filter(|i| get_s(i, "RunId").as_deref() == Some(run_id))
            .filter_map(|i| Some(key(get_s(i, "PK")?, &get_s(i, "SK")?)))
            .chain(std::iter::once(pointer_key(run_id)));
        for k in keys {
            let r = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(k))
                .update_expression("SET #ExpiresAt = :t")
                .expression_attribute_names("#ExpiresAt", TTL_ATTRIBUTE)
                .expression_attribute_values(":t", n(at))
                .send()
                .await;
            if let Err(e) = r {
                tracing::debug!("could not set the TTL of a journal item of run {run_id}: {e}");
            }
        }
    }
}

fn aad(run_id: &str, key_id: &str) -> Vec<u8> {
    format!("keyturn/{run_id}/{key_id}").into_bytes()
}

impl Journal for DynamoJournal {
    fn lease_duration(&self) -> Duration {
        self.lease
    }

    async fn lock(&self, account: &str, user: &str, run_id: &str) -> Result<()> {
        for _ in 0..5 {
            let now = self.clock.now();
            let current = self.read_lease(account, user).await?;
            let version = match &current {
                None => None,
                Some(l) => {
                    let status = self.read_run(user, &l.run_id).await?.map(|r| r.status);
                    lease::for_new_run(l, status, &self.me, now).map_err(Error::Locked)?;
                    tracing::info!(
                        "taking over the lease of ended run {} ({})",
                        l.run_id,
                        l.holder.describe()
                    );
                    Some(l.version)
                }
            };
            let item = self.lease_item(account, user, run_id, now, version.map_or(1, |v| v + 1));
            match self.put_lease("taking the lock", item, version).await {
                Ok(()) => return Ok(()),
                Err(Failure::Other(e)) => return Err(e),
                // Another writer changed the lease meanwhile: decide again.
                Err(Failure::Conflict) => continue,
            }
        }
        Err(Error::Locked(format!(
            "the lock of user {user} (account {account}) is contended by other runners; retry"
        )))
    }

    async fn unlock(&self, account: &str, user: &str, run_id: &str) -> Result<()> {
        let Some(l) = self.read_lease(account, user).await? else {
            return Ok(());
        };
        if l.run_id != run_id || !l.held_by(&self.me) {
            return Ok(());
        }
        let r = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(lease_key(account, user)))
            .condition_expression("#Version = :v")
            .expression_attribute_names("#Version", "Version")
            .expression_attribute_values(":v", n(l.version))
            .send()
            .await;
        match r.map_err(|e| self.failure("dynamodb:DeleteItem", "releasing the lock", &e)) {
            Ok(_) | Err(Failure::Conflict) => Ok(()),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn renew(&self, account: &str, user: &str, run_id: &str) -> Result<()> {
        let now = self.clock.now();
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(lease_key(account, user)))
            .update_expression("SET #LeaseUntil = :until, #Version = #Version + :one")
            .condition_expression("#Owner = :me AND #RunId = :run")
            .set_expression_attribute_names(names_in(&["#LeaseUntil #Version #Owner #RunId"]))
            .expression_attribute_values(":until", n(millis(now + self.lease)))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":me", s(&self.me.owner))
            .expression_attribute_values(":run", s(run_id))
            .send()
            .await;
        match r.map_err(|e| self.failure("dynamodb:UpdateItem", "renewing the lease", &e)) {
            Ok(_) => Ok(()),
            Err(Failure::Conflict) => Err(self.lost(run_id, account, user).await),
            Err(Failure::Other(e)) => Err(e),
        }
    }

    async fn lease(&self, account: &str, user: &str) -> Result<Option<Lease>> {
        self.read_lease(account, user).await
    }

    async fn take_over(&self, run_id: &str) -> Result<()> {
        let Some((user, account)) = self.owner_of(run_id).await? else {
            return Err(Error::Locked(format!("no run {run_id} in the journal")));
        };
        for _ in 0..5 {
            let Some(run) = self.read_run(&user, run_id).await? else {
                return Err(Error::Locked(format!("no run {run_id} in the journal")));
            };
            let now = self.clock.now();
            let current = self.read_lease(&account, &user).await?;
            let other_status = match &current {
                Some(l) if l.run_id != run_id => {
                    self.read_run(&user, &l.run_id).await?.map(|r| r.status)
                }
                _ => None,
            };
            lease::for_take_over(
                current.as_ref(),
                other_status,
                run_id,
                run.status,
                &self.me,
                now,
            )
            .map_err(Error::Locked)?;
            let mut tx = Tx::default();
            let version = current.as_ref().map(|l| l.version);
            let item = self.lease_item(&account, &user, run_id, now, version.map_or(1, |v| v + 1));
            match version {
                None => tx.put(&self.table, item, "attribute_not_exists(PK)", &[])?,
                Some(v) => tx.put(&self.table, item, "#Version = :v", &[(":v", n(v))])?,
            }
            let seq = run.next_seq;
            tx.update(
                &self.table,
                run_key(&user, run_id),
                "SET #NextSeq = :next, #Version = #Version + :one, #Pid = :pid, #Host = :host",
                "#NextSeq = :seq",
                &[
                    (":next", n(seq + 1)),
                    (":seq", n(seq)),
                    (":one", n(1)),
                    (":pid", n(self.me.process.pid)),
                    (":host", s(&self.me.process.host)),
                ],
            )?;
            let from = current
                .as_ref()
                .filter(|l| !l.held_by(&self.me))
                .map(|l| format!(" from {}", l.holder.describe()))
                .unwrap_or_default();
            let mut step = step_key(&user, run_id, seq);
            step.extend([
                ("Kind".into(), s("step")),
                ("RunId".into(), s(run_id)),
                ("Seq".into(), n(seq)),
                ("Step".into(), s("take-over")),
                ("Phase".into(), s(StepPhase::Note.as_str())),
                (
                    "Detail".into(),
                    s(format!("taken over by {}{from}", self.me.describe())),
                ),
                ("At".into(), s(rfc3339(now))),
            ]);
            tx.put(&self.table, step, "attribute_not_exists(PK)", &[])?;
            match self.transact("taking over the run", tx).await {
                Ok(()) => return Ok(()),
                Err(Failure::Other(e)) => return Err(e),
                Err(Failure::Conflict) => continue,
            }
        }
        Err(Error::Locked(format!(
            "run {run_id} is being taken over by another runner at the same time; retry"
        )))
    }

    async fn begin(&self, meta: &RunMeta) -> Result<()> {
        let json = serde_json::to_string(meta).map_err(|e| Error::Runtime(e.to_string()))?;
        let (run_id, account, user) = (&meta.run_id, &meta.account, &meta.user_name);
        let mut run = run_key(user, run_id);
        run.extend([
            ("Kind".into(), s("run")),
            ("RunId".into(), s(run_id)),
            ("Account".into(), s(account)),
            ("UserName".into(), s(user)),
            ("Status".into(), s(RunStatus::Running.as_str())),
            ("Meta".into(), s(json)),
            ("StartedAt".into(), s(rfc3339(meta.started_at))),
            ("NextSeq".into(), n(1)),
            ("Version".into(), n(1)),
            ("Pid".into(), n(self.me.process.pid)),
            ("Host".into(), s(&self.me.process.host)),
        ]);
        let mut pointer = pointer_key(run_id);
        pointer.extend([
            ("Kind".into(), s("pointer")),
            ("RunId".into(), s(run_id)),
            ("Account".into(), s(account)),
            ("UserName".into(), s(user)),
        ]);
        let mut tx = Tx::default();
        tx.check(
            &self.table,
            lease_key(account, user),
            "#Owner = :me AND #RunId = :run",
            &[(":me", s(&self.me.owner)), (":run", s(run_id))],
        )?;
        tx.put(&self.table, run, "attribute_not_exists(PK)", &[])?;
        tx.put(&self.table, pointer, "attribute_not_exists(PK)", &[])?;
        match self.transact("recording the run", tx).await {
            Ok(()) => {}
            Err(Failure::Other(e)) => return Err(e),
            Err(Failure::Conflict) => {
                if self.owner_of(run_id).await?.is_some() {
                    return Err(Error::Locked(format!(
                        "run {run_id} is already in the journal"
                    )));
                }
                return Err(self.lost(run_id, account, user).await);
            }
        }
        crate::failpoint::hit("begin");
        Ok(())
    }

    async fn intent(&self, run_id: &str, idx: usize, step: &Step) -> Result<()> {
        if matches!(step, Step::CreateKey { .. }) {
            return self.reserve(run_id, Some((idx, step))).await;
        }
        self.step(
            "recording the intent of a step",
            run_id,
            Event {
                index: Some(idx),
                step: step.name(),
                key_id: step.key_id(),
                phase: StepPhase::Intent,
                detail: step.reason(),
            },
        )
        .await
    }

    async fn reserve_secret(&self, run_id: &str, _idx: usize) -> Result<()> {
        self.reserve(run_id, None).await
    }

    async fn done(
        &self,
        run_id: &str,
        idx: usize,
        step: &Step,
        ok: bool,
        detail: &str,
    ) -> Result<()> {
        let phase = if ok {
            StepPhase::Done
        } else {
            StepPhase::Failed
        };
        self.step(
            "recording the result of a step",
            run_id,
            Event {
                index: Some(idx),
                step: step.name(),
                key_id: step.key_id(),
                phase,
                detail,
            },
        )
        .await
    }

    async fn key_created(&self, run_id: &str, idx: usize, key: &NewKey) -> Result<()> {
        let dk = self.sealing_key(run_id).await?;
        let sealed: Sealed = dk.seal(
            key.secret.expose().as_bytes(),
            &aad(run_id, &key.access_key_id),
        )?;
        drop(dk);
        let detail = format!(
            "created {} (secret sealed in the journal, {})",
            key.access_key_id, sealed.scheme
        );
        let mut set = vec![
            ("NewKeyId", s(&key.access_key_id)),
            ("NewKeyCreated", s(rfc3339(key.create_date))),
            ("SealedScheme", s(&sealed.scheme)),
            (
                "SealedSecret",
                AttributeValue::B(aws_smithy_types::Blob::new(sealed.blob.clone())),
            ),
        ];
        if let Some(w) = &sealed.wrapped_key {
            set.push((
                "SealedDataKey",
                AttributeValue::B(aws_smithy_types::Blob::new(w.clone())),
            ));
        }
        self.run_write(
            "recording the new key",
            run_id,
            Some(Event {
                index: Some(idx),
                step: "create-key",
                key_id: Some(&key.access_key_id),
                phase: StepPhase::Done,
                detail: &detail,
            }),
            &set,
            &["Reserved"],
        )
        .await
    }

    async fn delivered(&self, run_id: &str) -> Result<()> {
        self.run_write(
            "erasing the delivered secret",
            run_id,
            Some(Event {
                index: None,
                step: "deliver",
                key_id: None,
                phase: StepPhase::Note,
                detail: "every output has the new key; sealed secret erased",
            }),
            &[],
            &["SealedScheme", "SealedSecret", "SealedDataKey", "Reserved"],
        )
        .await
    }

    async fn finish(&self, run_id: &str, status: RunStatus, error: Option<&str>) -> Result<()> {
        self.reserved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(run_id);
        let Some((user, account)) = self.owner_of(run_id).await? else {
            return Err(Error::Locked(format!("no run {run_id} in the journal")));
        };
        let op = "recording the end of the run";
        for _ in 0..5 {
            let Some(l) = self
                .read_lease(&account, &user)
                .await?
                .filter(|l| l.held_by(&self.me))
            else {
                return Err(self.lost(run_id, &account, &user).await);
            };
            let now = self.clock.now();
            let expires_at = (now + self.retention).unix_timestamp();
            let ended = status != RunStatus::Incomplete;
            let mut expr = String::from(
                "SET #Status = :status, #FinishedAt = :at, #Version = #Version + :one",
            );
            let mut v = vec![
                (":status", s(status.as_str())),
                (":at", s(rfc3339(now))),
                (":one", n(1)),
            ];
            if let Some(e) = error {
                expr.push_str(", #Error = :err");
                v.push((":err", s(e)));
            }
            if ended {
                expr.push_str(", #ExpiresAt = :exp");
                v.push((":exp", n(expires_at)));
            }
            expr.push_str(" REMOVE #Reserved");
            if error.is_none() {
                expr.push_str(", #Error");
            }
            let mut tx = Tx::default();
            tx.update(
                &self.table,
                run_key(&user, run_id),
                &expr,
                "attribute_exists(PK)",
                &v,
            )?;
            let lv = [(":v", n(l.version)), (":me", s(&self.me.owner))];
            if l.run_id != run_id {
                // Rollback: the user's lock belongs to the rollback, which releases it.
                tx.check(
                    &self.table,
                    lease_key(&account, &user),
                    "#Owner = :me AND #Version = :v",
                    &lv,
                )?;
            } else if ended {
                tx.delete(
                    &self.table,
                    lease_key(&account, &user),
                    "#Owner = :me AND #Version = :v",
                    &lv,
                )?;
            } else {
                // Incomplete: the run keeps its user's lock, with its lease released.
                tx.update(
                    &self.table,
                    lease_key(&account, &user),
                    "SET #LeaseUntil = :now, #Version = #Version + :one",
                    "#Owner = :me AND #Version = :v",
                    &[
                        (":v", n(l.version)),
                        (":me", s(&self.me.owner)),
                        (":now", n(millis(now))),
                        (":one", n(1)),
                    ],
                )?;
            }
            match self.transact(op, tx).await {
                Ok(()) => {
                    if ended {
                        self.expire_all(&user, run_id, expires_at).await;
                    }
                    return Ok(());
                }
                Err(Failure::Other(e)) => return Err(e),
                Err(Failure::Conflict) => continue,
            }
        }
        Err(Error::Locked(format!(
            "run {run_id}: the end of the run kept conflicting with another writer; retry"
        )))
    }

    async fn note(&self, run_id: &str, step: &str, ok: bool, detail: &str) -> Result<()> {
        let detail = if ok {
            detail.to_string()
        } else {
            format!("FAILED: {detail}")
        };
        self.step(
            "recording an event",
            run_id,
            Event {
                index: None,
                step,
                key_id: None,
                phase: StepPhase::Note,
                detail: &detail,
            },
        )
        .await
    }

    async fn runs(&self, user: Option<&str>) -> Result<Vec<RunRecord>> {
        let items = match user {
            Some(u) => self.query(u, "RUN#").await?,
            None => self.scan().await?,
        };
        Self::records(items)
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let Some((user, _)) = self.owner_of(run_id).await? else {
            return Ok(None);
        };
        let items: Vec<Item> = self
            .query(&user, &format!("RUN#{run_id}"))
            .await?
            .into_iter()
            .filter(|i| get_s(i, "RunId").as_deref() == Some(run_id))
            .collect();
        Ok(Self::records(items)?.into_iter().next())
    }

    async fn secret(&self, run_id: &str) -> Result<Option<SecretKey>> {
        let Some((user, _)) = self.owner_of(run_id).await? else {
            return Ok(None);
        };
        let Some(item) = self
            .get("reading the sealed secret", run_key(&user, run_id))
            .await?
        else {
            return Ok(None);
        };
        let (Some(key_id), Some(scheme), Some(blob)) = (
            get_s(&item, "NewKeyId"),
            get_s(&item, "SealedScheme"),
            get_b(&item, "SealedSecret"),
        ) else {
            return Ok(None);
        };
        let sealed = Sealed {
            scheme,
            blob,
            wrapped_key: get_b(&item, "SealedDataKey"),
        };
        if sealed.scheme != super::seal::SCHEME_KMS {
            return Err(self.sealer.wrong_scheme(&sealed.scheme));
        }
        let key = self.sealer.kms_unwrap(&sealed).await?;
        let plain = key.open(&sealed, &aad(run_id, &key_id))?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| Error::Journal("the journaled secret is not text".into()))?;
        Ok(Some(SecretKey::new(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expression_names_are_collected() {
        let m = names_in(&[
            "SET #NextSeq = :n, #Version = #Version + :one",
            "#Owner = :me",
        ])
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m["#NextSeq"], "NextSeq");
        assert_eq!(m["#Owner"], "Owner");
        assert!(names_in(&["attribute_not_exists(PK)"]).is_none());
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let k = step_key("ci-bot", "20261121T231200.123Z-00ff", 7);
        assert_eq!(k["PK"].as_s().unwrap(), "USER#ci-bot");
        assert_eq!(
            k["SK"].as_s().unwrap(),
            "RUN#20261121T231200.123Z-00ff#STEP#00000007"
        );
        assert_eq!(
            lease_key("123456789012", "ci-bot")["PK"].as_s().unwrap(),
            "LOCK#123456789012#ci-bot"
        );
        assert_eq!(pointer_key("r")["SK"].as_s().unwrap(), "RUN");
        let t = time::macros::datetime!(2026-11-21 23:12:00.123 UTC);
        assert_eq!(from_millis(millis(t)), t);
    }
}
