//! Manifests to a settled world: the cluster defaults, what a reload keeps,
//! and the reconcilers run to a fixpoint.

use crate::load::Manifests;
use crate::world::{self, World};
use portico_controllers::k8s::KeyOf;
use portico_controllers::k8s::{
    Key, Namespace, ObjectMeta, Service, ServicePort, ServiceSpec, Time, stated_cluster_ips,
};
use portico_controllers::reconcilers::{Config, Metrics};
use portico_controllers::watch::Event;
use portico_controllers::{Change, NetworkConfig, Reconcilers, Role};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// A fixpoint takes a few rounds (allocate, then confirm); more means two
/// reconcilers disagree, which is a bug worth stopping for.
pub const MAX_ROUNDS: usize = 20;

/// The service catalog of the world: what DNS (and the dataplane) read.
pub fn catalog(world: &World) -> portico_catalog::Catalog {
    let mut catalog = portico_catalog::Catalog::new();
    update_catalog(&mut catalog, world);
    // Pod addresses (DNS pod records), one decoded pod at a time.
    catalog.begin_pod_relist();
    for pod in world.pods.iter() {
        catalog.apply_pod(&pod);
    }
    catalog.finish_pod_relist();
    catalog.take_changes();
    catalog
}

/// Brings a catalog's Namespaces, Services and EndpointSlices to a
/// (reloaded) world;
/// the catalog records what changed.
pub fn update_catalog(catalog: &mut portico_catalog::Catalog, world: &World) {
    catalog.reset_namespaces(world.namespaces.store.state().iter().map(AsRef::as_ref));
    catalog.reset_services(world.services.store.state().iter().map(AsRef::as_ref));
    catalog.reset_slices(
        world
            .endpoint_slices
            .store
            .state()
            .iter()
            .map(AsRef::as_ref),
    );
}

/// Writes the L2Announcements' statuses as the node agents would, without
/// one here: a node is live when its Node is Ready (there is no gossip to
/// ask), by the agents' own definition.
pub fn l2_statuses(world: &mut World, catalog: &portico_catalog::Catalog) -> anyhow::Result<()> {
    use portico_agent::l2;
    let announcements = world.l2announcements.sorted();
    let plan = l2::plan(
        announcements.iter().map(AsRef::as_ref),
        world.ippools.sorted().iter().map(AsRef::as_ref),
        world.services.sorted().iter().map(AsRef::as_ref),
        world.nodes.sorted().iter().map(AsRef::as_ref),
        catalog,
        &|n| l2::is_live(n, "", None),
    );
    let writes = l2::status_writes(&plan, announcements.iter().map(AsRef::as_ref));
    world.write(writes)?;
    Ok(())
}

/// Reconciles manifests once, with the default settings (tests and
/// benchmarks).
pub fn reconcile_once(m: Manifests, net: &NetworkConfig) -> anyhow::Result<World> {
    let role = Role::ApiServer {
        node_ports: portico_ipam::PortRange::default(),
    };
    let mut reconcilers = Reconcilers::new(Config::new(net.clone(), role), Metrics::default())?;
    // The local world answers every write at once: nothing here waits.
    futures::executor::block_on(reconcile(m, net, None, &mut reconcilers))
}

/// Builds the world from the manifests and runs the reconcilers to a fixpoint.
/// `previous` is the world of the last run under `--watch`: what the
/// reconcilers made there is kept (ClusterIPs, EndpointSlices), as the API
/// server keeps fields that a `kubectl apply` does not set.
///
/// Each round first settles ClusterIP allocation (which also decides the
/// Services' families), then syncs EndpointSlices, then feeds every changed
/// object back to the reconcilers.
pub async fn reconcile(
    mut m: Manifests,
    net: &NetworkConfig,
    previous: Option<&World>,
    reconcilers: &mut Reconcilers,
) -> anyhow::Result<World> {
    add_cluster_defaults(&mut m, net);
    if let Some(prev) = previous {
        keep_assigned_fields(&mut m.services, prev);
        keep_endpoint_slices(&mut m.endpoint_slices, prev);
    }
    let mut world = World::new(m);
    let now = Instant::now();
    let services = world.services.store.state();
    if let Some(prev) = previous {
        // Services gone from the files are deleted, as from the API (the
        // relist below says what follows from it).
        let kept: BTreeSet<Key> = services.iter().map(|s| Key::of(s.as_ref())).collect();
        for old in prev.services.store.state() {
            if !kept.contains(&Key::of(old.as_ref())) {
                reconcilers.on(Change::Services(Event::Delete(old)), now);
            }
        }
    }
    let mut writes = Vec::new();
    for change in [
        Change::Namespaces(Event::Reset(owned(&world.namespaces))),
        Change::Nodes(Event::Reset(owned(&world.nodes))),
        Change::Pools(Event::Reset(owned(&world.ippools))),
        Change::Ranges(Event::Reset(owned(&world.clusteripranges))),
        Change::Services(Event::Reset(services)),
        Change::Slices(Event::Reset(world.endpoint_slices.store.state())),
    ] {
        writes.extend(reconcilers.on(change, now));
    }
    reconcilers.reset_pods(world.pods.iter(), now);
    for _ in 0..MAX_ROUNDS {
        if writes.is_empty() {
            writes = reconcilers.flush(Instant::now());
            if writes.is_empty() {
                return Ok(world);
            }
        }
        writes = reconcilers.send(&mut world, writes).await;
        if let Some(refused) = world.refused.first() {
            anyhow::bail!("a reconciler's write was refused (a bug): {refused}");
        }
    }
    anyhow::bail!("the reconcilers did not settle after {MAX_ROUNDS} rounds; this is a bug")
}

/// Copies of the objects of one kind (the few kinds that are not shared).
fn owned<K: kube::Resource<DynamicType = ()> + Clone>(objects: &world::Objects<K>) -> Vec<K> {
    objects
        .store
        .state()
        .iter()
        .map(|o| (**o).clone())
        .collect()
}

/// What every cluster has: the `default` and `kube-system` namespaces (and
/// every namespace the manifests use), and the `kubernetes` Service on the
/// first address of the primary service range. Services get a creation time
/// in document order, so "oldest first" means "first in the files".
fn add_cluster_defaults(m: &mut Manifests, net: &NetworkConfig) {
    let declared: BTreeSet<String> = m
        .namespaces
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    let used: BTreeSet<String> = m
        .services
        .iter()
        .filter_map(|s| s.metadata.namespace.clone())
        .chain(m.pods.iter().map(|p| p.namespace.clone()))
        .chain(["default".to_owned(), "kube-system".to_owned()])
        .collect();
    for ns in used.difference(&declared) {
        m.namespaces.push(Namespace {
            metadata: ObjectMeta {
                name: Some(ns.clone()),
                ..Default::default()
            },
            ..Default::default()
        });
    }
    let has_kubernetes = m.services.iter().any(|s| {
        s.metadata.name.as_deref() == Some("kubernetes")
            && s.metadata.namespace.as_deref() == Some("default")
    });
    if !has_kubernetes {
        let first = net.service_ranges.first().and_then(|r| r.hosts().next());
        m.services.insert(
            0,
            Service {
                metadata: ObjectMeta {
                    name: Some("kubernetes".into()),
                    namespace: Some("default".into()),
                    labels: Some(BTreeMap::from([
                        ("component".to_owned(), "apiserver".to_owned()),
                        ("provider".to_owned(), "kubernetes".to_owned()),
                    ])),
                    ..Default::default()
                },
                spec: Some(ServiceSpec {
                    cluster_ip: first.map(|ip| ip.to_string()),
                    ports: Some(vec![ServicePort {
                        name: Some("https".into()),
                        port: 443,
                        protocol: Some("TCP".into()),
                        target_port: Some(
                            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(6443),
                        ),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
    }
    let start = k8s_openapi::jiff::Timestamp::now();
    let stamp = |meta: &mut ObjectMeta, i: usize| {
        if meta.creation_timestamp.is_none() {
            let at = start
                .checked_add(k8s_openapi::jiff::SignedDuration::from_micros(i as i64))
                .unwrap_or(start);
            meta.creation_timestamp = Some(Time(at));
        }
        meta.generation.get_or_insert(1);
    };
    for (i, s) in m.services.iter_mut().enumerate() {
        stamp(&mut s.metadata, i);
    }
}

/// Under `--watch`: a Service that the files still define without
/// ClusterIPs (or node ports) keeps the ones it was given in the previous
/// run.
fn keep_assigned_fields(services: &mut [Service], prev: &World) {
    let before: BTreeMap<Key, std::sync::Arc<Service>> = prev
        .services
        .store
        .state()
        .into_iter()
        .map(|s| (Key::of(s.as_ref()), s))
        .collect();
    for svc in services {
        let Some(old) = before.get(&Key::of(&*svc)) else {
            continue;
        };
        keep_node_ports(svc, old);
        if !stated_cluster_ips(svc).is_empty() || portico_controllers::k8s::is_headless(svc) {
            continue;
        }
        let (Some(spec), Some(old_spec)) = (svc.spec.as_mut(), old.spec.as_ref()) else {
            continue;
        };
        spec.cluster_ip = old_spec.cluster_ip.clone();
        spec.cluster_ips = old_spec.cluster_ips.clone();
        if spec.ip_families.is_none() {
            spec.ip_families = old_spec.ip_families.clone();
        }
        if spec.ip_family_policy.is_none() {
            spec.ip_family_policy = old_spec.ip_family_policy.clone();
        }
    }
}

/// Under `--watch`: the node ports (and health check port) Portico gave a
/// Service stay, while the files still ask for a type that has them.
fn keep_node_ports(svc: &mut Service, old: &Service) {
    let Some(spec) = svc.spec.as_mut() else {
        return;
    };
    if !matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer")) {
        return;
    }
    let Some(old_spec) = old.spec.as_ref() else {
        return;
    };
    let protocol = |p: &ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".to_owned());
    for port in spec.ports.iter_mut().flatten() {
        if port.node_port.is_some_and(|n| n != 0) {
            continue;
        }
        port.node_port = old_spec
            .ports
            .iter()
            .flatten()
            .find(|o| o.port == port.port && protocol(o) == protocol(port))
            .and_then(|o| o.node_port)
            .filter(|n| *n != 0);
    }
    if spec.health_check_node_port.is_none_or(|h| h == 0)
        && spec.external_traffic_policy.as_deref() == Some("Local")
    {
        spec.health_check_node_port = old_spec.health_check_node_port.filter(|h| *h != 0);
    }
}

/// Under `--watch`: the EndpointSlices Portico made in the previous run are
/// kept (unless the files define slices of the same name), so a reload
/// updates them instead of making new ones.
fn keep_endpoint_slices(slices: &mut Vec<portico_controllers::k8s::EndpointSlice>, prev: &World) {
    use portico_catalog::labels;
    use portico_crds::names::ENDPOINTSLICE_MANAGER;
    let defined: BTreeSet<(Option<String>, Option<String>)> = slices
        .iter()
        .map(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()))
        .collect();
    for old in prev.endpoint_slices.store.state() {
        let ours = old
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::MANAGED_BY))
            .map(String::as_str)
            == Some(ENDPOINTSLICE_MANAGER);
        if ours && !defined.contains(&(old.metadata.namespace.clone(), old.metadata.name.clone())) {
            slices.push((*old).clone());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{load, print};

    fn manifests(yaml: &str) -> Manifests {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.yaml");
        std::fs::write(&path, yaml).unwrap();
        load::load(&[path]).unwrap()
    }

    fn net() -> NetworkConfig {
        NetworkConfig::parse("10.96.0.0/12", "20.96.0.0/12").unwrap()
    }

    fn index() -> Reconcilers {
        let role = Role::ApiServer {
            node_ports: portico_ipam::PortRange::default(),
        };
        Reconcilers::new(Config::new(net(), role), Metrics::default()).unwrap()
    }

    #[tokio::test]
    async fn a_service_removed_and_put_back_under_watch_gets_its_address_back() {
        let mut clusterip = index();
        let first = reconcile(manifests(TWO), &net(), None, &mut clusterip)
            .await
            .unwrap();
        let only_b = TWO.split("---").nth(1).unwrap();
        let second = reconcile(manifests(only_b), &net(), Some(&first), &mut clusterip)
            .await
            .unwrap();
        assert_eq!(
            portico_controllers::reconcilers::lock(clusterip.clusterip()).quarantined(),
            1,
            "a's address is in quarantine"
        );
        let third = reconcile(manifests(TWO), &net(), Some(&second), &mut clusterip)
            .await
            .unwrap();
        assert_eq!(
            cluster_ips(&third, "default", "a"),
            cluster_ips(&first, "default", "a")
        );
    }

    fn cluster_ips(world: &World, ns: &str, name: &str) -> Vec<String> {
        let svc = world
            .services
            .sorted()
            .into_iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(name)
                    && s.metadata.namespace.as_deref() == Some(ns)
            })
            .unwrap();
        stated_cluster_ips(&svc)
    }

    const TWO: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {selector: {app: a}, ports: [{port: 80}]}\n---\n\
                       apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: team}\nspec: {clusterIP: 10.96.0.53, ports: [{port: 53, protocol: UDP}]}\n";

    #[tokio::test]
    async fn the_reconcilers_run_to_a_fixpoint_and_the_cluster_defaults_exist() {
        let world = reconcile(manifests(TWO), &net(), None, &mut index())
            .await
            .unwrap();
        assert_eq!(
            cluster_ips(&world, "default", "kubernetes"),
            vec!["10.96.0.1"]
        );
        assert_eq!(cluster_ips(&world, "team", "b"), vec!["10.96.0.53"]);
        let a = cluster_ips(&world, "default", "a");
        assert_eq!(a.len(), 1);
        let range: ipnet::IpNet = "10.96.0.0/12".parse().unwrap();
        assert!(
            range.contains(&a[0].parse::<std::net::IpAddr>().unwrap()),
            "{a:?}"
        );
        let namespaces: Vec<String> = world
            .namespaces
            .sorted()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        assert_eq!(namespaces, vec!["default", "kube-system", "team"]);
        assert_eq!(
            world.events.len(),
            1,
            "one allocation event: {:?}",
            world.events
        );
    }

    #[tokio::test]
    async fn a_reload_keeps_the_addresses_assigned_before() {
        let mut clusterip = index();
        let first = reconcile(manifests(TWO), &net(), None, &mut clusterip)
            .await
            .unwrap();
        let second = reconcile(manifests(TWO), &net(), Some(&first), &mut clusterip)
            .await
            .unwrap();
        assert_eq!(
            cluster_ips(&first, "default", "a"),
            cluster_ips(&second, "default", "a")
        );
        assert!(
            second.events.is_empty(),
            "nothing new to say: {:?}",
            second.events
        );
    }

    /// The node dataplane's model of a world, as `--dataplane` renders it.
    fn rules(world: &World) -> portico_dataplane::model::Model {
        let cfg = portico_dataplane::Config {
            node_name: "node-a".into(),
            service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            ..Default::default()
        };
        portico_dataplane::model::Model::build(&cfg, &catalog(world))
    }

    const REFUSED: &str = "\
apiVersion: portico.dev/v1alpha1
kind: IPPool
metadata: {name: lab}
spec: {addresses: [192.168.56.60-192.168.56.70]}
---
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {clusterIP: 10.96.0.20, externalIPs: [203.0.113.5], ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: c}
spec: {clusterIP: 172.16.0.5, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: lb, annotations: {portico.dev/load-balancer-ips: 192.168.99.1}}
spec: {type: LoadBalancer, ports: [{port: 80, nodePort: 30080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {externalIPs: [203.0.113.5], ports: [{port: 80}]}
";

    #[tokio::test]
    async fn a_refused_address_is_held_nowhere_and_a_claimed_one_goes_to_the_oldest() {
        let world = reconcile(manifests(REFUSED), &net(), None, &mut index())
            .await
            .unwrap();
        assert_eq!(cluster_ips(&world, "default", "a"), ["10.96.0.20"]);
        assert!(cluster_ips(&world, "default", "b").is_empty());
        assert!(cluster_ips(&world, "default", "c").is_empty());
        let c = catalog(&world);
        for name in ["b", "c"] {
            let svc = c
                .service(&portico_catalog::Key::new("default", name))
                .unwrap();
            assert!(svc.cluster_ips.is_empty(), "{name}: {svc:?}");
        }
        let lb = c
            .service(&portico_catalog::Key::new("default", "lb"))
            .unwrap();
        assert!(
            lb.load_balancer_ips.is_empty(),
            "refused LB request: {lb:?}"
        );

        let model = rules(&world);
        for name in ["b", "c"] {
            let r = model
                .service(&portico_catalog::Key::new("default", name))
                .unwrap();
            assert!(r.entries.is_empty(), "{name} has no rules");
        }
        // a and ext both claim 203.0.113.5:80; a is older (first in the
        // files) and keeps it; ext is told.
        let conflicts = model.conflicts();
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].1[0].name, "a");
        let told: Vec<(&str, &str)> = world
            .events
            .iter()
            .filter(|e| e.warning)
            .map(|e| (e.regarding.name.as_deref().unwrap(), e.reason.as_str()))
            .collect();
        assert_eq!(
            told,
            [
                ("b", "DuplicateClusterIP"),
                ("c", "ClusterIPOutOfRange"),
                ("lb", "RequestedIPNotInPool"),
                ("ext", "ExternalAddressConflict"),
            ]
        );
    }

    const NODE_PORTS: &str = "\
apiVersion: v1
kind: Service
metadata: {name: fixed}
spec: {type: NodePort, ports: [{port: 80, nodePort: 30080}]}
---
apiVersion: v1
kind: Service
metadata: {name: np}
spec: {type: NodePort, ports: [{port: 80}, {port: 53, protocol: UDP}, {port: 53, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: dup}
spec: {type: NodePort, ports: [{port: 80, nodePort: 30080}]}
---
apiVersion: v1
kind: Service
metadata: {name: lb}
spec: {type: LoadBalancer, externalTrafficPolicy: Local, ports: [{port: 80}]}
";

    /// (nodePorts, healthCheckNodePort) of a Service.
    fn ports_of(world: &World, name: &str) -> (Vec<i32>, i32) {
        let svc = world
            .services
            .sorted()
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap();
        let spec = svc.spec.clone().unwrap();
        (
            spec.ports
                .iter()
                .flatten()
                .map(|p| p.node_port.unwrap_or(0))
                .collect(),
            spec.health_check_node_port.unwrap_or(0),
        )
    }

    #[tokio::test]
    async fn node_ports_are_allocated_refused_and_kept_across_reloads_and_restarts() {
        let mut clusterip = index();
        let first = reconcile(manifests(NODE_PORTS), &net(), None, &mut clusterip)
            .await
            .unwrap();
        assert_eq!(ports_of(&first, "fixed"), (vec![30080], 0));
        let (np, _) = ports_of(&first, "np");
        assert!(np.iter().all(|p| (30086..=32767).contains(p)), "{np:?}");
        assert_eq!(np[1], np[2], "53/UDP and 53/TCP share one: {np:?}");
        assert_ne!(np[0], np[1]);
        assert_eq!(ports_of(&first, "dup"), (vec![0], 0), "refused: none");
        let (lb, health) = ports_of(&first, "lb");
        assert!(lb[0] != 0 && health != 0 && lb[0] != health);
        assert!(
            first.events.iter().any(|e| e.warning
                && e.reason == "DuplicateNodePort"
                && e.regarding.name.as_deref() == Some("dup")),
            "{:?}",
            first.events
        );
        let c = catalog(&first);
        let dup = c
            .service(&portico_catalog::Key::new("default", "dup"))
            .unwrap();
        assert!(dup.ports.iter().all(|p| p.node_port.is_none()), "{dup:?}");

        // --watch: the files again, with the last world.
        let second = reconcile(manifests(NODE_PORTS), &net(), Some(&first), &mut clusterip)
            .await
            .unwrap();
        for name in ["fixed", "np", "dup", "lb"] {
            assert_eq!(ports_of(&second, name), ports_of(&first, name), "{name}");
        }
        let node_port_events: Vec<_> = second
            .events
            .iter()
            .filter(|e| e.reason.contains("NodePort"))
            .collect();
        assert!(
            node_port_events.is_empty(),
            "nothing new: {node_port_events:?}"
        );

        // A restart from `-o yaml`.
        let mut yaml = Vec::new();
        print::yaml(&mut yaml, &second).unwrap();
        let third = reconcile(
            manifests(std::str::from_utf8(&yaml).unwrap()),
            &net(),
            None,
            &mut index(),
        )
        .await
        .unwrap();
        for name in ["fixed", "np", "dup", "lb"] {
            assert_eq!(ports_of(&third, name), ports_of(&first, name), "{name}");
        }
    }
}
