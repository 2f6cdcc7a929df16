//! `portico dns`: cluster DNS in a cluster.
//!
//! ```text
//!  watch Services ─────┐
//!  watch EndpointSlices ┼──> Catalog ── take_changes() ──> Dns (record index, snapshot) ──> UDP/TCP answers
//!  watch Pods ─────────┘                                      (SERVFAIL for the zone until synced)
//! ```
//!
//! What the server answers is `portico_dns::Dns`, which `portico local`
//! serves too; this file is the cluster edge: [`watches`] and [`drive`].

use crate::cli::DnsArgs;
use crate::cluster::shutdown_signal;
use crate::http::Health;
use anyhow::Context as _;
use futures::TryStreamExt;
use futures::stream::{BoxStream, SelectAll};
use kube::Api;
use kube::runtime::watcher;
use portico_catalog::Catalog;
use portico_controllers::k8s::{EndpointSlice, Namespace, Pod, Service};
use portico_controllers::watch::{Relist, watch, watch_metadata};
use portico_dns::{Dns, PodsMode};
use prometheus_client::registry::Registry;

/// One watch event of a kind the DNS server reads.
#[allow(missing_docs)]
pub enum Watched {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSlice>>),
    Pod(Box<watcher::Event<Pod>>),
    Namespace(Box<watcher::Event<Namespace>>),
}

pub async fn run(args: DnsArgs) -> anyhow::Result<()> {
    let config = args.dns.config(args.listen)?;
    let pods_needed = config.pods == PodsMode::Verified;
    let dns = Dns::new(config).context("configuring the DNS server")?;
    let client = crate::cluster::connect().await?;
    let mut registry = Registry::default();
    dns.register(&mut registry);
    let health = Health::new(registry);
    let http = tokio::spawn(health.clone().serve(args.metrics_addr));

    let server = dns.clone();
    let mut serving = tokio::spawn(async move { server.serve(shutdown_signal()).await });
    tracing::info!(listen = %args.listen, "serving DNS (SERVFAIL for the cluster zone until the first sync)");
    let fed = drive(
        dns,
        watches(&client, pods_needed),
        |_| health.set_ready(true),
        std::future::pending(),
    );
    let result = tokio::select! {
        served = &mut serving => match served {
            Ok(result) => result.context("serving DNS"),
            Err(e) => Err(anyhow::anyhow!("the DNS server task failed: {e}")),
        },
        fed = fed => fed,
    };
    http.abort();
    result
}

/// The watches of the DNS server: Services, EndpointSlices, Namespaces
/// (metadata only: a namespace that exists answers NODATA, one that does
/// not NXDOMAIN), and Pods when pod records are verified (`--pods
/// verified`).
pub fn watches(
    client: &kube::Client,
    pods: bool,
) -> SelectAll<BoxStream<'static, Result<Watched, watcher::Error>>> {
    let all = watcher::Config::default;
    let mut streams = futures::stream::select_all([
        watch(Api::<Service>::all(client.clone()), all(), |e| {
            Watched::Service(Box::new(e))
        }),
        watch(Api::<EndpointSlice>::all(client.clone()), all(), |e| {
            Watched::Slice(Box::new(e))
        }),
        watch_metadata(Api::all(client.clone()), all(), |e| {
            Watched::Namespace(Box::new(e))
        }),
    ]);
    if pods {
        streams.push(watch(Api::<Pod>::all(client.clone()), all(), |e| {
            Watched::Pod(Box::new(e))
        }));
    }
    streams
}

/// Feeds `dns` from `watches` until `shutdown`: the zone answers once every
/// watch has listed, and each change after that is applied as it comes. A
/// failed watch is retried by the watcher with backoff, and a relist
/// (after a `410 Gone`) replaces what the list no longer holds.
/// `synced(&catalog)` is called after the first sync and after each
/// change applied.
pub async fn drive(
    dns: Dns,
    mut watches: impl futures::Stream<Item = Result<Watched, watcher::Error>> + Unpin,
    mut synced: impl FnMut(&Catalog),
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let pods_needed = dns.config().pods == PodsMode::Verified;
    let mut catalog = Catalog::new();
    let mut services: Relist<Service> = Relist::default();
    let mut slices: Relist<EndpointSlice> = Relist::default();
    let mut namespaces: Relist<Namespace> = Relist::default();
    let mut pods_synced = !pods_needed;
    tokio::pin!(shutdown);
    loop {
        let change = tokio::select! {
            () = &mut shutdown => return Ok(()),
            change = watches.try_next() => change,
        };
        match change {
            Ok(Some(Watched::Service(ev))) => {
                if let Some(ev) = services.feed(*ev) {
                    ev.into_index(&mut catalog);
                }
            }
            Ok(Some(Watched::Slice(ev))) => {
                if let Some(ev) = slices.feed(*ev) {
                    ev.into_index(&mut catalog);
                }
            }
            Ok(Some(Watched::Namespace(ev))) => {
                if let Some(ev) = namespaces.feed(*ev) {
                    ev.into_index(&mut catalog);
                }
            }
            // Pods stream straight into the catalog, even during a relist:
            // buffering 100,000 Pod objects would cost more than the whole
            // DNS server.
            Ok(Some(Watched::Pod(ev))) => match *ev {
                watcher::Event::Init => catalog.begin_pod_relist(),
                watcher::Event::InitApply(o) | watcher::Event::Apply(o) => catalog.apply_pod(&o),
                watcher::Event::InitDone => {
                    catalog.finish_pod_relist();
                    pods_synced = true;
                }
                watcher::Event::Delete(o) => catalog.delete_pod(&o),
            },
            Ok(None) => anyhow::bail!("a watch ended"),
            Err(e) => tracing::warn!(error = %e, "watch failed; retrying with backoff"),
        }
        if !(services.synced() && slices.synced() && namespaces.synced() && pods_synced) {
            continue;
        }
        let changes = catalog.take_changes();
        if dns.is_synced() {
            if changes.is_empty() {
                continue;
            }
            dns.apply(&catalog, &changes);
        } else {
            dns.reset(&catalog);
            dns.mark_synced();
            tracing::info!(
                services = catalog.service_count(),
                pods = catalog.pod_count(),
                "initial sync done"
            );
        }
        synced(&catalog);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    use http::Method;
    use portico_dns::DnsConfig;
    use portico_testkit::MockApi;
    use serde_json::{Value, json};
    use std::net::SocketAddr;
    use std::time::Duration;

    fn service(name: &str, ip: &str) -> Value {
        json!({ "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": name, "namespace": "default", "uid": format!("uid-{name}") },
                "spec": { "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                          "ports": [{ "port": 80, "protocol": "TCP" }] } })
    }

    /// A DNS server on loopback fed by `client`'s watches (Pods too).
    struct Running {
        addr: SocketAddr,
        applied: tokio::sync::watch::Receiver<u64>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    async fn start(client: &kube::Client) -> Running {
        let config = DnsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..DnsConfig::default()
        };
        assert_eq!(config.pods, PodsMode::Verified);
        let dns = Dns::new(config).unwrap();
        let listener = dns.bind().await.unwrap();
        let addr = listener.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (applied_tx, applied) = tokio::sync::watch::channel(0u64);
        let fed = drive(
            dns,
            watches(client, true),
            move |_| applied_tx.send_modify(|n| *n += 1),
            async {
                let _ = stopped.await;
            },
        );
        let task = tokio::spawn(async move {
            let (serve_stop, serve_stopped) = tokio::sync::oneshot::channel::<()>();
            let serving = tokio::spawn(listener.run(async {
                let _ = serve_stopped.await;
            }));
            let result = fed.await;
            let _ = serve_stop.send(());
            serving.await??;
            result
        });
        Running {
            addr,
            applied,
            stop: Some(stop),
            task,
        }
    }

    impl Running {
        /// The answer to `name A` over UDP: its addresses, or its rcode.
        async fn answer(&self, name: &str) -> Vec<String> {
            let mut query = Message::query();
            query.metadata.recursion_desired = true;
            query.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket
                .send_to(&query.to_vec().unwrap(), self.addr)
                .await
                .unwrap();
            let mut buf = vec![0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
                .await
                .expect("an answer over UDP")
                .unwrap();
            let m = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(m.metadata.id, query.metadata.id);
            if m.metadata.response_code != ResponseCode::NoError {
                return vec![m.metadata.response_code.to_string()];
            }
            m.answers.iter().map(|r| r.data.to_string()).collect()
        }

        /// Waits until `name` answers `want`, asking again after each change
        /// the server applies.
        async fn until(&mut self, name: &str, want: &[&str]) {
            let waited = tokio::time::timeout(Duration::from_secs(60), async {
                loop {
                    self.applied.borrow_and_update();
                    if self.answer(name).await == want {
                        return;
                    }
                    self.applied.changed().await.unwrap();
                }
            })
            .await;
            assert!(waited.is_ok(), "{name} never answered {want:?}");
        }

        async fn stop(mut self) {
            self.stop.take().unwrap().send(()).unwrap();
            self.task.await.unwrap().unwrap();
        }
    }

    fn lists(api: &MockApi, path: &str) -> usize {
        api.log()
            .iter()
            .filter(|l| l.path == path && !l.is_watch())
            .count()
    }

    const WEB: &str = "web.default.svc.cluster.local.";

    /// The zone says SERVFAIL until every watch has listed; a list the API
    /// server fails is retried with backoff (once, not in a hot loop),
    /// and then the zone answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_list_is_retried_and_the_zone_answers_only_after_it() {
        let (api, client) = MockApi::start([service("web", "10.96.0.10")]);
        api.fail_next(Method::GET, "/api/v1/services", 500);
        let mut dns = start(&client).await;
        api.wait_for("the failed list", |log| {
            log.iter().any(|l| l.path == "/api/v1/services")
        })
        .await;
        assert_eq!(dns.answer(WEB).await, ["Server Failure"]);
        dns.until(WEB, &["10.96.0.10"]).await;
        assert_eq!(lists(&api, "/api/v1/services"), 2, "{:#?}", api.log());
        assert_eq!(lists(&api, "/apis/discovery.k8s.io/v1/endpointslices"), 1);
        assert_eq!(lists(&api, "/api/v1/pods"), 1);
        dns.stop().await;
    }

    /// A watch that ends with `410 Gone` relists; what changed while it was
    /// gone (a Service deleted, one added) is in the zone after the relist.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_watch_relists_and_the_zone_follows_the_new_list() {
        let (api, client) =
            MockApi::start([service("web", "10.96.0.10"), service("old", "10.96.0.11")]);
        let mut dns = start(&client).await;
        dns.until("old.default.svc.cluster.local.", &["10.96.0.11"])
            .await;
        api.expire_watches("/api/v1/services");
        api.delete(&service("old", "10.96.0.11"));
        api.put(service("new", "10.96.0.12"));
        dns.until("old.default.svc.cluster.local.", &["Non-Existent Domain"])
            .await;
        dns.until("new.default.svc.cluster.local.", &["10.96.0.12"])
            .await;
        assert_eq!(dns.answer(WEB).await, ["10.96.0.10"]);
        assert_eq!(lists(&api, "/api/v1/services"), 2);
        dns.stop().await;
    }

    /// A watch cut in the middle of an event is watched again; a Service
    /// made after the cut is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_cut_mid_event_is_watched_again() {
        let (api, client) = MockApi::start([service("web", "10.96.0.10")]);
        let mut dns = start(&client).await;
        dns.until(WEB, &["10.96.0.10"]).await;
        api.cut_watches("/api/v1/services");
        api.put(service("api", "10.96.0.20"));
        dns.until("api.default.svc.cluster.local.", &["10.96.0.20"])
            .await;
        dns.stop().await;
    }
}
