//! Cluster DNS: answers the cluster zone (`cluster.local`) from the service
//! catalog, per the Kubernetes DNS-Based Service Discovery specification
//! 1.1.0, and forwards every other name upstream.
//!
//! ```text
//!  watch events / manifests
//!          │ apply_* / reset_*
//!          v
//!  portico_catalog::Catalog ── take_changes() ──> Dns::apply(&catalog, &changes)
//!                                                    │  IndexWriter (records.rs, index.rs):
//!                                                    │  per changed Service, its names only
//!                                                    v
//!                                       ArcSwap<Snapshot>  (persistent maps, O(1) publish)
//!                                          │                         │
//!    UDP: 1 thread per socket,             │                         │  TCP: hickory Server +
//!    recvmmsg ─> answer.rs ─> sendmmsg <───┘                         └─> TcpHandler ─> answer.rs
//!                   │ not in the zone, not cached                                │
//!                   v                                                            v
//!           bounded channel ─> forward.rs (tokio): stub domain or upstreams, cache.rs
//! ```
//!
//! Use:
//!
//! ```no_run
//! # async fn run() -> portico_dns::Result<()> {
//! use portico_catalog::Catalog;
//! use portico_dns::{Dns, DnsConfig};
//!
//! let config = DnsConfig {
//!     listen: "127.0.0.1:5353".parse().unwrap(),
//!     upstreams: portico_dns::upstreams_from_resolv_conf("/etc/resolv.conf")?,
//!     ..DnsConfig::default()
//! };
//! let dns = Dns::new(config)?;
//! let mut catalog = Catalog::new();
//! // … catalog.reset_services(..), reset_slices(..), reset_pods(..) from the first list …
//! dns.reset(&catalog);
//! dns.mark_synced(); // until then the zone answers SERVFAIL
//! let server = dns.clone();
//! tokio::spawn(async move { server.serve(std::future::pending()).await });
//! // … on every batch of watch events:
//! // catalog.apply_service(&svc); …
//! let changes = catalog.take_changes();
//! dns.apply(&catalog, &changes);
//! # Ok(()) }
//! ```
//!
//! Answers in the zone: A/AAAA for Services (ClusterIPs, or the ready
//! endpoints of headless ones), `<hostname>.<svc>…` for headless endpoints,
//! SRV for named ports (targets' addresses in the additional section), PTR
//! for ClusterIPs and headless endpoints, CNAME for ExternalName Services
//! (followed, also outside the zone), `dns-version` TXT, pod records
//! (`disabled`/`insecure`/`verified`), and at the apex SOA and NS
//! `ns.dns.<zone>`, whose A/AAAA are [`DnsConfig::service_ips`] (glue in the
//! additional section of the NS answer). Missing names get NXDOMAIN, names
//! without the type NODATA, both with the zone's SOA; answers are
//! authoritative and names case-insensitive. Answers larger than the
//! client's UDP size are sent with TC set and no records; over TCP in full.
//! Malformed queries get FORMERR.
//!
//! Feeding it:
//!
//! - In a cluster: watch Services, EndpointSlices (all of them: the catalog
//!   merges by `kubernetes.io/service-name`) and Pods (only in `verified`
//!   pod mode) with bare `kube::runtime::watcher` streams, not reflector
//!   stores: a store of 100,000 Pods alone is far above the memory target,
//!   while the catalog keeps one small entry per Pod. On `Init` of Pods call
//!   [`Catalog::begin_pod_relist`], apply each `InitApply`, and
//!   [`Catalog::finish_pod_relist`] on `InitDone`; Services and slices may be
//!   buffered and given to `reset_services`/`reset_slices`. After each batch
//!   of events, `dns.apply(&catalog, &catalog.take_changes())` (one call per
//!   batch: each call publishes a snapshot). Call [`Dns::mark_synced`] once
//!   all three kinds have had their first `InitDone`; [`Dns::is_synced`] is
//!   `/readyz`.
//! - In `portico local`: after each reconcile round, `reset_*` the catalog
//!   from the local stores and `dns.apply(..)` the changes (or `dns.reset`),
//!   then `mark_synced` after the first load; listen on `127.0.0.1:5353`.
//!
//! Logging: hickory's `Server` logs every TCP request at INFO; run with
//! `hickory_server=warn` in the filter.

#![forbid(unsafe_code)]

mod answer;
mod cache;
mod config;
mod error;
#[cfg(test)]
mod fixtures;
mod forward;
mod index;
mod metrics;
mod names;
mod node;
mod records;
mod request;
mod tcp;
mod udp;
mod wire;
mod zone;

pub use config::{
    DnsConfig, PodsMode, StubDomain, parse_resolv_conf, parse_server, upstreams_from_resolv_conf,
};
pub use error::{Error, Result};
pub use metrics::{DnsMetrics, QueryLabels, UpstreamLabels};

use arc_swap::ArcSwap;
use cache::Cache;

/// A time source (`Instant::now`, or a test's).
pub type Clock = Arc<dyn Fn() -> std::time::Instant + Send + Sync>;
use forward::Forwarder;
use index::{IndexWriter, Snapshot, Zone};
use portico_catalog::{Catalog, Changes};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// What the serving side shares.
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) cache: Option<Arc<Cache>>,
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) metrics: DnsMetrics,
    pub(crate) max_udp: u16,
}

struct Inner {
    config: DnsConfig,
    writer: Mutex<IndexWriter>,
    shared: Arc<Shared>,
}

/// The DNS server: a handle to feed it catalog changes and to serve.
/// Cheap to clone; clones are the same server.
#[derive(Clone)]
pub struct Dns {
    inner: Arc<Inner>,
}

impl Dns {
    /// A server for `config`. Nothing is bound until [`Dns::bind`] or
    /// [`Dns::serve`]; the zone answers SERVFAIL until [`Dns::mark_synced`].
    pub fn new(config: DnsConfig) -> Result<Self> {
        Dns::with_clock(config, Arc::new(std::time::Instant::now))
    }

    /// The same, with the time source the cache and the forwarder read
    /// (tests move it by hand).
    pub fn with_clock(config: DnsConfig, clock: Clock) -> Result<Self> {
        config.validate()?;
        let zone = Zone::new(&config.zone, config.ttl, config.pods, &config.service_ips)
            .ok_or_else(|| Error::Config(format!("zone {:?} is not a domain", config.zone)))?;
        let writer = IndexWriter::new(Arc::new(zone));
        let metrics = DnsMetrics::default();
        let cache = (config.cache_size > 0).then(|| {
            Arc::new(Cache::new(
                config.cache_size,
                config.cache_max_ttl,
                config.cache_max_negative_ttl,
                clock.clone(),
            ))
        });
        // Forwarding to ourselves would loop until every query timed out.
        let upstreams: Vec<SocketAddr> = config
            .upstreams
            .iter()
            .copied()
            .filter(|u| {
                let own = *u == config.listen
                    || (config.listen.ip().is_unspecified()
                        && u.port() == config.listen.port()
                        && u.ip().is_loopback());
                if own {
                    tracing::warn!(upstream = %u, "dns: ignoring an upstream that is this server");
                }
                !own
            })
            .collect();
        let forwarder = Arc::new(Forwarder::new(
            upstreams,
            &config.stub_domains,
            config.upstream_timeout,
            cache.clone(),
            metrics.clone(),
            config.max_udp_payload,
            clock,
        ));
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(writer.snapshot()),
            cache,
            forwarder,
            metrics,
            max_udp: config.max_udp_payload,
        });
        Ok(Dns {
            inner: Arc::new(Inner {
                config,
                writer: Mutex::new(writer),
                shared,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DnsConfig {
        &self.inner.config
    }

    fn writer(&self) -> MutexGuard<'_, IndexWriter> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, w: &IndexWriter) {
        self.inner.shared.snapshot.store(Arc::new(w.snapshot()));
        self.inner.shared.metrics.set_zone_names(w.name_count());
    }

    /// Applies what the catalog reported as changed (cost proportional to
    /// the changed Services' records) and publishes a new snapshot.
    pub fn apply(&self, catalog: &Catalog, changes: &Changes) {
        if changes.is_empty() {
            return;
        }
        let mut w = self.writer();
        w.apply(catalog, changes);
        self.publish(&w);
    }

    /// Rebuilds the whole zone from the catalog (after a relist).
    pub fn reset(&self, catalog: &Catalog) {
        let mut w = self.writer();
        w.reset(catalog);
        self.publish(&w);
    }

    /// The catalog has been fully listed: answer the zone from now on.
    pub fn mark_synced(&self) {
        let mut w = self.writer();
        w.set_synced(true);
        self.publish(&w);
    }

    /// Whether [`Dns::mark_synced`] was called (for `/readyz`).
    pub fn is_synced(&self) -> bool {
        self.inner.shared.snapshot.load().synced
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &DnsMetrics {
        &self.inner.shared.metrics
    }

    /// Answers a request from the zone without a socket, as a server
    /// would over TCP (no truncation): the response, or `None` for a name
    /// the zone does not hold (a server forwards those). `portico explain`
    /// asks its questions here.
    pub fn answer_in_zone(&self, request: &[u8]) -> Option<Vec<u8>> {
        let shared = &self.inner.shared;
        let snap = shared.snapshot.load();
        let mut out = Vec::new();
        match answer::answer(
            &snap,
            None,
            &shared.metrics,
            request,
            answer::Transport::Tcp,
            shared.max_udp,
            &mut out,
        ) {
            answer::Outcome::Reply => Some(out),
            _ => None,
        }
    }

    /// Registers the metrics under `portico_dns_*`.
    pub fn register(&self, registry: &mut Registry) {
        self.inner.shared.metrics.register(registry);
    }

    /// Binds UDP and TCP on the configured address (with port 0, one free
    /// port for both).
    pub async fn bind(&self) -> Result<Listener> {
        let cfg = &self.inner.config;
        let mut last = None;
        for _ in 0..10 {
            match bind_once(cfg.listen, cfg.udp_threads).await {
                Ok((udp, tcp)) => {
                    return Ok(Listener {
                        udp,
                        tcp,
                        shared: self.inner.shared.clone(),
                        config: cfg.clone(),
                    });
                }
                Err(e) if cfg.listen.port() == 0 => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Config("cannot bind".into())))
    }

    /// Binds and serves until `shutdown` resolves.
    pub async fn serve(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.bind().await?.run(shutdown).await
    }
}

async fn bind_once(
    addr: SocketAddr,
    threads: usize,
) -> Result<(Vec<Arc<UdpSocket>>, tokio::net::TcpListener)> {
    let first = udp_socket(addr, threads > 1)?;
    let bound = first
        .local_addr()
        .map_err(|e| Error::io(format!("udp {addr}"), e))?;
    let mut udp = vec![Arc::new(first)];
    for _ in 1..threads {
        udp.push(Arc::new(udp_socket(bound, true)?));
    }
    let tcp = tokio::net::TcpListener::bind(bound)
        .await
        .map_err(|e| Error::io(format!("tcp {bound}"), e))?;
    Ok((udp, tcp))
}

fn udp_socket(addr: SocketAddr, reuse_port: bool) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let ctx = |e| Error::io(format!("udp {addr}"), e);
    let s =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(ctx)?;
    if reuse_port {
        s.set_reuse_port(true).map_err(ctx)?;
    }
    // Room for bursts; the kernel caps it at net.core.rmem_max.
    let _ = s.set_recv_buffer_size(4 << 20);
    // The serving thread wakes up this often to notice a shutdown.
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(ctx)?;
    s.bind(&addr.into()).map_err(ctx)?;
    Ok(s.into())
}

/// Bound sockets, ready to serve.
pub struct Listener {
    udp: Vec<Arc<UdpSocket>>,
    tcp: tokio::net::TcpListener,
    shared: Arc<Shared>,
    config: DnsConfig,
}

impl Listener {
    /// The address UDP and TCP are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap_or(self.config.listen)
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets the
    /// UDP threads finish their batch and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(self.config.max_forwards.max(1));
        let dispatcher = tokio::spawn(dispatch(
            rx,
            self.shared.clone(),
            Arc::new(Semaphore::new(self.config.max_forwards.max(1))),
        ));
        let mut threads = Vec::new();
        for (i, sock) in self.udp.iter().enumerate() {
            let (sock, shared, stop, tx) =
                (sock.clone(), self.shared.clone(), stop.clone(), tx.clone());
            let t = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || udp::serve(sock, shared, stop, tx))
                .map_err(|e| Error::io("spawning a udp thread", e))?;
            threads.push(t);
        }
        drop(tx);
        let mut server = hickory_server::Server::new(tcp::TcpHandler {
            shared: self.shared.clone(),
        });
        server.register_listener(self.tcp, self.config.tcp_timeout, 64);
        tracing::info!(listen = %self.config.listen, zone = %self.config.zone, "dns: serving");
        shutdown.await;
        stop.store(true, Ordering::Relaxed);
        if let Err(e) = server.shutdown_gracefully().await {
            tracing::debug!(error = %e, "dns: tcp server stopped with an error");
        }
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        dispatcher.abort();
        Ok(())
    }
}

/// Runs forwarded UDP queries, at most `permits` at once.
async fn dispatch(mut rx: mpsc::Receiver<udp::Job>, shared: Arc<Shared>, permits: Arc<Semaphore>) {
    while let Some(job) = rx.recv().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.metrics.forward_rejected();
            let mut out = Vec::new();
            if let Ok(p) = answer::parse(&job.req, answer::Transport::Udp, shared.max_udp, &mut out)
            {
                answer::Writer::start(&mut out, &job.req, &p).finish(wire::rcode::SERVFAIL, false);
                let _ = job.socket.send_to(&out, job.peer);
            }
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let resp = shared
                .forwarder
                .respond(&job.req, answer::Transport::Udp, job.fwd)
                .await;
            if !resp.is_empty() {
                let _ = job.socket.send_to(&resp, job.peer);
            }
            drop(permit);
        });
    }
}
