//! The controller shell around the planner: watches, observation, one reconcile per run, and
//! the error policy.
//!
//! ```text
//!  watch TrainingRuns ──► Controller ──► reconcile(run) ─► observe ─► plan ─► execute
//!  watch own Pods, Services ─┘  ▲            │ stores: pods (all: GPU use), nodes, services,
//!  watch Nodes ─► pending runs ─┘            │ priority classes; progress from the store
//!                 and runs on the node       └► Action: requeue after / await change
//! ```
//!
//! Admission decisions are serialised by one lock, and each admission is remembered (the
//! ledger) until the run store shows it, so two runs are never admitted into the same GPUs
//! because the cache lagged behind the previous decision.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tessera_api::TrainingRun;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::OperatorConfig;
use crate::error::Error;
use crate::execute::Executor;
use crate::metrics::Metrics;
use crate::names;
use crate::observe::{PodIndex, Snapshot, SnapshotCache, slim_pod};
use crate::plan::capacity::{GangDemand, QueueState, QueuedRun};
use crate::plan::condition::{ADMITTED, RESTARTING};
use crate::plan::{Observed, plan};
use crate::progress::{ProgressError, StoreProgress};

/// How long an admission is remembered while the run store has not caught up with it.
const LEDGER_TTL: Duration = Duration::from_secs(60);

/// What every reconcile shares.
pub struct Context {
    pub config: OperatorConfig,
    executor: Executor,
    progress: StoreProgress,
    runs: Store<TrainingRun>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    services: Store<Service>,
    priority_classes: Store<PriorityClass>,
    metrics: Metrics,
    /// Runs admitted by this replica that the run store may not show yet.
    admissions: Mutex<HashMap<(String, String), (GangDemand, Instant)>>,
    /// The PodGroup minMember last applied per run uid (pod groups are not watched).
    pod_groups: std::sync::Mutex<HashMap<String, u32>>,
    pod_index: PodIndex,
    snapshots: SnapshotCache,
    /// Runs as this replica last wrote them, until the run cache shows that write.
    written: std::sync::Mutex<HashMap<String, Arc<TrainingRun>>>,
    /// Cancelled once every watch has listed: no run is planned before (a plan from a
    /// half-filled node cache would call a fitting gang short of GPUs).
    synced: CancellationToken,
}

impl Context {
    /// The cached run, or this replica's own newer write of it when the cache lags behind.
    fn freshest(&self, cached: Arc<TrainingRun>) -> Arc<TrainingRun> {
        let uid = cached.uid().unwrap_or_default();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match written.get(&uid) {
            Some(ours) if is_newer(ours, &cached) => ours.clone(),
            Some(_) => {
                written.remove(&uid);
                cached
            }
            None => cached,
        }
    }

    fn remember(&self, uid: &str, run: Option<TrainingRun>) {
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        match run {
            Some(run) => written.insert(uid.to_string(), Arc::new(run)),
            None => written.remove(uid),
        };
    }
}

/// Whether our written copy is newer than the cached one. Resource versions are etcd
/// revisions on every real API server, so numeric ones are compared; otherwise ours wins only
/// while the cache shows no newer spec and no deletion.
fn is_newer(ours: &TrainingRun, cached: &TrainingRun) -> bool {
    if cached.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let (ours_version, cached_version) = (ours.resource_version(), cached.resource_version());
    match (
        ours_version.as_deref().and_then(|v| v.parse::<u64>().ok()),
        cached_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok()),
    ) {
        (Some(ours), Some(cached)) => ours > cached,
        _ => {
            ours_version != cached_version && ours.metadata.generation >= cached.metadata.generation
        }
    }
}

/// Where the controller watches and how it writes.
pub struct ControllerSettings {
    pub config: OperatorConfig,
    /// Watch one namespace; `None` for all.
    pub namespace: Option<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// The `reportingInstance` of Events (the pod name).
    pub instance: String,
}

/// Runs the controller until `shutdown` is cancelled; `ready` is cancelled once every watch
/// has listed its objects.
pub async fn run_controller(
    client: Client,
    settings: ControllerSettings,
    progress: StoreProgress,
    metrics: Metrics,
    ready: CancellationToken,
    shutdown: CancellationToken,
) {
    let (runs_api, services_api): (Api<TrainingRun>, Api<Service>) = match &settings.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };

    // Each store is filled by the same stream that triggers reconciles, so a reconcile never
    // reads a store older than the change that woke it.
    // Every pod, not only ours: other workloads hold GPUs too. Pods are stored slim, and
    // indexed by owner as they arrive.
    let pod_index = PodIndex::default();
    let (pods, pods_writer) = reflector::store();
    let pod_events = {
        let index = pod_index.clone();
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(slim_pod)
            .reflect(pods_writer)
            .inspect(move |event| {
                if let Ok(event) = event {
                    index.apply(event);
                }
            })
            .touched_objects()
            .inspect(log_watch_error::<Pod>)
    };
    let (nodes, node_events) =
        reflected(Api::<Node>::all(client.clone()), watcher::Config::default());
    let (services, service_events) = reflected(
        services_api,
        watcher::Config::default().labels(names::LABEL_RUN),
    );
    let mut watches = JoinSet::new();
    let priority_classes = spawn_reflector(
        &mut watches,
        Api::<PriorityClass>::all(client.clone()),
        watcher::Config::default(),
    );

    let controller = Controller::new(runs_api, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .owns_stream(pod_events)
        .owns_stream(service_events);
    let runs = controller.store();
    let recorder = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: names::FIELD_MANAGER.to_string(),
            instance: Some(settings.instance.clone()),
        },
    );
    let context = Arc::new(Context {
        config: settings.config,
        executor: Executor::new(client.clone(), recorder, progress.clone()),
        progress,
        runs: runs.clone(),
        pods: pods.clone(),
        nodes: nodes.clone(),
        services: services.clone(),
        priority_classes: priority_classes.clone(),
        metrics: metrics.clone(),
        admissions: Mutex::new(HashMap::new()),
        pod_groups: std::sync::Mutex::new(HashMap::new()),
        pod_index: pod_index.clone(),
        snapshots: SnapshotCache::default(),
        written: std::sync::Mutex::new(HashMap::new()),
        synced: ready.clone(),
    });

    let node_runs = runs.clone();
    let node_pods = pods.clone();
    let controller = controller.watches_stream(node_events, move |node: Node| {
        runs_affected_by_node(&node, &node_runs, &node_pods)
    });

    {
        let (runs, pods, nodes, services, classes) = (
            runs.clone(),
            pods.clone(),
            nodes.clone(),
            services.clone(),
            priority_classes.clone(),
        );
        let ready = ready.clone();
        watches.spawn(async move {
            let synced = synced(&runs).await
                && synced(&pods).await
                && synced(&nodes).await
                && synced(&services).await
                && synced(&classes).await;
            if synced {
                tracing::info!("watches synced");
                ready.cancel();
            }
        });
    }
    {
        let (runs, metrics) = (runs.clone(), metrics.clone());
        watches.spawn(async move {
            loop {
                metrics.count_runs(runs.state().iter().map(|r| r.as_ref()));
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }

    let stop = shutdown.clone();
    controller
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile did not complete");
            }
        })
        .await;
    watches.abort_all();
}

/// A store and the stream of changes that fills it (each change is in the store before the
/// stream yields it). The stream must be polled: the controller does, as a trigger.
fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Watched,
{
    let (reader, writer) = reflector::store();
    let events = watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .inspect(log_watch_error::<K>);
    (reader, events)
}

/// What a watched and cached kind must be.
trait Watched:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

fn log_watch_error<K: Resource<DynamicType = ()>>(event: &Result<K, watcher::Error>) {
    if let Err(error) = event {
        tracing::warn!(%error, kind = %K::kind(&()), "watch failed; retrying");
    }
}

/// A store filled by a watch that runs as a task of its own (nothing triggers on its changes).
fn spawn_reflector<K>(tasks: &mut JoinSet<()>, api: Api<K>, config: watcher::Config) -> Store<K>
where
    K: Watched,
{
    let (reader, events) = reflected(api, config);
    tasks.spawn(events.for_each(|_| async {}));
    reader
}

/// Waits until the store has listed its objects; false if its watch is gone.
///
/// `Store::wait_until_ready` wakes only the last of several waiters (the controller waits on
/// the run store too), so wait in short rounds: each round polls again.
async fn synced<K>(store: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await {
            Ok(result) => return result.is_ok(),
            Err(_) => continue,
        }
    }
}

/// A node changed: runs waiting for capacity, and runs with pods on it, plan again.
fn runs_affected_by_node(
    node: &Node,
    runs: &Store<TrainingRun>,
    pods: &Store<Pod>,
) -> Vec<ObjectRef<TrainingRun>> {
    let node_name = node.name_any();
    let owners: Vec<String> = pods
        .state()
        .iter()
        .filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name.as_str())
        })
        .flat_map(|p| {
            p.owner_references()
                .iter()
                .map(|o| o.uid.clone())
                .collect::<Vec<_>>()
        })
        .collect();
    runs.state()
        .iter()
        .filter(|run| {
            let waiting = !run.status.as_ref().is_some_and(|s| s.is_true(ADMITTED));
            let finished = run
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| p.is_terminal());
            (waiting && !finished) || run.uid().is_some_and(|uid| owners.contains(&uid))
        })
        .map(|run| ObjectRef::from_obj(run.as_ref()))
        .collect()
}

async fn reconcile(run: Arc<TrainingRun>, context: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_run(&run, &context).await;
    match &result {
        Ok(_) => context.metrics.reconciled(started.elapsed()),
        Err(error) => {
            tracing::warn!(run = %run.name_any(), %error, "reconcile failed");
            context
                .metrics
                .failed(error.metric_label(), started.elapsed());
        }
    }
    result
}

fn error_policy(_run: Arc<TrainingRun>, error: &Error, context: Arc<Context>) -> Action {
    // A conflict means a newer copy is on its way: look again soon.
    if error.is_conflict() {
        Action::requeue(context.config.settle_retry)
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}

async fn reconcile_run(run: &Arc<TrainingRun>, context: &Context) -> Result<Action, Error> {
    if !context.synced.is_cancelled() {
        return Ok(Action::requeue(context.config.settle_retry));
    }
    // The freshest copy: the trigger may be older than the cache, and the cache older than
    // this replica's own last write (planning from a stale status would undo it).
    let cached = context
        .runs
        .get(&ObjectRef::from_obj(run.as_ref()))
        .unwrap_or_else(|| run.clone());
    let run = context.freshest(cached);
    let name = run.name_any();
    let namespace = run
        .namespace()
        .ok_or_else(|| Error::NoNamespace(name.clone()))?;
    let before = run.status.clone().unwrap_or_default();
    let admitting = run.metadata.deletion_timestamp.is_none()
        && !before.is_true(ADMITTED)
        && !before.phase.is_some_and(|p| p.is_terminal());
    // A finished or deleted run's plan reads no progress: skip the store round trip.
    let settled =
        run.metadata.deletion_timestamp.is_some() || before.phase.is_some_and(|p| p.is_terminal());
    let progress = if settled {
        None
    } else {
        match context.progress.progress(&namespace, &name).await {
            Ok(progress) => progress,
            Err(error @ ProgressError::Malformed { .. }) => {
                tracing::warn!(%error, "ignoring malformed progress");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "could not read progress; planning without it");
                None
            }
        }
    };
    let uid = run.uid().unwrap_or_default();
    let run_pods = context.pod_index.owned_by(&uid, &context.pods);
    let service = ObjectRef::<Service>::new(&names::service_name(&name)).within(&namespace);
    let pod_group_min_member = context
        .pod_groups
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&uid)
        .copied();
    let key = (namespace.clone(), name.clone());

    // Admission decisions are taken one at a time, each recorded in the ledger before the
    // next is taken; the lock is not held while the plan is carried out.
    let admission = if admitting {
        Some(context.admissions.lock().await)
    } else {
        None
    };
    let snapshot =
        context
            .snapshots
            .get(&context.nodes, &context.pods, &context.config.gpu_resource);
    let mut admission = admission;
    let queue = match admission.as_deref_mut() {
        Some(ledger) => build_queue(&run, context, &snapshot, ledger),
        None => Vec::new(),
    };
    let observed = Observed {
        pods: run_pods.iter().map(|p| p.as_ref()).collect(),
        service_exists: context.services.get(&service).is_some(),
        pod_group_min_member,
        cluster: &snapshot.cluster,
        queue: &queue,
        priority: priority_of(&run, &context.priority_classes),
        progress,
        now: Timestamp::now(),
    };
    let plan = plan(&run, &observed, &context.config);
    let admitted_now = admitting && plan.status.is_true(ADMITTED);
    if let Some(mut ledger) = admission {
        if admitted_now {
            let nodes = plan.status.nodes.unwrap_or(run.spec.parallelism.nodes);
            ledger.insert(
                key.clone(),
                (GangDemand::of_run(&run, nodes), Instant::now()),
            );
        }
        drop(ledger);
    }

    match context.executor.execute(&run, &plan).await {
        Ok(written) => context.remember(&uid, written),
        Err(error) => {
            if admitted_now {
                // The admission was not recorded: free its reservation.
                context.admissions.lock().await.remove(&key);
            }
            return Err(error);
        }
    }

    for action in &plan.actions {
        if let crate::plan::Action::ApplyPodGroup { pod_group, .. } = action
            && let Some(min) = pod_group.data["spec"]["minMember"].as_u64()
        {
            context
                .pod_groups
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid.clone(), min as u32);
        }
    }
    if admitted_now && let Some(created) = &run.metadata.creation_timestamp {
        let waited = created.0.duration_until(Timestamp::now());
        context
            .metrics
            .admitted_after(Duration::try_from(waited).unwrap_or_default());
    }
    if plan.status.restarts > before.restarts
        && let Some(restarting) = plan.status.condition(RESTARTING)
    {
        context.metrics.gang_restarted(&restarting.reason);
    }
    Ok(plan
        .requeue_after
        .map_or_else(Action::await_change, Action::requeue))
}

/// The runs competing with `run` for GPUs: waiting runs, and admitted runs whose pods are not
/// all bound yet (from the store, or from the ledger when the store lags).
fn build_queue(
    run: &TrainingRun,
    context: &Context,
    snapshot: &Snapshot,
    ledger: &mut HashMap<(String, String), (GangDemand, Instant)>,
) -> Vec<QueuedRun> {
    ledger.retain(|_, (_, at)| at.elapsed() < LEDGER_TTL);
    let me = (run.namespace().unwrap_or_default(), run.name_any());
    let mut queue = Vec::new();
    for other in context.runs.state() {
        let key = (other.namespace().unwrap_or_default(), other.name_any());
        if key == me || other.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let status = other.status.as_ref();
        let finished = status
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_terminal());
        if finished || other.spec.scheduling.suspend {
            ledger.remove(&key);
            continue;
        }
        let created = other.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let priority = priority_of(&other, &context.priority_classes);
        let (demand, state) = match status {
            Some(status) if status.is_true(ADMITTED) => {
                ledger.remove(&key);
                let nodes = status.nodes.unwrap_or(other.spec.parallelism.nodes);
                let generation = status.generation.unwrap_or(0).to_string();
                let uid = other.uid().unwrap_or_default();
                let placed = snapshot.bound.get(&(uid, generation)).copied().unwrap_or(0);
                let mut demand = GangDemand::of_run(&other, nodes);
                demand.pods = nodes.saturating_sub(placed);
                (demand, QueueState::Placing)
            }
            _ => match ledger.get(&key) {
                Some((demand, _)) => (demand.clone(), QueueState::Placing),
                None => (
                    GangDemand::of_run(&other, other.spec.parallelism.nodes),
                    QueueState::Waiting,
                ),
            },
        };
        if demand.pods == 0 {
            continue;
        }
        queue.push(QueuedRun {
            namespace: key.0,
            name: key.1,
            priority,
            created,
            demand,
            state,
        });
    }
    queue
}

/// The value of the run's PriorityClass; 0 without one (or when it does not exist).
fn priority_of(run: &TrainingRun, classes: &Store<PriorityClass>) -> i32 {
    run.spec
        .scheduling
        .priority_class_name
        .as_deref()
        .and_then(|name| classes.get(&ObjectRef::new(name)))
        .map_or(0, |class| class.value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn at_version(version: &str, generation: i64) -> TrainingRun {
        let mut run = fixtures::run("r").build();
        run.metadata.resource_version = Some(version.to_string());
        run.metadata.generation = Some(generation);
        run
    }

    #[test]
    fn our_write_wins_only_until_the_cache_catches_up() {
        assert!(is_newer(&at_version("12", 1), &at_version("11", 1)));
        assert!(!is_newer(&at_version("12", 1), &at_version("12", 1)));
        assert!(!is_newer(&at_version("12", 1), &at_version("15", 2)));
        // Opaque versions: ours while the cache shows no newer spec.
        assert!(is_newer(&at_version("b", 1), &at_version("a", 1)));
        assert!(!is_newer(&at_version("b", 1), &at_version("b", 1)));
        assert!(!is_newer(&at_version("b", 1), &at_version("c", 2)));
        // A deletion always wins.
        let mut deleting = at_version("11", 1);
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(fixtures::epoch()),
        );
        assert!(!is_newer(&at_version("12", 1), &deleting));
    }
}
