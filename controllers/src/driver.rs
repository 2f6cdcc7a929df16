//! The cluster edge of `portico controller`: watches in, writes out.
//!
//! ```text
//!  watch Services, Pods, Node metadata, Portico's slices,     ┌──────────────┐
//!  IPPools, ClusterIPRanges, IPAddresses, Namespace metadata ─>│  Reconcilers │──> writes ──> Writer
//!                                                             └──────────────┘  (leader only)
//!                                       ^                                           │
//!                                       └──────────── written(result) <─────────────┘
//! ```
//!
//! Everything above this edge is [`Reconcilers`], which `portico local`
//! drives too. Every replica watches and keeps its indexes warm; only the
//! Lease holder writes, and a replica that becomes the holder rebuilds
//! (`Reconcilers::lead`).

use crate::k8s::{EndpointSlice, Namespace, Node, Pod, Service};
use crate::watch::{Relist, sleep_until, watch, watch_metadata};
use crate::{Change, Reconcilers, Write, Writer};
use futures::stream::BoxStream;
use futures::{Future, StreamExt, TryStreamExt};
use k8s_openapi::api::networking::v1::IPAddress;
use kube::api::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Api, Client};
use portico_catalog::labels;
use portico_crds::names::ENDPOINTSLICE_MANAGER;
use portico_crds::{ClusterIPRange, IPPool};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Now, by tokio's clock (paused in tests, like every timer here).
fn clock_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// How often the ClusterIP quarantine is checked for addresses to free.
pub const QUARANTINE_TICK: Duration = Duration::from_secs(5);

use crate::write::Timed;
pub use crate::write::WRITE_TIMEOUT;

/// What the driver says of itself, for health checks, metrics and the
/// admission webhook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// This replica holds the Lease and writes.
    pub leader: bool,
    /// Every kind has been listed once (ready).
    pub synced: bool,
    /// The ClusterIP index can answer admissions.
    pub admission_ready: bool,
}

/// One watch event of any kind the reconcilers read.
pub enum Watched {
    /// A Service.
    Service(Box<watcher::Event<Service>>),
    /// A Pod.
    Pod(Box<watcher::Event<Pod>>),
    /// A Node's metadata.
    Node(Box<watcher::Event<Node>>),
    /// One of Portico's EndpointSlices.
    Slice(Box<watcher::Event<EndpointSlice>>),
    /// An IPPool.
    Pool(Box<watcher::Event<IPPool>>),
    /// A ClusterIPRange.
    Range(Box<watcher::Event<ClusterIPRange>>),
    /// One of kube-apiserver's IPAddress records.
    IpAddress(Box<watcher::Event<IPAddress>>),
    /// A Namespace's metadata.
    Namespace(Box<watcher::Event<Namespace>>),
}

/// Every watch the reconcilers need, merged. `ip_addresses`: the cluster
/// serves `networking.k8s.io/v1` IPAddress objects.
pub fn watches(
    client: &Client,
    ip_addresses: bool,
) -> BoxStream<'static, Result<Watched, watcher::Error>> {
    let all = watcher::Config::default;
    let managed = format!("{}={ENDPOINTSLICE_MANAGER}", labels::MANAGED_BY);
    let mut streams = vec![
        watch(Api::<Service>::all(client.clone()), all(), |e| {
            Watched::Service(Box::new(e))
        }),
        watch(Api::<Pod>::all(client.clone()), all(), |e| {
            Watched::Pod(Box::new(e))
        }),
        watch_metadata(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            all(),
            |e| Watched::Node(Box::new(e)),
        ),
        watch(
            Api::<EndpointSlice>::all(client.clone()),
            all().labels(&managed),
            |e| Watched::Slice(Box::new(e)),
        ),
        watch(Api::<IPPool>::all(client.clone()), all(), |e| {
            Watched::Pool(Box::new(e))
        }),
        watch(Api::<ClusterIPRange>::all(client.clone()), all(), |e| {
            Watched::Range(Box::new(e))
        }),
        watch_metadata(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            all(),
            |e| Watched::Namespace(Box::new(e)),
        ),
    ];
    if ip_addresses {
        streams.push(watch(Api::<IPAddress>::all(client.clone()), all(), |e| {
            Watched::IpAddress(Box::new(e))
        }));
    }
    futures::stream::select_all(streams).boxed()
}

/// Whether the cluster serves kube-apiserver's IPAddress objects (KEP-1880).
pub async fn has_ip_addresses(client: &Client) -> bool {
    client
        .list_api_group_resources("networking.k8s.io/v1")
        .await
        .map(|l| l.resources.iter().any(|r| r.name == "ipaddresses"))
        .unwrap_or(false)
}

/// Relists in progress, one per kind.
#[derive(Default)]
struct Relists {
    services: Relist<Service>,
    pods: Relist<Pod>,
    nodes: Relist<Node>,
    slices: Relist<EndpointSlice>,
    pools: Relist<IPPool>,
    ranges: Relist<ClusterIPRange>,
    ip_addresses: Relist<IPAddress>,
    namespaces: Relist<Namespace>,
}

impl Relists {
    /// The reconcilers' change for a watch event, once a relist is whole.
    fn feed(&mut self, w: Watched) -> Option<Change> {
        Some(match w {
            Watched::Service(e) => Change::Services(self.services.feed(*e)?.map(Arc::new)),
            Watched::Pod(e) => Change::Pods(self.pods.feed(*e)?),
            Watched::Node(e) => Change::Nodes(self.nodes.feed(*e)?),
            Watched::Slice(e) => Change::Slices(self.slices.feed(*e)?.map(Arc::new)),
            Watched::Pool(e) => Change::Pools(self.pools.feed(*e)?),
            Watched::Range(e) => Change::Ranges(self.ranges.feed(*e)?),
            Watched::IpAddress(e) => Change::IpAddresses(self.ip_addresses.feed(*e)?),
            Watched::Namespace(e) => Change::Namespaces(self.namespaces.feed(*e)?),
        })
    }
}

/// The errors that end the driver.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    /// Every watch ended (they retry forever, so this is a bug).
    #[error("the watches ended")]
    WatchesEnded,
    /// The leader election's sender is gone.
    #[error("leader election stopped")]
    LeaderElection,
}

/// Runs the reconcilers until `shutdown`: watch events in, writes out
/// (only while `leader` says so), every result fed back. `status` tells
/// the rest of the process how the driver is doing.
pub async fn drive<W: Writer + Send>(
    mut reconcilers: Reconcilers,
    mut watched: BoxStream<'static, Result<Watched, watcher::Error>>,
    writer: W,
    mut leader: tokio::sync::watch::Receiver<bool>,
    status: tokio::sync::watch::Sender<Status>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Stopped> {
    tokio::pin!(shutdown);
    let mut writer = Timed(writer);
    let mut relists = Relists::default();
    let mut leading = *leader.borrow_and_update();
    let mut quarantine = tokio::time::interval(QUARANTINE_TICK);
    loop {
        status.send_if_modified(|s| {
            let now = Status {
                leader: leading,
                synced: reconcilers.synced(),
                admission_ready: reconcilers.admission_ready(),
            };
            std::mem::replace(s, now) != now
        });
        let mut writes: Vec<Write> = tokio::select! {
            () = &mut shutdown => return Ok(()),
            changed = leader.changed() => {
                changed.map_err(|_| Stopped::LeaderElection)?;
                let now = *leader.borrow_and_update();
                tracing::info!(leader = now, "leadership changed");
                let gained = now && !leading;
                leading = now;
                if gained { reconcilers.lead(clock_now()) } else { Vec::new() }
            }
            () = sleep_until(reconcilers.next_due()) => Vec::new(),
            _ = quarantine.tick() => reconcilers.tick(),
            w = watched.try_next() => match w {
                Ok(Some(w)) => match relists.feed(w) {
                    Some(change) => reconcilers.on(change, clock_now()),
                    None => Vec::new(),
                },
                Ok(None) => return Err(Stopped::WatchesEnded),
                Err(e) => {
                    tracing::warn!(error = %e, "watch failed; retrying with backoff");
                    Vec::new()
                }
            },
        };
        writes.extend(reconcilers.flush(clock_now()));
        if !leading {
            continue;
        }
        // Follow-up writes go out in the same turn, after the ones that
        // caused them.
        // A write burst stops as soon as the Lease is lost.
        while !writes.is_empty() {
            writes = reconcilers
                .send_while(&mut writer, writes, || *leader.borrow(), clock_now)
                .await;
        }
    }
}
