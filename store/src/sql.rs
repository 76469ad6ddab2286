//! The function registry and call store over SQL, written once for SQLite and Postgres.
//!
//! The two differ only in their pool and row types: the SQL is the same (numbered `$n`
//! parameters, `ON CONFLICT`, `RETURNING`), so one macro implements the traits for both and they
//! cannot drift apart.

/// Implements `FunctionStore`, `CallStore` and the secrets' rows (`SealedRows`) for `$store` (a struct with a `pool` field) whose
/// rows are `$row`, on database `$db`.
macro_rules! sql_store {
    ($store:ty, $row:ty, $db:ty, $backend:literal) => {
        mod sql_impl {
            use super::*;

            use async_trait::async_trait;
            use sluice_core::{
                Backlog, CallFilter, CallId, CallOutcome, CallRecord, CallResult, CallState, CallStore, CallbackOutcome,
                FunctionDeployment, FunctionRef, FunctionSpec, FunctionStore, QueuedCall, StoreError,
                Timestamp,
            };
            use sqlx::Row;

            use $crate::sql::{is_unique_violation, unavailable};

        fn spec_from_row(row: &$row) -> Result<FunctionSpec, StoreError> {
            let namespace: String = row.get("namespace");
            let name: String = row.get("name");
            let deployment: String = row.get("deployment");
            let deployment: FunctionDeployment = serde_json::from_str(&deployment)
                .map_err(|e| unavailable(format!("stored deployment of {name} is unreadable: {e}")))?;
            let replicas = u32::try_from(row.get::<i64, _>("replicas")).unwrap_or(0);
            let created_at = Timestamp::from_millis(row.get("created_at"));
            FunctionSpec::new(FunctionRef { name, namespace }, deployment, replicas, created_at)
                .map_err(|e| unavailable(format!("stored deployment is no longer valid: {e}")))
        }

        #[async_trait]
        impl FunctionStore for $store {
            async fn create(&self, spec: &FunctionSpec) -> Result<(), StoreError> {
                let deployment = serde_json::to_string(&spec.deployment).map_err(unavailable)?;
                sqlx::query(
                    "INSERT INTO functions (namespace, name, deployment, replicas, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&spec.function.namespace)
                .bind(&spec.function.name)
                .bind(deployment)
                .bind(i64::from(spec.replicas))
                .bind(spec.created_at.as_millis())
                .execute(&self.pool)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict(format!("function {}", spec.function))
                    } else {
                        unavailable(e)
                    }
                })?;
                Ok(())
            }

            async fn update(&self, spec: &FunctionSpec) -> Result<(), StoreError> {
                let deployment = serde_json::to_string(&spec.deployment).map_err(unavailable)?;
                let done = sqlx::query(
                    "UPDATE functions SET deployment = $1, replicas = $2 WHERE namespace = $3 AND name = $4",
                )
                .bind(deployment)
                .bind(i64::from(spec.replicas))
                .bind(&spec.function.namespace)
                .bind(&spec.function.name)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("function {}", spec.function)));
                }
                Ok(())
            }

            async fn get(&self, function: &FunctionRef) -> Result<Option<FunctionSpec>, StoreError> {
                sqlx::query("SELECT * FROM functions WHERE namespace = $1 AND name = $2")
                    .bind(&function.namespace)
                    .bind(&function.name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(unavailable)?
                    .as_ref()
                    .map(spec_from_row)
                    .transpose()
            }

            async fn list(&self) -> Result<Vec<FunctionSpec>, StoreError> {
                sqlx::query("SELECT * FROM functions ORDER BY namespace, name")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(unavailable)?
                    .iter()
                    .map(spec_from_row)
                    .collect()
            }

            async fn delete(&self, function: &FunctionRef) -> Result<bool, StoreError> {
                let done = sqlx::query("DELETE FROM functions WHERE namespace = $1 AND name = $2")
                    .bind(&function.namespace)
                    .bind(&function.name)
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(done.rows_affected() > 0)
            }

            async fn set_replicas(
                &self,
                function: &FunctionRef,
                replicas: u32,
            ) -> Result<bool, StoreError> {
                let done =
                    sqlx::query("UPDATE functions SET replicas = $1 WHERE namespace = $2 AND name = $3")
                        .bind(i64::from(replicas))
                        .bind(&function.namespace)
                        .bind(&function.name)
                        .execute(&self.pool)
                        .await
                        .map_err(unavailable)?;
                Ok(done.rows_affected() > 0)
            }
        }

        fn opt_ts(row: &$row, col: &str) -> Option<Timestamp> {
            row.get::<Option<i64>, _>(col).map(Timestamp::from_millis)
        }

        /// A call's record as a listing gives it: without its timeline.
        fn record_from_row(row: &$row) -> Result<CallRecord, StoreError> {
            let state: String = row.get("state");
            let state = CallState::parse(&state)
                .ok_or_else(|| unavailable(format!("stored call has unknown state {state:?}")))?;
            let callback = row
                .get::<Option<String>, _>("callback")
                .map(|json| serde_json::from_str::<CallbackOutcome>(&json))
                .transpose()
                .map_err(unavailable)?;
            Ok(CallRecord {
                id: CallId::from_trusted(row.get("id")),
                function: row.get("function"),
                namespace: row.get("namespace"),
                method: row.get("method"),
                path: row.get("path"),
                callback_url: row.get("callback_url"),
                state,
                attempts: u32::try_from(row.get::<i64, _>("attempts")).unwrap_or(0),
                submitted_at: Timestamp::from_millis(row.get("submitted_at")),
                started_at: opt_ts(row, "started_at"),
                finished_at: opt_ts(row, "finished_at"),
                duration_seconds: row
                    .get::<Option<i64>, _>("duration_ms")
                    .map(|ms| ms as f64 / 1000.0),
                status_code: row
                    .get::<Option<i64>, _>("status_code")
                    .and_then(|c| u16::try_from(c).ok()),
                error: row.get("error"),
                callback,
                redrives: u32::try_from(row.get::<i64, _>("redrives")).unwrap_or(0),
                timeline: None,
                trace_id: row.get("trace_id"),
                request_id: row.get("request_id"),
            })
        }

        /// A call's record with its timeline, from a row of [`GET_CALL`](crate::sql::GET_CALL).
        /// A timeline that cannot be read is left out (and logged), not made the record's
        /// failure: the queue worker reads records to finish their calls.
        fn record_with_timeline(row: &$row) -> Result<CallRecord, StoreError> {
            let mut record = record_from_row(row)?;
            let timeline = $crate::timeline::read(
                row.get("attempt_log_text"),
                row.get("callback_log_text"),
                row.get("redrive_log_text"),
                record.state,
            );
            match timeline {
                Ok(timeline) => record.timeline = Some(timeline),
                Err(error) => {
                    tracing::warn!(call = %record.id, %error, "the call's timeline is unreadable; left out");
                }
            }
            Ok(record)
        }

        /// A write statement, owning what it binds (so it can go to a writer task).
        type WriteQuery = sqlx::query::Query<'static, $db, <$db as sqlx::Database>::Arguments<'static>>;

        fn finish_query(id: &CallId, outcome: &CallOutcome) -> WriteQuery {
            bind_finish(sqlx::query(super::FINISH), outcome).bind(id.as_str().to_owned())
        }

        /// Binds an outcome to `$1`..`$5` of the backend's `FINISH` (the call's id, `$6`, is
        /// bound next).
        fn bind_finish(query: WriteQuery, outcome: &CallOutcome) -> WriteQuery {
            query
                .bind(outcome.state.as_str())
                .bind(outcome.status_code.map(i64::from))
                .bind(outcome.error.clone())
                .bind(outcome.finished_at.as_millis())
                .bind(i64::try_from(outcome.duration_ms).unwrap_or(i64::MAX))
        }

        fn result_query(id: &CallId, result: &CallResult) -> Result<WriteQuery, StoreError> {
            let headers = serde_json::to_string(&result.headers).map_err(unavailable)?;
            Ok(sqlx::query(
                "INSERT INTO call_results (id, status_code, headers, body, stored_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
                 status_code = EXCLUDED.status_code, headers = EXCLUDED.headers, \
                 body = EXCLUDED.body, stored_at = EXCLUDED.stored_at",
            )
            .bind(id.as_str().to_owned())
            .bind(i64::from(result.status_code))
            .bind(headers)
            .bind(result.body.to_vec())
            .bind(result.stored_at.as_millis()))
        }

        #[async_trait]
        impl CallStore for $store {
            async fn create(&self, record: &CallRecord) -> Result<bool, StoreError> {
                let done = self
                    .write(
                        sqlx::query($crate::sql::INSERT_CALL)
                            .bind(record.id.as_str().to_owned())
                            .bind(record.namespace.clone())
                            .bind(record.function.clone())
                            .bind(record.method.clone())
                            .bind(record.path.clone())
                            .bind(record.callback_url.clone())
                            .bind(record.state.as_str())
                            .bind(i64::from(record.attempts))
                            .bind(record.submitted_at.as_millis())
                            .bind(record.trace_id.clone())
                            .bind(record.request_id.clone()),
                    )
                    .await
                    .map_err(unavailable)?;
                Ok(done == 1)
            }

            async fn create_many(&self, records: &[CallRecord]) -> Result<Vec<bool>, StoreError> {
                let mut created = Vec::with_capacity(records.len());
                for chunk in records.chunks($crate::sql::CREATE_MANY_ROWS) {
                    let mut inserted = self.insert_new_calls(chunk).await.map_err(unavailable)?;
                    // An id given twice is created once, by its first record.
                    created.extend(chunk.iter().map(|r| inserted.remove(r.id.as_str())));
                }
                Ok(created)
            }

            async fn list_calls(&self, filter: &CallFilter) -> Result<Vec<CallRecord>, StoreError> {
                let (before_at, before_id) = match &filter.before {
                    Some((at, id)) => (Some(at.as_millis()), Some(id.as_str().to_owned())),
                    None => (None, None),
                };
                sqlx::query(
                    "SELECT * FROM calls \
                     WHERE ($1 IS NULL OR namespace = $1) AND ($2 IS NULL OR function = $2) \
                     AND ($3 IS NULL OR state = $3) \
                     AND ($4 IS NULL OR submitted_at < $4 OR (submitted_at = $4 AND id < $5)) \
                     ORDER BY submitted_at DESC, id DESC LIMIT $6",
                )
                .bind(filter.function.as_ref().map(|f| f.namespace.clone()))
                .bind(filter.function.as_ref().map(|f| f.name.clone()))
                .bind(filter.state.map(CallState::as_str))
                .bind(before_at)
                .bind(before_id)
                .bind(i64::from(filter.limit))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?
                .iter()
                .map(record_from_row)
                .collect()
            }

            async fn get(&self, id: &CallId) -> Result<Option<CallRecord>, StoreError> {
                sqlx::query($crate::sql::GET_CALL)
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(unavailable)?
                    .as_ref()
                    .map(record_with_timeline)
                    .transpose()
            }

            async fn forget(&self, id: &CallId) -> Result<bool, StoreError> {
                let done = self
                    .write(sqlx::query("DELETE FROM calls WHERE id = $1").bind(id.as_str().to_owned()))
                    .await
                    .map_err(unavailable)?;
                Ok(done > 0)
            }

            async fn start_attempt(
                &self,
                id: &CallId,
                at: Timestamp,
            ) -> Result<Option<u32>, StoreError> {
                let row = self
                    .write_returning(
                        sqlx::query(super::START_ATTEMPT)
                        .bind(at.as_millis())
                        .bind(id.as_str().to_owned()),
                    )
                    .await
                    .map_err(unavailable)?;
                match row {
                    Some(row) => Ok(Some(
                        u32::try_from(row.get::<i64, _>("attempts")).unwrap_or(u32::MAX),
                    )),
                    None => match CallStore::get(self, id).await? {
                        Some(_) => Ok(None),
                        None => Err(StoreError::NotFound(format!("call {id}"))),
                    },
                }
            }

            async fn start_attempts(
                &self,
                ids: &[CallId],
                at: Timestamp,
            ) -> Result<std::collections::HashMap<CallId, u32>, StoreError> {
                let mut started = std::collections::HashMap::with_capacity(ids.len());
                for chunk in ids.chunks($crate::sql::START_MANY_ROWS) {
                    let rows = self
                        .write_fetch_all(
                            sqlx::query(super::START_ATTEMPTS)
                                .bind(at.as_millis())
                                .bind(super::id_list(chunk.iter().map(CallId::as_str))),
                        )
                        .await
                        .map_err(unavailable)?;
                    started.extend(rows.iter().map(|row| {
                        let attempts = u32::try_from(row.get::<i64, _>("attempts")).unwrap_or(u32::MAX);
                        (CallId::from_trusted(row.get("id")), attempts)
                    }));
                }
                Ok(started)
            }

            async fn undo_start(&self, id: &CallId, attempt: u32) -> Result<(), StoreError> {
                self.write(
                    sqlx::query(super::UNDO_START)
                    .bind(id.as_str().to_owned())
                    .bind(i64::from(attempt)),
                )
                .await
                .map_err(unavailable)?;
                Ok(())
            }

            async fn cancel(
                &self,
                id: &CallId,
                at: Timestamp,
            ) -> Result<Option<CallRecord>, StoreError> {
                self.write(
                    sqlx::query(
                        "UPDATE calls SET state = 'cancelled', finished_at = $1 \
                         WHERE id = $2 AND state = 'queued'",
                    )
                    .bind(at.as_millis())
                    .bind(id.as_str().to_owned()),
                )
                .await
                .map_err(unavailable)?;
                CallStore::get(self, id).await
            }

            async fn finish(&self, id: &CallId, outcome: &CallOutcome) -> Result<(), StoreError> {
                let done = self.write(finish_query(id, outcome)).await.map_err(unavailable)?;
                if done == 0 {
                    return Err(StoreError::NotFound(format!("call {id}")));
                }
                Ok(())
            }

            async fn finish_with_result(
                &self,
                id: &CallId,
                outcome: &CallOutcome,
                result: Option<&CallResult>,
            ) -> Result<(), StoreError> {
                let Some(result) = result else {
                    return CallStore::finish(self, id, outcome).await;
                };
                // One round trip: the response kept first, then the outcome (one statement of
                // each, sent together).
                let headers = serde_json::to_string(&result.headers).map_err(unavailable)?;
                let finished = self
                    .write_fetch_all(
                        bind_finish(sqlx::query(super::FINISH_WITH_RESULT), outcome)
                            .bind(id.as_str().to_owned())
                            .bind(i64::from(result.status_code))
                            .bind(headers)
                            .bind(result.body.to_vec())
                            .bind(result.stored_at.as_millis()),
                    )
                    .await
                    .map_err(unavailable)?;
                if finished.is_empty() {
                    return Err(StoreError::NotFound(format!("call {id}")));
                }
                Ok(())
            }

            async fn store_result(&self, id: &CallId, result: &CallResult) -> Result<(), StoreError> {
                self.write(result_query(id, result)?).await.map_err(unavailable)?;
                Ok(())
            }

            async fn forget_result(&self, id: &CallId) -> Result<(), StoreError> {
                self.write(
                    sqlx::query("DELETE FROM call_results WHERE id = $1").bind(id.as_str().to_owned()),
                )
                .await
                .map_err(unavailable)?;
                Ok(())
            }

            async fn result(&self, id: &CallId) -> Result<Option<CallResult>, StoreError> {
                let Some(row) = sqlx::query("SELECT * FROM call_results WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(unavailable)?
                else {
                    return Ok(None);
                };
                let headers: String = row.get("headers");
                Ok(Some(CallResult {
                    status_code: u16::try_from(row.get::<i64, _>("status_code")).unwrap_or(500),
                    headers: serde_json::from_str(&headers).map_err(unavailable)?,
                    body: row.get::<Vec<u8>, _>("body").into(),
                    stored_at: Timestamp::from_millis(row.get("stored_at")),
                }))
            }

            async fn purge_results(&self, before: Timestamp) -> Result<u64, StoreError> {
                let mut purged = 0;
                for sql in [
                    "DELETE FROM call_results WHERE stored_at < $1",
                    "DELETE FROM call_requests WHERE stored_at < $1",
                ] {
                    purged += self
                        .write(sqlx::query(sql).bind(before.as_millis()))
                        .await
                        .map_err(unavailable)?;
                }
                Ok(purged)
            }

            async fn count_unfinished(&self, function: &FunctionRef, up_to: u64) -> Result<u64, StoreError> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM calls WHERE namespace = $1 AND function = $2 \
                     AND state IN ('queued', 'running') LIMIT $3) AS unfinished",
                )
                .bind(&function.namespace)
                .bind(&function.name)
                .bind(i64::try_from(up_to).unwrap_or(i64::MAX))
                .fetch_one(&self.pool)
                .await
                .map_err(unavailable)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn purge_calls(&self, before: Timestamp, batch: u32) -> Result<u64, StoreError> {
                // Each statement picks the batch afresh under its own conditions, so a call
                // re-driven meanwhile (queued again) is never deleted, and several workers
                // purging at once only repeat each other's work.
                macro_rules! batch_ids {
                    () => {
                        "SELECT id FROM calls WHERE state IN ('succeeded', 'failed', 'cancelled') \
                         AND finished_at < $1 ORDER BY finished_at LIMIT $2"
                    };
                }
                let mut deleted = 0;
                for sql in [
                    concat!("DELETE FROM call_results WHERE id IN (", batch_ids!(), ")"),
                    concat!("DELETE FROM call_requests WHERE id IN (", batch_ids!(), ")"),
                    concat!("DELETE FROM calls WHERE id IN (", batch_ids!(), ")"),
                ] {
                    deleted = self
                        .write(sqlx::query(sql).bind(before.as_millis()).bind(i64::from(batch)))
                        .await
                        .map_err(unavailable)?;
                }
                // The calls' own rows, the last statement.
                Ok(deleted)
            }

            async fn keep_request(&self, call: &QueuedCall, at: Timestamp) -> Result<(), StoreError> {
                let meta = serde_json::to_string(&call.meta).map_err(unavailable)?;
                self.write(
                    sqlx::query(
                        "INSERT INTO call_requests (id, meta, body, stored_at) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (id) DO UPDATE SET meta = EXCLUDED.meta, body = EXCLUDED.body, \
                         stored_at = EXCLUDED.stored_at",
                    )
                    .bind(call.meta.id.as_str().to_owned())
                    .bind(meta)
                    .bind(call.body.to_vec())
                    .bind(at.as_millis()),
                )
                .await
                .map_err(unavailable)?;
                Ok(())
            }

            async fn backlog(&self) -> Result<Backlog, StoreError> {
                // Through the partial index on unfinished calls: finished ones are not read.
                let rows = sqlx::query(
                    "SELECT state, COUNT(*) AS n, MIN(submitted_at) AS oldest FROM calls \
                     WHERE state IN ('queued', 'running') GROUP BY state",
                )
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
                let mut backlog = Backlog::default();
                for row in &rows {
                    let state: String = row.get("state");
                    let n = u64::try_from(row.get::<i64, _>("n")).unwrap_or(0);
                    match state.as_str() {
                        "queued" => {
                            backlog.queued = n;
                            backlog.oldest_queued = row
                                .get::<Option<i64>, _>("oldest")
                                .map(Timestamp::from_millis);
                        }
                        _ => backlog.running = n,
                    }
                }
                Ok(backlog)
            }

            fn backend(&self) -> &'static str {
                $backend
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map(drop)
                    .map_err(unavailable)
            }

            async fn kept_request(&self, id: &CallId) -> Result<Option<QueuedCall>, StoreError> {
                let Some(row) = sqlx::query("SELECT meta, body FROM call_requests WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(unavailable)?
                else {
                    return Ok(None);
                };
                let meta: String = row.get("meta");
                Ok(Some(QueuedCall {
                    meta: serde_json::from_str(&meta).map_err(unavailable)?,
                    body: row.get::<Vec<u8>, _>("body").into(),
                }))
            }

            async fn requeue_failed(&self, id: &CallId) -> Result<Option<QueuedCall>, StoreError> {
                let mut tx = self.pool.begin().await.map_err(unavailable)?;
                let Some(row) = sqlx::query("SELECT meta, body FROM call_requests WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(unavailable)?
                else {
                    return Ok(None);
                };
                let requeued = sqlx::query(super::REQUEUE_FAILED)
                .bind(id.as_str())
                .bind(Timestamp::now().as_millis())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
                if requeued.rows_affected() == 0 {
                    return Ok(None);
                }
                sqlx::query("DELETE FROM call_requests WHERE id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                let meta: String = row.get("meta");
                let call = QueuedCall {
                    meta: serde_json::from_str(&meta).map_err(unavailable)?,
                    body: row.get::<Vec<u8>, _>("body").into(),
                };
                tx.commit().await.map_err(unavailable)?;
                Ok(Some(call))
            }

            async fn record_callback(
                &self,
                id: &CallId,
                outcome: &CallbackOutcome,
            ) -> Result<(), StoreError> {
                // The error as the timeline keeps it (it is not the callback's own text: a
                // receiver's answer or a connection's error), so it fits its bound there too.
                let shortened = outcome.error.as_deref().and_then($crate::timeline::shortened);
                let json = match shortened {
                    None => serde_json::to_string(outcome),
                    Some(error) => serde_json::to_string(&CallbackOutcome {
                        error: Some(error),
                        ..outcome.clone()
                    }),
                }
                .map_err(unavailable)?;
                let done = self
                    .write(
                        sqlx::query(super::RECORD_CALLBACK)
                            .bind(json)
                            .bind(id.as_str().to_owned()),
                    )
                    .await
                    .map_err(unavailable)?;
                if done == 0 {
                    return Err(StoreError::NotFound(format!("call {id}")));
                }
                Ok(())
            }
        }

        #[async_trait]
        impl $crate::secrets::SealedRows for $store {
            async fn names(&self, namespace: &str) -> Result<Vec<String>, StoreError> {
                let rows = sqlx::query("SELECT name FROM secrets WHERE namespace = $1 ORDER BY name")
                    .bind(namespace)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(rows.iter().map(|r| r.get("name")).collect())
            }

            async fn count(&self, namespace: &str) -> Result<u64, StoreError> {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM secrets WHERE namespace = $1")
                    .bind(namespace)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn any(&self) -> Result<Option<(String, String, Vec<u8>)>, StoreError> {
                let row = sqlx::query("SELECT namespace, name, sealed FROM secrets LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(row.map(|r| (r.get("namespace"), r.get("name"), r.get("sealed"))))
            }

            async fn get(&self, namespace: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
                let row = sqlx::query("SELECT sealed FROM secrets WHERE namespace = $1 AND name = $2")
                    .bind(namespace)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(row.map(|r| r.get("sealed")))
            }

            async fn insert(
                &self,
                namespace: &str,
                name: &str,
                sealed: Vec<u8>,
                at: Timestamp,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO secrets (namespace, name, sealed, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $4)",
                )
                .bind(namespace)
                .bind(name)
                .bind(sealed)
                .bind(at.as_millis())
                .execute(&self.pool)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict(format!("secret {name}"))
                    } else {
                        unavailable(e)
                    }
                })?;
                Ok(())
            }

            async fn update(
                &self,
                namespace: &str,
                name: &str,
                sealed: Vec<u8>,
                at: Timestamp,
            ) -> Result<(), StoreError> {
                let done = sqlx::query(
                    "UPDATE secrets SET sealed = $1, updated_at = $2 WHERE namespace = $3 AND name = $4",
                )
                .bind(sealed)
                .bind(at.as_millis())
                .bind(namespace)
                .bind(name)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("secret {name}")));
                }
                Ok(())
            }

            async fn delete(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
                let done = sqlx::query("DELETE FROM secrets WHERE namespace = $1 AND name = $2")
                    .bind(namespace)
                    .bind(name)
                    .execute(&self.pool)
                    .await
                    .map_err(unavailable)?;
                Ok(done.rows_affected() > 0)
            }
        }
        }
    };
}

pub(crate) use sql_store;

/// Records a new call, unless its id exists (numbered parameters: both databases take them).
pub(crate) const INSERT_CALL: &str = "INSERT INTO calls (id, namespace, function, method, path, \
     callback_url, state, attempts, submitted_at, trace_id, request_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (id) DO NOTHING";

/// A call's record with its timeline's columns as text (Postgres keeps them as JSONB), as
/// `record_with_timeline` reads it. The statements that write calls (`FINISH`,
/// `START_ATTEMPTS`, ...) are one per database, in `sqlite.rs` and `postgres.rs`: their SQL
/// differs only in how they write the timeline's JSON.
pub(crate) const GET_CALL: &str = "SELECT *, CAST(attempt_log AS TEXT) AS attempt_log_text, \
     CAST(callback_log AS TEXT) AS callback_log_text, \
     CAST(redrive_log AS TEXT) AS redrive_log_text FROM calls WHERE id = $1";

/// Calls started per statement of `start_attempts`.
pub(crate) const START_MANY_ROWS: usize = 500;

/// Rows per statement of `create_many`: eleven parameters each, far under either database's
/// limit on a statement's parameters.
pub(crate) const CREATE_MANY_ROWS: usize = 500;

pub(crate) fn unavailable(e: impl std::fmt::Display) -> sluice_core::StoreError {
    sluice_core::StoreError::Unavailable(e.to_string())
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}
