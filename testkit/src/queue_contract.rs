//! What every [`CallQueue`] must do. Each backend's tests call these with a fresh queue.
//!
//! Waits are bounded polls, never sleeps: a queue that fails to deliver fails the test at its
//! deadline instead of hanging it.

use std::time::Duration;

use bytes::Bytes;
use sluice_core::{CallId, CallMeta, CallQueue, Delivery, FunctionRef, QueuedCall, Timestamp};

/// Longest a delivery that is due may take to arrive.
const DUE: Duration = Duration::from_secs(10);
/// How long "nothing is delivered" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// A call with every field set, so a round trip that drops one is caught.
pub fn call(id: &str, body: impl Into<Bytes>) -> QueuedCall {
    QueuedCall {
        meta: CallMeta {
            id: CallId::parse(id).expect("a valid call id"),
            function: FunctionRef::parse("echo", None).expect("a valid name"),
            method: "PUT".into(),
            path: "/a/b".into(),
            query: Some("x=1".into()),
            headers: vec![("content-type".into(), "text/plain".into())],
            callback_url: Some("http://127.0.0.1:1/cb".into()),
            submitted_at: Timestamp::now(),
            queue: None,
            redrive: 0,
        },
        body: body.into(),
    }
}

async fn due(q: &dyn CallQueue) -> Delivery {
    q.next(DUE)
        .await
        .expect("the queue is available")
        .expect("a due call was not delivered")
}

async fn assert_quiet(q: &dyn CallQueue, why: &str) {
    if let Some(d) = q.next(QUIET).await.expect("the queue is available") {
        panic!("{why}: got {}", d.call.meta.id);
    }
}

/// Calls come out whole, one delivery at a time, once per id; ack removes them.
pub async fn delivers_whole_once_and_ack_removes(q: &dyn CallQueue) {
    let a = call("a", &b"first"[..]);
    assert!(q.enqueue(&a).await.unwrap());
    assert!(q.enqueue(&call("b", &b"second"[..])).await.unwrap());
    assert!(
        !q.enqueue(&call("a", &b"dup"[..])).await.unwrap(),
        "the same call id was queued twice"
    );
    let d1 = due(q).await;
    let d2 = due(q).await;
    let (da, db) = if d1.call.meta.id.as_str() == "a" {
        (d1, d2)
    } else {
        (d2, d1)
    };
    assert_eq!(da.call, a);
    assert_eq!(da.delivery_count, 1);
    assert_eq!(db.call.meta.id.as_str(), "b");
    assert_eq!(db.call.body.as_ref(), b"second");
    assert_quiet(q, "a leased call was handed out again").await;
    da.lease.ack().await.unwrap();
    db.lease.ack().await.unwrap();
    assert_quiet(q, "an acked call came back").await;
}

/// A lease nobody keeps alive runs out and the call is delivered again.
pub async fn expired_lease_redelivers(q: &dyn CallQueue) {
    q.enqueue(&call("a", &b"x"[..])).await.unwrap();
    let first = due(q).await;
    let second = due(q).await;
    assert_eq!(second.call.meta.id.as_str(), "a");
    assert_eq!(second.delivery_count, 2);
    drop(first);
    second.lease.ack().await.unwrap();
    assert_quiet(q, "an acked call came back").await;
}

/// In-progress acks hold a call well past its lease. The queue's lease must be about a second.
pub async fn keep_alive_holds_the_call(q: &dyn CallQueue) {
    let lease = q.lease_duration();
    q.enqueue(&call("a", &b"x"[..])).await.unwrap();
    let d = due(q).await;
    let until = tokio::time::Instant::now() + lease * 3;
    while tokio::time::Instant::now() < until {
        d.lease.keep_alive().await.unwrap();
        if let Some(other) = q.next(lease / 4).await.unwrap() {
            panic!("redelivered while kept alive: {}", other.call.meta.id);
        }
    }
    d.lease.ack().await.unwrap();
    assert_quiet(q, "an acked call came back").await;
}

/// A released call comes back: at once, or not before its delay.
pub async fn release_honours_the_delay(q: &dyn CallQueue) {
    q.enqueue(&call("a", &b"x"[..])).await.unwrap();
    let d = due(q).await;
    d.lease.release(Duration::ZERO).await.unwrap();
    let d = due(q).await;
    assert_eq!(d.call.meta.id.as_str(), "a");
    assert_eq!(d.delivery_count, 2);
    d.lease.release(Duration::from_secs(3600)).await.unwrap();
    assert_quiet(q, "a call released for an hour came back at once").await;
    q.enqueue(&call("b", &b"y"[..])).await.unwrap();
    let d = due(q).await;
    assert_eq!(
        d.call.meta.id.as_str(),
        "b",
        "a delayed call blocked the next"
    );
    d.lease.ack().await.unwrap();
}

/// A body far larger than one NATS message comes out byte for byte, and a re-driven call (same
/// id, next re-drive round) is queued anew.
pub async fn large_bodies_and_redrives(q: &dyn CallQueue) {
    let body: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let big = call("big", body.clone());
    assert!(q.enqueue(&big).await.unwrap());
    let d = due(q).await;
    assert_eq!(d.call.body.len(), body.len());
    assert!(d.call.body.as_ref() == body.as_slice(), "the body changed");
    assert_eq!(d.call.meta, big.meta);
    d.lease.ack().await.unwrap();

    let mut again = call("big", &b"small now"[..]);
    again.meta.redrive = 1;
    assert!(
        q.enqueue(&again).await.unwrap(),
        "a re-drive was taken for a duplicate"
    );
    let d = due(q).await;
    assert_eq!(d.call.meta.redrive, 1);
    assert_eq!(d.call.body.as_ref(), b"small now");
    d.lease.ack().await.unwrap();
}

/// A worker with room for several calls takes what is due in one go, each call with a lease of
/// its own; with nothing due it waits for the first to come.
pub async fn takes_several_at_once(q: &dyn CallQueue) {
    for i in 0..5 {
        assert!(
            q.enqueue(&call(&format!("many-{i}"), &b"x"[..]))
                .await
                .unwrap()
        );
    }
    // JetStream may hand over what it has in more than one go: gather up to the deadline.
    let mut taken = Vec::new();
    let deadline = tokio::time::Instant::now() + DUE;
    while taken.len() < 3 && tokio::time::Instant::now() < deadline {
        let want = 3 - taken.len();
        let got = q
            .next_many(want, QUIET)
            .await
            .expect("the queue is available");
        assert!(got.len() <= want, "asked for {want}, got {}", got.len());
        taken.extend(got);
    }
    assert_eq!(taken.len(), 3, "three due calls were not handed out");
    let mut rest = Vec::new();
    while rest.len() < 2 && tokio::time::Instant::now() < deadline {
        rest.extend(
            q.next_many(10, QUIET)
                .await
                .expect("the queue is available"),
        );
    }
    let mut ids: Vec<String> = taken
        .iter()
        .chain(&rest)
        .map(|d| d.call.meta.id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["many-0", "many-1", "many-2", "many-3", "many-4"]);
    assert!(
        q.next_many(10, QUIET).await.unwrap().is_empty(),
        "leased calls were handed out again"
    );
    // Each lease is its own: one given back comes back alone; the others are acked.
    let mut all = taken.into_iter().chain(rest);
    let back = all.next().expect("a delivery");
    let back_id = back.call.meta.id.clone();
    back.lease.release(Duration::ZERO).await.unwrap();
    for d in all {
        d.lease.ack().await.unwrap();
    }
    let again = q.next_many(10, DUE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].call.meta.id, back_id);
    assert_eq!(again[0].delivery_count, 2);
    for d in again {
        d.lease.ack().await.unwrap();
    }
    assert_quiet(q, "an acked call came back").await;
}
