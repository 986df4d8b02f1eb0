use std::collections::BTreeMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::*;

fn bundle(name: &str, main: &str) -> Arc<Bundle> {
    let manifest = outpost_bundle::Manifest::for_single_file(name, main);
    let files = BTreeMap::from([(main.to_string(), b"x".to_vec())]);
    Arc::new(Bundle::new(manifest, files).unwrap())
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

use crate::empty_body as empty;

/// Answers each request with `label#instance-number`; refuses bundles whose main is
/// `bad.js`; with `hold`, never takes a request off its queue. Honours eviction.
struct Echo {
    next: AtomicUsize,
    hold: bool,
    /// How long each request stays in flight.
    delay: Duration,
}

impl Engine for Echo {
    fn instantiate(
        &self,
        spec: InstanceSpec,
        mut jobs: mpsc::Receiver<Job>,
    ) -> LocalFuture<Result<LocalFuture<()>, LoadError>> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let hold = self.hold;
        let delay = self.delay;
        Box::pin(async move {
            if spec.bundle.main() == "bad.js" {
                return Err(LoadError::new("bad.js:1: SyntaxError"));
            }
            let handle = spec.handle;
            let name = spec.bundle.manifest.name.clone();
            let serve: LocalFuture<()> = Box::pin(async move {
                if hold {
                    std::future::pending::<()>().await;
                }
                let mut registered = None;
                loop {
                    let next = poll_fn(|cx| {
                        if handle.evict_requested(cx.waker(), &mut registered) {
                            jobs.close();
                        }
                        jobs.poll_recv(cx)
                    })
                    .await;
                    let Some(job) = next else { return };
                    handle.request_started();
                    let text = format!("{name}#{id}");
                    let handle = handle.clone();
                    tokio::task::spawn_local(async move {
                        tokio::time::sleep(delay).await;
                        let body = Full::new(Bytes::from(text))
                            .map_err(|never| match never {})
                            .boxed_unsync();
                        let _ = job.reply.send(Ok(Box::new(Answer {
                            response: http::Response::new(body),
                            timing: Timing::default(),
                        })));
                        handle.request_finished();
                    });
                }
            });
            Ok(serve)
        })
    }
}

fn pool_with(config: PoolConfig, hold: bool) -> Pool {
    engine_pool(config, hold, Duration::ZERO)
}

fn engine_pool(config: PoolConfig, hold: bool, delay: Duration) -> Pool {
    let engine = Arc::new(Echo {
        next: AtomicUsize::new(0),
        hold,
        delay,
    });
    Pool::new(engine, config).unwrap()
}

fn pool(workers: usize, queue_depth: usize, hold: bool) -> Pool {
    pool_with(
        PoolConfig {
            workers,
            queue_depth,
            ..Default::default()
        },
        hold,
    )
}

async fn body_of(response: http::Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn call(deployment: &Deployment) -> String {
    let answer = deployment
        .dispatch(
            Box::new(http::Request::new(empty())),
            Stamp::default(),
            far(),
        )
        .await
        .unwrap();
    body_of(answer.response).await
}

#[tokio::test]
async fn deploy_starts_one_instance_and_more_start_on_demand() {
    let pool = pool(3, 8, false);
    let deployment = pool
        .deploy(bundle("a", "main.js"), Limits::default())
        .await
        .unwrap();
    assert_eq!(pool.stats().live, 1);
    assert_eq!(deployment.live_instances(), 1);
    // Callers that are not on a worker reach the live instance; no other starts.
    for _ in 0..5 {
        assert_eq!(call(&deployment).await, "a#0");
    }
    assert_eq!(pool.stats().created, 1);
}

#[tokio::test]
async fn load_errors_reach_the_deployer() {
    let pool = pool(2, 8, false);
    let err = pool
        .deploy(bundle("a", "bad.js"), Limits::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.message, "bad.js:1: SyntaxError");
    assert_eq!(pool.stats().live, 0, "a failed start frees its place");
}

#[tokio::test]
async fn full_queues_answer_overloaded() {
    let pool = pool(1, 2, true);
    let deployment = pool
        .deploy(bundle("a", "main.js"), Limits::default())
        .await
        .unwrap();
    for _ in 0..2 {
        let d = deployment.clone();
        tokio::spawn(async move {
            d.dispatch(
                Box::new(http::Request::new(empty())),
                Stamp::default(),
                far(),
            )
            .await
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let result = deployment
        .dispatch(
            Box::new(http::Request::new(empty())),
            Stamp::default(),
            far(),
        )
        .await;
    assert_eq!(result.err(), Some(DispatchError::Overloaded));
}

/// Runs `calls` dispatches of `deployment` on worker `worker` and returns the answers.
async fn call_on(pool: &Pool, worker: usize, deployment: &Deployment, calls: usize) -> Vec<String> {
    let (tx, rx) = oneshot::channel();
    let d = deployment.clone();
    let task: Task = Box::new(move || {
        Box::pin(async move {
            let mut seen = Vec::new();
            for _ in 0..calls {
                seen.push(call(&d).await);
            }
            let _ = tx.send(seen);
        })
    });
    pool.spawn_on(worker, task).await.unwrap();
    rx.await.unwrap()
}

#[tokio::test]
async fn work_on_a_worker_goes_where_the_app_is_live() {
    let pool = pool(3, 8, false);
    let deployment = pool
        .deploy(bundle("a", "main.js"), Limits::default())
        .await
        .unwrap();
    // The one live instance serves every worker's requests while it is not busy.
    for worker in 0..3 {
        let seen = call_on(&pool, worker, &deployment, 4).await;
        assert!(seen.iter().all(|s| s == "a#0"), "{seen:?}");
    }
    assert_eq!(pool.stats().created, 1);
}

#[tokio::test]
async fn the_isolate_budget_evicts_least_recently_used_idle_instances() {
    let pool = pool_with(
        PoolConfig {
            workers: 2,
            max_isolates: 3,
            ..Default::default()
        },
        false,
    );
    let mut deployments = Vec::new();
    for i in 0..10 {
        let d = pool
            .deploy(bundle(&format!("app{i}"), "main.js"), Limits::default())
            .await
            .unwrap();
        deployments.push(d);
    }
    for round in 0..3 {
        for (i, d) in deployments.iter().enumerate() {
            let answer = call(d).await;
            assert!(
                answer.starts_with(&format!("app{i}#")),
                "round {round}: {answer}"
            );
            let stats = pool.stats();
            assert!(stats.live <= 3, "{stats:?}");
        }
    }
    let stats = pool.stats();
    assert!(stats.peak <= 3, "{stats:?}");
    assert!(stats.evicted >= 27, "{stats:?}");
    // The most recently used apps are the ones still live.
    assert!(deployments[9].live_instances() == 1);
    assert!(deployments[0].live_instances() == 0);
}

#[tokio::test]
async fn idle_instances_are_evicted_after_the_timeout_and_come_back_on_demand() {
    let pool = pool_with(
        PoolConfig {
            idle_timeout: Duration::from_millis(100),
            ..Default::default()
        },
        false,
    );
    let deployment = pool
        .deploy(bundle("a", "main.js"), Limits::default())
        .await
        .unwrap();
    assert_eq!(call(&deployment).await, "a#0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().live > 0 {
        assert!(Instant::now() < deadline, "{:?}", pool.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(deployment.live_instances(), 0);
    assert_eq!(call(&deployment).await, "a#1", "a new instance answers");
}

#[tokio::test]
async fn a_busy_app_scales_out_to_other_workers() {
    let pool = engine_pool(
        PoolConfig {
            workers: 2,
            scale_out_at: 1,
            ..Default::default()
        },
        false,
        Duration::from_millis(300),
    );
    let deployment = pool
        .deploy(bundle("a", "main.js"), Limits::default())
        .await
        .unwrap();
    let d = deployment.clone();
    let first = tokio::spawn(async move { call(&d).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The live instance is busy: this request starts a second instance on the other worker.
    let second = call(&deployment).await;
    assert_eq!(deployment.live_instances(), 2, "{:?}", pool.stats());
    assert_eq!(first.await.unwrap(), "a#0");
    assert!(second.starts_with("a#"), "{second}");
    assert_eq!(pool.stats().created, 2);
}

#[tokio::test]
async fn a_failing_app_backs_off_between_starts() {
    let pool = pool(1, 8, false);
    let deployment = Deployment::new(
        pool.shared_for_tests(),
        bundle("a", "bad.js"),
        Limits::default(),
    );
    let first = deployment
        .dispatch(
            Box::new(http::Request::new(empty())),
            Stamp::default(),
            far(),
        )
        .await;
    assert!(
        matches!(first, Err(DispatchError::LoadFailed(_))),
        "{first:?}"
    );
    // Within the backoff, no start is tried: the same error comes back at once.
    for _ in 0..50 {
        let again = deployment
            .dispatch(
                Box::new(http::Request::new(empty())),
                Stamp::default(),
                far(),
            )
            .await;
        assert!(
            matches!(again, Err(DispatchError::LoadFailed(_))),
            "{again:?}"
        );
    }
    assert!(pool.stats().created <= 2, "{:?}", pool.stats());
}

#[tokio::test]
async fn a_busy_app_stays_within_its_instance_cap() {
    let pool = engine_pool(
        PoolConfig {
            workers: 3,
            scale_out_at: 1,
            max_instances_per_app: 2,
            ..Default::default()
        },
        false,
        Duration::from_millis(200),
    );
    let deployment = pool
        .deploy(bundle("a", "main.js"), Limits::default())
        .await
        .unwrap();
    let mut calls = Vec::new();
    for _ in 0..12 {
        let d = deployment.clone();
        calls.push(tokio::spawn(async move { call(&d).await }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for c in calls {
        assert!(c.await.unwrap().starts_with("a#"));
    }
    assert_eq!(pool.stats().created, 2, "{:?}", pool.stats());
}

/// A worker stuck in a long turn (an isolate running JavaScript that does not yield) is
/// given no new connections while another worker is free, and takes them again once the
/// turn ends; an idle worker is never taken for stalled.
#[tokio::test]
async fn connections_go_around_a_worker_stuck_in_a_turn() {
    let pool = pool(2, 8, false);
    let noop = || -> Task { Box::new(|| Box::pin(async {})) };
    // Idle for longer than a stall: still first choice.
    tokio::time::sleep(crate::pool::STALLED * 3).await;
    assert_eq!(pool.spawn_on(0, noop()).await.unwrap(), 0);

    let (entered_tx, entered_rx) = oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel();
    let stuck: Task = Box::new(move || {
        Box::pin(async move {
            let turn = busy_from(outpost_clock::precise_nanos());
            let _ = entered_tx.send(());
            // Blocks the worker thread, as a JavaScript loop does, until released.
            let _ = release_rx.recv();
            drop(turn);
            let _ = done_tx.send(());
        })
    });
    assert_eq!(pool.spawn_on(0, stuck).await.unwrap(), 0);
    entered_rx.await.unwrap();
    tokio::time::sleep(crate::pool::STALLED * 3).await;
    for _ in 0..3 {
        assert_eq!(
            pool.spawn_on(0, noop()).await.unwrap(),
            1,
            "worker 0 is stuck"
        );
    }
    assert_eq!(pool.spawn_on(1, noop()).await.unwrap(), 1);

    release_tx.send(()).unwrap();
    done_rx.await.unwrap();
    assert_eq!(
        pool.spawn_on(0, noop()).await.unwrap(),
        0,
        "worker 0 is free again"
    );
}
