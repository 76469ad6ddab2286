//! The queue contract on a real `nats-server -js`, plus what only JetStream has to show: a
//! server restart loses nothing, named queues are apart, and an outage fails fast.

use std::time::Duration;

use sluice_core::{CallQueue, QueueError, QueueName};
use sluice_nats::{JetStreamConfig, JetStreamQueue};
use sluice_testkit::NatsServer;
use sluice_testkit::queue_contract::{self, call};

async fn queue(nats: &NatsServer, lease: Duration) -> JetStreamQueue {
    let mut config = JetStreamConfig::new(nats.url());
    config.lease = lease;
    JetStreamQueue::connect(config).await.unwrap()
}

#[tokio::test]
async fn jetstream_delivers_whole_once_and_ack_removes() {
    let nats = NatsServer::start();
    queue_contract::delivers_whole_once_and_ack_removes(
        &queue(&nats, Duration::from_secs(30)).await,
    )
    .await;
}

#[tokio::test]
async fn jetstream_expired_lease_redelivers() {
    let nats = NatsServer::start();
    queue_contract::expired_lease_redelivers(&queue(&nats, Duration::from_millis(500)).await).await;
}

#[tokio::test]
async fn jetstream_keep_alive_holds_the_call() {
    let nats = NatsServer::start();
    queue_contract::keep_alive_holds_the_call(&queue(&nats, Duration::from_secs(1)).await).await;
}

#[tokio::test]
async fn jetstream_release_honours_the_delay() {
    let nats = NatsServer::start();
    queue_contract::release_honours_the_delay(&queue(&nats, Duration::from_secs(30)).await).await;
}

#[tokio::test]
async fn jetstream_large_bodies_and_redrives() {
    let nats = NatsServer::start();
    queue_contract::large_bodies_and_redrives(&queue(&nats, Duration::from_secs(30)).await).await;
}

#[tokio::test]
async fn named_queues_are_kept_apart() {
    let nats = NatsServer::start();
    let default = queue(&nats, Duration::from_secs(30)).await;
    let mut config = JetStreamConfig::new(nats.url());
    config.queue = QueueName::parse("slow").unwrap();
    let slow = JetStreamQueue::connect(config).await.unwrap();
    let mut c = call("to-slow", &b"x"[..]);
    c.meta.queue = Some(QueueName::parse("slow").unwrap());
    assert!(default.enqueue(&c).await.unwrap());
    assert!(
        default
            .next(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none(),
        "the default queue's consumer took a call for queue slow"
    );
    let d = slow.next(Duration::from_secs(10)).await.unwrap().unwrap();
    assert_eq!(d.call, c);
    d.lease.ack().await.unwrap();
}

#[tokio::test]
async fn survives_a_server_restart_and_fails_fast_while_it_is_down() {
    let mut nats = NatsServer::start();
    let q = queue(&nats, Duration::from_secs(30)).await;
    assert!(q.enqueue(&call("before", &b"kept"[..])).await.unwrap());
    nats.kill();
    // While the server is gone an enqueue fails (the gateway turns that into a 503); it is
    // not buffered to be sent later. The client may need a moment to notice the loss.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match q.enqueue(&call("during", &b"lost"[..])).await {
            Err(QueueError::Unavailable(_)) => break,
            Ok(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "enqueue kept succeeding with NATS down"
            ),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let started = tokio::time::Instant::now();
    assert!(q.enqueue(&call("during2", &b"lost"[..])).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a refused enqueue waited"
    );
    nats.restart();
    // The client reconnects by itself; the call stored before the crash is still there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let d = loop {
        match q.next(Duration::from_secs(1)).await {
            Ok(Some(d)) if d.call.meta.id.as_str() == "before" => break d,
            Ok(Some(d)) => panic!("unexpected call {}", d.call.meta.id),
            Ok(None) => assert!(
                tokio::time::Instant::now() < deadline,
                "the queued call did not come back"
            ),
            Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the queued call did not come back"
                );
                // Refusals are immediate: poll, giving the client's reconnect task a turn.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(d.call.body.as_ref(), b"kept");
    d.lease.ack().await.unwrap();
    assert!(q.enqueue(&call("after", &b"y"[..])).await.unwrap());
}

#[tokio::test]
async fn a_worker_with_a_shorter_lease_does_not_shorten_the_queues() {
    let nats = NatsServer::start();
    let long = queue(&nats, Duration::from_secs(3)).await;
    let short = queue(&nats, Duration::from_millis(500)).await;
    assert!(long.enqueue(&call("a", &b"x"[..])).await.unwrap());
    let d = long.next(Duration::from_secs(10)).await.unwrap().unwrap();
    // The long-lease worker renews every second, as it would at a third of its lease; the
    // short-lease worker, polling meanwhile, must never be handed the call.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        if let Some(other) = short.next(Duration::from_secs(1)).await.unwrap() {
            panic!(
                "redelivered to the short-lease worker: {}",
                other.call.meta.id
            );
        }
        d.lease.keep_alive().await.unwrap();
    }
    d.lease.ack().await.unwrap();
}

#[tokio::test]
async fn bodies_no_call_needs_are_swept_and_queued_ones_kept() {
    use sluice_core::{CallOutcome, CallRecord, CallState, CallStore, Timestamp};
    let nats = NatsServer::start();
    let q = queue(&nats, Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let calls = sluice_store::SqliteStore::new(
        sluice_store::open_sqlite(&dir.path().join("db"))
            .await
            .unwrap(),
    );
    // A queued call with a large body: its object must stay.
    let big = call("queued-big", vec![7u8; 3 * 1024 * 1024]);
    calls.create(&CallRecord::queued(&big.meta)).await.unwrap();
    assert!(q.enqueue(&big).await.unwrap());
    // Objects left behind: one whose call finished, one whose call is unknown.
    let done = call("done", &b""[..]);
    calls.create(&CallRecord::queued(&done.meta)).await.unwrap();
    let outcome = CallOutcome {
        state: CallState::Succeeded,
        status_code: Some(200),
        error: None,
        finished_at: Timestamp::now(),
        duration_ms: 1,
    };
    calls.finish(&done.meta.id, &outcome).await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let bucket = async_nats::jetstream::new(client)
        .get_object_store("SLUICE_BODIES")
        .await
        .unwrap();
    for name in ["done.0123abcd", "nobody#redrive-2.4567cdef"] {
        bucket.put(name, &mut &b"left behind"[..]).await.unwrap();
    }
    let names = |bucket: async_nats::jetstream::object_store::ObjectStore| async move {
        use futures_util::StreamExt;
        let mut list = bucket.list().await.unwrap();
        let mut names = Vec::new();
        while let Some(info) = list.next().await {
            names.push(info.unwrap().name);
        }
        names.sort();
        names
    };
    assert_eq!(names(bucket.clone()).await.len(), 3);

    // Nothing is old enough yet.
    assert_eq!(
        q.sweep_bodies(&calls, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    // Everything is, from a second on: the two left behind go, the queued call's stays.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut swept = 0;
    loop {
        swept += q.sweep_bodies(&calls, Duration::ZERO).await.unwrap();
        if swept >= 2 || tokio::time::Instant::now() > deadline {
            assert_eq!(swept, 2);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = names(bucket).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with("queued-big."), "{left:?}");
    let d = q.next(Duration::from_secs(10)).await.unwrap().unwrap();
    assert_eq!(d.call.body, big.body);
    d.lease.ack().await.unwrap();
}

#[tokio::test]
async fn jetstream_takes_several_at_once() {
    let nats = NatsServer::start();
    queue_contract::takes_several_at_once(&queue(&nats, Duration::from_secs(30)).await).await;
}
