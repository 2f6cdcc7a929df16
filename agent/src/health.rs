//! The node's health: `/healthz` ([`Liveness`]: syncs keep succeeding)
//! and the `healthCheckNodePort` servers that load balancers ask.

use portico_catalog::{Catalog, Key, TrafficPolicy};
use portico_dataplane::{Config, local_endpoint_count};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When `/healthz` says the node is healthy.
#[derive(Debug)]
pub struct Liveness {
    /// When the last sync succeeded.
    pub last_success: Option<Instant>,
    /// Since when changes wait for a sync.
    pub pending_since: Option<Instant>,
    /// The full sync period.
    pub sync_period: Duration,
    /// How long changes may wait.
    pub timeout: Duration,
}

impl Liveness {
    /// `Ok` (200) with a message, or `Err` (503) with the reason.
    pub fn check(&self, now: Instant) -> Result<String, String> {
        let Some(last) = self.last_success else {
            return Err("no successful sync yet\n".into());
        };
        let age = now.saturating_duration_since(last);
        if let Some(p) = self.pending_since {
            let waiting = now.saturating_duration_since(p);
            if waiting > self.timeout {
                return Err(format!(
                    "changes have waited {:.0}s for a successful sync (last success {:.0}s ago)\n",
                    waiting.as_secs_f64(),
                    age.as_secs_f64()
                ));
            }
        }
        if age > self.sync_period + self.timeout {
            return Err(format!(
                "the last successful sync was {:.0}s ago\n",
                age.as_secs_f64()
            ));
        }
        Ok(format!(
            "ok: last successful sync {:.1}s ago\n",
            age.as_secs_f64()
        ))
    }
}

/// One `healthCheckNodePort` server.
struct HealthCheck {
    service: Key,
    local: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// The `healthCheckNodePort` servers of the Services with
/// `externalTrafficPolicy: Local`: load balancers ask each node whether it
/// has local endpoints and a healthy proxy (200), or not (503).
#[derive(Default)]
pub struct HealthChecks {
    servers: HashMap<u16, HealthCheck>,
    /// Where to listen (default: every address, both families).
    bind: Option<IpAddr>,
    /// The agent's sync health, asked at each request; none: healthy.
    liveness: Option<Arc<Mutex<Liveness>>>,
}

impl HealthChecks {
    /// Servers that listen on one address only.
    pub fn on(address: IpAddr) -> Self {
        HealthChecks {
            bind: Some(address),
            ..HealthChecks::default()
        }
    }

    /// Answers 503 whenever the agent's syncs are failing or late (what
    /// `/healthz` says), whatever the endpoints, as kube-proxy does.
    pub fn with_liveness(mut self, liveness: Arc<Mutex<Liveness>>) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// Starts, updates and stops servers to match the catalog: one per
    /// Service this proxy programs (`cfg`'s service proxy name; never a
    /// headless one) with `externalTrafficPolicy: Local`.
    pub async fn update(&mut self, catalog: &Catalog, cfg: &Config) {
        let mut wanted: HashMap<u16, (Key, usize)> = HashMap::new();
        for svc in catalog.services() {
            if svc.external_traffic_policy != TrafficPolicy::Local
                || svc.headless
                || !svc.proxy.programmed_by(cfg.service_proxy_name.as_deref())
            {
                continue;
            }
            if let Some(port) = svc.health_check_node_port {
                let key = svc.key();
                let count = local_endpoint_count(svc, catalog.endpoints(&key), &cfg.node_name);
                wanted.insert(port, (key, count));
            }
        }
        self.servers.retain(|port, hc| {
            let keep = wanted.get(port).is_some_and(|(k, _)| *k == hc.service);
            if !keep {
                hc.task.abort();
            }
            keep
        });
        for (port, (service, count)) in wanted {
            if let Some(hc) = self.servers.get(&port) {
                hc.local.store(count, Ordering::Relaxed);
                continue;
            }
            let local = Arc::new(AtomicUsize::new(count));
            match bind(self.bind, port).await {
                Ok(listener) => {
                    tracing::info!(port, service = %service, "serving healthCheckNodePort");
                    let task = tokio::spawn(serve_health_check(
                        listener,
                        service.clone(),
                        local.clone(),
                        self.liveness.clone(),
                    ));
                    self.servers.insert(
                        port,
                        HealthCheck {
                            service,
                            local,
                            task,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(port, service = %service, error = %e, "cannot serve healthCheckNodePort");
                }
            }
        }
    }

    /// Stops every server.
    pub fn stop(&mut self) {
        for (_, hc) in self.servers.drain() {
            hc.task.abort();
        }
    }

    /// The ports served.
    pub fn ports(&self) -> Vec<u16> {
        let mut p: Vec<u16> = self.servers.keys().copied().collect();
        p.sort_unstable();
        p
    }
}

/// The given address, else both families when the host has IPv6, else
/// IPv4.
async fn bind(address: Option<IpAddr>, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    if let Some(a) = address {
        return tokio::net::TcpListener::bind(SocketAddr::new(a, port)).await;
    }
    match tokio::net::TcpListener::bind(SocketAddr::from(([0u16; 8], port))).await {
        Ok(l) => Ok(l),
        Err(_) => tokio::net::TcpListener::bind(SocketAddr::from(([0u8; 4], port))).await,
    }
}

/// What kube-proxy answers: the Service, its local endpoints and whether
/// the proxy is healthy; 200 when it has local endpoints and is healthy,
/// else 503.
pub fn health_check_response(service: &Key, local: usize, proxy_healthy: bool) -> (u16, String) {
    let body = serde_json::json!({
        "service": { "namespace": service.namespace, "name": service.name },
        "localEndpoints": local,
        "serviceProxyHealthy": proxy_healthy,
    });
    let code = if local > 0 && proxy_healthy { 200 } else { 503 };
    (code, format!("{body}\n"))
}

async fn serve_health_check(
    listener: tokio::net::TcpListener,
    service: Key,
    local: Arc<AtomicUsize>,
    liveness: Option<Arc<Mutex<Liveness>>>,
) {
    use axum::http::{StatusCode, header};
    let app = axum::Router::new().fallback(move || {
        let service = service.clone();
        let local = local.clone();
        let healthy = liveness.as_ref().is_none_or(|l| {
            l.lock()
                .map(|l| l.check(Instant::now()).is_ok())
                .unwrap_or(false)
        });
        async move {
            let (code, body) =
                health_check_response(&service, local.load(Ordering::Relaxed), healthy);
            (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
        }
    });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "healthCheckNodePort server stopped");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn healthz_fails_before_the_first_sync_and_when_changes_wait_too_long() {
        let t0 = Instant::now();
        let mut l = Liveness {
            last_success: None,
            pending_since: Some(t0),
            sync_period: Duration::from_secs(3600),
            timeout: Duration::from_secs(60),
        };
        assert!(l.check(t0).is_err());
        l.last_success = Some(t0);
        l.pending_since = None;
        assert!(l.check(t0 + Duration::from_secs(30)).is_ok());
        l.pending_since = Some(t0 + Duration::from_secs(10));
        assert!(l.check(t0 + Duration::from_secs(30)).is_ok());
        assert!(l.check(t0 + Duration::from_secs(100)).is_err());
        l.pending_since = None;
        assert!(l.check(t0 + Duration::from_secs(3700)).is_err());
    }

    /// GET / on a local port; the status code and body.
    async fn get(port: u16) -> (u16, String) {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
            (
                code,
                out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned(),
            )
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn health_check_node_ports_follow_the_local_endpoints() {
        use k8s_openapi::api::core::v1::{Service as K8sService, ServicePort, ServiceSpec};
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort};
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let svc = K8sService {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some("local".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.40".into()),
                type_: Some("LoadBalancer".into()),
                external_traffic_policy: Some("Local".into()),
                health_check_node_port: Some(i32::from(port)),
                ports: Some(vec![ServicePort {
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let slice = |nodes: &[&str]| EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some("local-1".into()),
                labels: Some(
                    [("kubernetes.io/service-name".to_owned(), "local".to_owned())].into(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| Endpoint {
                    addresses: vec![format!("10.244.{}.2", i + 1)],
                    node_name: Some((*n).into()),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                port: Some(8080),
                ..Default::default()
            }]),
        };
        let mut catalog = Catalog::new();
        catalog.apply_service(&svc);
        catalog.apply_slice(&slice(&["n1", "n2", "n1"]));
        let t0 = Instant::now();
        let liveness = Arc::new(Mutex::new(Liveness {
            last_success: Some(t0),
            pending_since: None,
            sync_period: Duration::from_secs(3600),
            timeout: Duration::from_secs(60),
        }));
        let mut hc = HealthChecks::on("127.0.0.1".parse().unwrap()).with_liveness(liveness.clone());
        let cfg = Config {
            node_name: "n1".into(),
            ..Config::default()
        };
        hc.update(&catalog, &cfg).await;
        assert_eq!(hc.ports(), vec![port]);
        let (code, body) = get(port).await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"localEndpoints\":2"), "{body}");
        assert!(body.contains("\"serviceProxyHealthy\":true"), "{body}");

        // The proxy's syncs fail (kube-proxy's healthcheck_test: 503 with
        // local endpoints when the proxy is unhealthy).
        liveness.lock().unwrap().last_success = None;
        let (code, body) = get(port).await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("\"localEndpoints\":2"), "{body}");
        assert!(body.contains("\"serviceProxyHealthy\":false"), "{body}");
        liveness.lock().unwrap().last_success = Some(Instant::now());
        assert_eq!(get(port).await.0, 200);

        catalog.apply_slice(&slice(&["n2"]));
        hc.update(&catalog, &cfg).await;
        assert_eq!(get(port).await.0, 503);

        // A Service another proxy programs gets no server here.
        let mut other = svc.clone();
        other.metadata.labels = Some(
            [(
                "service.kubernetes.io/service-proxy-name".to_owned(),
                "other".to_owned(),
            )]
            .into(),
        );
        catalog.apply_service(&other);
        hc.update(&catalog, &cfg).await;
        assert!(hc.ports().is_empty());
        hc.stop();
    }

    #[test]
    fn a_health_check_answers_with_the_local_endpoints() {
        let key = Key::new("default", "local");
        let (code, body) = health_check_response(&key, 2, true);
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["localEndpoints"], 2);
        assert_eq!(v["service"]["name"], "local");
        assert_eq!(health_check_response(&key, 0, true).0, 503);
    }
}
