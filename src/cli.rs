//! Command-line interface. `--help` is the reference documentation: every
//! flag says what it does, its default and its environment variable.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Kubernetes service networking: ClusterIP allocation, EndpointSlices,
/// LoadBalancer IPAM, cluster DNS and an nftables dataplane, in one binary.
#[derive(Debug, Parser)]
#[command(name = "portico", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the reconcilers against a Kubernetes cluster (kubeconfig or
    /// in-cluster config), with leader election: only the leader writes.
    Controller(ControllerArgs),
    /// Serve cluster DNS: answer the cluster zone from Services,
    /// EndpointSlices and Pods, and forward every other name.
    Dns(DnsArgs),
    /// Run the node dataplane: program nftables NAT so that ClusterIP,
    /// NodePort and LoadBalancer traffic reaches endpoints (kube-proxy's
    /// job; one per node, as root).
    Node(NodeArgs),
    /// Run the whole suite on one machine from manifest files, without a
    /// cluster, and print the resulting Services.
    Local(LocalArgs),
    /// Explain one Service from its name to the packet: its DNS answers,
    /// endpoints, the rules a connection meets on a node and their verdict,
    /// who announces its LoadBalancer address, and what is wrong; as text,
    /// JSON or an SVG picture.
    Explain(ExplainArgs),
    /// Print Portico's CustomResourceDefinitions as YAML (what `make crds`
    /// writes to `crds/` and the chart).
    Crds(CrdsArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  portico explain default/api-tester -f examples/lab.yaml
  portico explain api-tester.default -f examples/lab.yaml --from default/api-tester-7b9c5d6f8-k2x4q
  portico explain 192.168.56.60:80/tcp -f examples/lab.yaml -o svg > path.svg
  portico explain shop/web --node n1 -o json            (a cluster, through kubeconfig)")]
pub struct ExplainArgs {
    /// What to explain: NAMESPACE/NAME (a Service), a DNS name (web.shop,
    /// web.shop.svc.cluster.local), or ADDRESS:PORT[/tcp|udp|sctp] (a
    /// ClusterIP, an external IP, a LoadBalancer address, or a node's
    /// address with a NodePort).
    pub target: String,
    /// Manifest files or directories, loaded and reconciled as `portico
    /// local` does them. Without it, the cluster of the kubeconfig is read.
    #[arg(short = 'f', long = "filename", value_delimiter = ',')]
    pub files: Vec<PathBuf>,
    /// The node whose rules the packet meets. Default: the node the target
    /// names (a NodePort), else the source pod's, else the first by name.
    #[arg(long)]
    pub node: Option<String>,
    /// Where the packet comes from: NAMESPACE/POD, an address, `node` (the
    /// node itself) or `outside` (a client outside the cluster).
    #[arg(long, default_value = "outside")]
    pub from: String,
    /// Output: text for a person, one JSON object for scripts, or an SVG
    /// picture of the path.
    #[arg(short = 'o', long, value_enum, default_value_t = ExplainOutput::Text)]
    pub output: ExplainOutput,
    /// The cluster zone.
    #[arg(long, default_value = "cluster.local", env = "PORTICO_CLUSTER_DOMAIN")]
    pub cluster_domain: String,
    /// Without `-f`: the port of the node agents' metrics server, whose
    /// `/rules` (the rules a node has installed) is read through the API
    /// server's node proxy (`nodes/proxy` permission).
    #[arg(long, default_value_t = 10256)]
    pub node_metrics_port: u16,
    /// Node ports (`portico local`'s allocation, with `-f`).
    #[arg(long, default_value = "30000-32767", value_name = "RANGE")]
    pub service_node_port_range: portico_ipam::PortRange,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub rules: RuleArgs,
}

/// `portico explain`'s output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExplainOutput {
    Text,
    Json,
    Svg,
}

#[derive(Debug, Args)]
pub struct CrdsArgs {
    /// Write one `<plural>.<group>.yaml` file per CRD into this directory
    /// instead of printing them.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Logging.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PORTICO_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (tracing env-filter syntax, e.g. `info,portico=debug`).
    /// Hickory's DNS server logs every TCP query at info, hence its `warn`.
    #[arg(
        long,
        global = true,
        default_value = "info,hickory_server=warn",
        env = "PORTICO_LOG"
    )]
    pub log_level: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The cluster's networks, shared by every component.
#[derive(Clone, Debug, Args)]
pub struct NetworkArgs {
    /// Service network: one CIDR per family, comma-separated for dual-stack
    /// (the first is the primary family), as kube-apiserver's flag.
    #[arg(
        long,
        default_value = "10.96.0.0/12",
        env = "PORTICO_SERVICE_CLUSTER_IP_RANGE"
    )]
    pub service_cluster_ip_range: String,
    /// Pod network: one CIDR per family, comma-separated. Must not overlap
    /// the service network.
    #[arg(long, default_value = "10.244.0.0/16", env = "PORTICO_CLUSTER_CIDR")]
    pub cluster_cidr: String,
}

impl NetworkArgs {
    /// The parsed networks (a CIDR that does not parse, or overlapping
    /// networks, are errors).
    pub fn config(&self) -> anyhow::Result<portico_controllers::NetworkConfig> {
        Ok(portico_controllers::NetworkConfig::parse(
            &self.service_cluster_ip_range,
            &self.cluster_cidr,
        )?)
    }
}

/// Cluster DNS settings, shared by `dns` and `local`.
#[derive(Clone, Debug, Args)]
pub struct DnsSettings {
    /// The cluster zone.
    #[arg(long, default_value = "cluster.local", env = "PORTICO_CLUSTER_DOMAIN")]
    pub cluster_domain: String,
    /// TTL of the answers in the cluster zone.
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "PORTICO_DNS_TTL")]
    pub ttl: Duration,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`: `disabled`, `insecure` (any
    /// well-formed name) or `verified` (only addresses of existing pods in
    /// that namespace).
    #[arg(long, default_value = "verified", env = "PORTICO_DNS_PODS")]
    pub pods: portico_dns::PodsMode,
    /// Servers for names outside the cluster zone, comma-separated or
    /// repeated (`ip`, `ip:port`, `[ipv6]:port`). Default: the nameservers of
    /// /etc/resolv.conf.
    #[arg(
        long = "upstream",
        value_delimiter = ',',
        env = "PORTICO_DNS_UPSTREAMS"
    )]
    pub upstreams: Vec<String>,
    /// A domain with its own servers, `DOMAIN=SERVER[,SERVER…]`, repeatable:
    /// e.g. `corp.example=192.168.56.50` for the company's DNS server.
    #[arg(long = "stub-domain")]
    pub stub_domains: Vec<portico_dns::StubDomain>,
    /// The ClusterIP of this DNS server's own Service (e.g. `10.96.0.10`),
    /// one per family, comma-separated or repeated. The zone's name server
    /// `ns.dns.<zone>` (the target of the apex NS record and the SOA's
    /// MNAME) answers with it, and the apex NS answer carries it as glue.
    /// Unset: `ns.dns.<zone>` has no addresses (NODATA).
    #[arg(
        long = "dns-service-ip",
        value_name = "IP",
        value_delimiter = ',',
        env = "PORTICO_DNS_SERVICE_IPS"
    )]
    pub service_ips: Vec<IpAddr>,
}

impl DnsSettings {
    /// The server configuration for `listen`.
    pub fn config(&self, listen: SocketAddr) -> anyhow::Result<portico_dns::DnsConfig> {
        use anyhow::Context as _;
        let upstreams = if self.upstreams.is_empty() {
            portico_dns::upstreams_from_resolv_conf("/etc/resolv.conf")
                .context("reading /etc/resolv.conf for upstreams (or give --upstream)")?
        } else {
            self.upstreams
                .iter()
                .map(|s| portico_dns::parse_server(s).with_context(|| format!("--upstream {s:?}")))
                .collect::<anyhow::Result<_>>()?
        };
        Ok(portico_dns::DnsConfig {
            zone: self
                .cluster_domain
                .trim_end_matches('.')
                .to_ascii_lowercase(),
            ttl: u32::try_from(self.ttl.as_secs()).unwrap_or(u32::MAX),
            pods: self.pods,
            service_ips: self.service_ips.clone(),
            listen,
            upstreams,
            stub_domains: self.stub_domains.clone(),
            ..portico_dns::DnsConfig::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct DnsArgs {
    /// UDP and TCP address to answer on.
    #[arg(long, default_value = "0.0.0.0:53", env = "PORTICO_DNS_LISTEN")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub dns: DnsSettings,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "PORTICO_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
}

/// The ClusterIP admission webhook of `portico controller`.
#[derive(Clone, Debug, Args)]
pub struct WebhookArgs {
    /// Serve the mutating admission webhook that makes Portico choose new
    /// Services' ClusterIPs (HTTPS `POST /mutate-services`), e.g.
    /// `0.0.0.0:9443`. Off when unset: kube-apiserver allocates and Portico
    /// audits.
    #[arg(long, env = "PORTICO_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<SocketAddr>,
    /// The webhook's serving certificate chain (PEM); read again when it changes.
    #[arg(
        long,
        default_value = "/etc/portico/webhook/tls.crt",
        env = "PORTICO_WEBHOOK_CERT_FILE"
    )]
    pub webhook_cert_file: PathBuf,
    /// The certificate's private key (PEM).
    #[arg(
        long,
        default_value = "/etc/portico/webhook/tls.key",
        env = "PORTICO_WEBHOOK_KEY_FILE"
    )]
    pub webhook_key_file: PathBuf,
    /// How long addresses handed out by the webhook stay reserved for a
    /// Service that does not show up (another webhook refused it, say).
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "PORTICO_WEBHOOK_RESERVATION")]
    pub webhook_reservation: Duration,
}

/// ClusterIP allocation settings, shared by `controller` and `local`.
#[derive(Clone, Debug, Args)]
pub struct ClusterIpArgs {
    /// An address freed by a deleted Service is not handed out again for
    /// this long, so clients with cached DNS answers or conntrack entries do
    /// not reach another Service by surprise; a Service re-created under the
    /// same name gets its address back. `0s` turns the quarantine off.
    #[arg(long, default_value = "5m", value_parser = parse_duration, env = "PORTICO_CLUSTERIP_REUSE_DELAY")]
    pub clusterip_reuse_delay: Duration,
}

/// EndpointSlice controller settings, shared by `controller` and `local`.
#[derive(Clone, Debug, Args)]
pub struct EndpointSliceArgs {
    /// At most this many endpoints per EndpointSlice (1 to 1000), as
    /// kube-controller-manager's flag.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000), env = "PORTICO_MAX_ENDPOINTS_PER_SLICE")]
    pub max_endpoints_per_slice: u16,
}

/// LoadBalancer IPAM settings, shared by `controller` and `local`.
#[derive(Clone, Debug, Args)]
pub struct LoadBalancerArgs {
    /// Serve `type: LoadBalancer` Services without `spec.loadBalancerClass`
    /// (Portico is the cluster's default LoadBalancer implementation).
    /// Services of class `portico.dev/lb` are always served.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "PORTICO_DEFAULT_LOAD_BALANCER_CLASS")]
    pub default_load_balancer_class: bool,
}

/// L2 announcement of LoadBalancer addresses (ARP and NDP), shared by
/// `node` and `local --dataplane`.
#[derive(Clone, Debug, Args)]
pub struct L2Args {
    /// Do not announce LoadBalancer addresses on layer 2, whatever the
    /// L2Announcements say.
    #[arg(long, env = "PORTICO_DISABLE_L2_ANNOUNCEMENTS")]
    pub disable_l2_announcements: bool,
    /// Announce every announced address again (gratuitous ARP, unsolicited
    /// neighbour advertisement) this often, so that switches and clients
    /// with stale caches recover; `0s`: only at takeover.
    #[arg(long, default_value = "60s", value_parser = parse_duration, env = "PORTICO_GARP_INTERVAL")]
    pub garp_interval: Duration,
    /// Where this agent gossips with the others (SWIM over UDP) to notice a
    /// dead agent within seconds; `off` to take liveness from the Nodes'
    /// Ready conditions alone. `portico node` default: `0.0.0.0:7946`.
    #[arg(long, env = "PORTICO_GOSSIP_LISTEN")]
    pub gossip_listen: Option<String>,
    /// Agents to join at start (`host:port`, comma-separated). `portico
    /// node` also joins every Node's InternalIP at the gossip port.
    #[arg(long, value_delimiter = ',', env = "PORTICO_GOSSIP_JOIN")]
    pub gossip_join: Vec<String>,
    /// How often each agent probes one other agent.
    #[arg(long, default_value = "400ms", value_parser = parse_duration, env = "PORTICO_GOSSIP_PROBE_PERIOD")]
    pub gossip_probe_period: Duration,
    /// How long a probe waits for its answer before asking others to probe
    /// indirectly.
    #[arg(long, default_value = "150ms", value_parser = parse_duration, env = "PORTICO_GOSSIP_PROBE_TIMEOUT")]
    pub gossip_probe_timeout: Duration,
    /// How long a suspected agent has to refute before it counts as dead
    /// and its addresses move.
    #[arg(long, default_value = "800ms", value_parser = parse_duration, env = "PORTICO_GOSSIP_SUSPECT_TIMEOUT")]
    pub gossip_suspect_timeout: Duration,
    /// A file with the gossip's shared secret (at least 16 bytes; the same
    /// on every node): datagrams are authenticated with HMAC-SHA256 and
    /// those without a valid tag are dropped, so nobody else on the network
    /// can join or declare agents dead. Unset: unauthenticated.
    #[arg(long, env = "PORTICO_GOSSIP_KEY_FILE")]
    pub gossip_key_file: Option<PathBuf>,
}

impl L2Args {
    /// The gossip settings of these flags for `node` listening on
    /// `listen` (the key file is read now).
    pub fn gossip_settings(
        &self,
        node: &str,
        listen: SocketAddr,
    ) -> anyhow::Result<portico_agent::gossip::Settings> {
        Ok(portico_agent::gossip::Settings {
            node: node.to_owned(),
            listen,
            advertise: None,
            join: portico_agent::gossip::parse_join(&self.gossip_join)?,
            probe_period: self.gossip_probe_period,
            probe_timeout: self.gossip_probe_timeout,
            suspect_timeout: self.gossip_suspect_timeout,
            key: self
                .gossip_key_file
                .as_deref()
                .map(portico_agent::gossip::GossipKey::from_file)
                .transpose()?,
            drops: Default::default(),
        })
    }
}

/// Conntrack settings of the node's network namespace, shared by `node`
/// and `local --dataplane`; applied at start, before the first sync.
#[derive(Clone, Debug, Args)]
pub struct ConntrackArgs {
    /// Set `net.netfilter.nf_conntrack_tcp_be_liberal=1` at start, as
    /// kube-proxy's flag of the same name: conntrack stops marking
    /// out-of-window TCP segments INVALID, so a stray segment from an
    /// endpoint is translated back to the Service address instead of
    /// reaching the client untranslated, where the client's reset would
    /// kill the connection. It loosens TCP window checks for every flow of
    /// the node's network namespace. Off: the sysctl is left as it is.
    #[arg(long, env = "PORTICO_CONNTRACK_TCP_BE_LIBERAL")]
    pub conntrack_tcp_be_liberal: bool,
    /// Where the node's network sysctls are written: `/proc/sys/net`, or
    /// the host's `/proc/sys/net` mounted elsewhere when `/proc/sys` is
    /// read-only, as in a container (the chart mounts it at
    /// `/host/proc/sys/net`).
    #[arg(long, default_value = portico_dataplane::conntrack::PROC_SYS_NET, env = "PORTICO_PROC_SYS_NET")]
    pub proc_sys_net: PathBuf,
}

impl Default for ConntrackArgs {
    fn default() -> Self {
        ConntrackArgs {
            conntrack_tcp_be_liberal: false,
            proc_sys_net: portico_dataplane::conntrack::PROC_SYS_NET.into(),
        }
    }
}

impl ConntrackArgs {
    /// Sets the sysctls these flags ask for. A sysctl that cannot be set
    /// stops the start, as in kube-proxy.
    pub fn apply(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        if self.conntrack_tcp_be_liberal {
            portico_dataplane::conntrack::set_tcp_be_liberal(&self.proc_sys_net)
                .context("--conntrack-tcp-be-liberal (see --proc-sys-net)")?;
        }
        Ok(())
    }
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub clusterip: ClusterIpArgs,
    #[command(flatten)]
    pub webhook: WebhookArgs,
    #[command(flatten)]
    pub endpointslices: EndpointSliceArgs,
    #[command(flatten)]
    pub lb: LoadBalancerArgs,
    /// Pod changes wait this long before their Services' EndpointSlices are
    /// written, so a burst of pod updates becomes one write per slice.
    #[arg(long, default_value = "1s", value_parser = parse_duration, env = "PORTICO_ENDPOINT_UPDATES_BATCH_PERIOD")]
    pub endpoint_updates_batch_period: Duration,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "PORTICO_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// Elect a leader among replicas on a Lease; only the leader writes.
    /// Turn off only when a single replica runs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "PORTICO_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease (default: the pod's own
    /// namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// Identity in the Lease and in Events (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// How long a Lease holds without renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "PORTICO_LEASE_DURATION")]
    pub lease_duration: Duration,
}

/// What the node's rules are made of, on `portico node`, with
/// `portico local --dataplane`, and for `portico explain`.
#[derive(Clone, Debug, Default, Args)]
pub struct RuleArgs {
    /// Where NodePorts answer: CIDRs, comma-separated (e.g.
    /// `192.168.56.0/24`), or `primary`, the default: the node's primary
    /// addresses (the first InternalIP of each family of its Node object).
    /// Never on loopback addresses, as kube-proxy's nftables mode.
    #[arg(long, value_delimiter = ',', env = "PORTICO_NODEPORT_ADDRESSES")]
    pub nodeport_addresses: Vec<String>,
    /// Program only the Services labelled
    /// `service.kubernetes.io/service-proxy-name: NAME`. Without it, Portico
    /// programs the Services without that label, as kube-proxy does, and
    /// leaves the labelled ones to the proxy they name. Services labelled
    /// `service.kubernetes.io/headless` are never programmed; DNS serves
    /// every Service either way.
    #[arg(long, value_name = "NAME", env = "PORTICO_SERVICE_PROXY_NAME")]
    pub service_proxy_name: Option<String>,
    /// Masquerade (SNAT) every connection to a ClusterIP, pods' too, as
    /// kube-proxy's `--masquerade-all`. Without it, only connections from
    /// outside `--cluster-cidr` (and hairpin ones) are masqueraded.
    #[arg(long, env = "PORTICO_MASQUERADE_ALL")]
    pub masquerade_all: bool,
}

impl RuleArgs {
    /// The agent's settings of these flags.
    pub fn settings(&self) -> portico_agent::Settings {
        portico_agent::Settings {
            nodeport_addresses: self.nodeport_addresses.clone(),
            service_proxy_name: self.service_proxy_name.clone(),
            masquerade_all: self.masquerade_all,
        }
    }
}

/// What the node dataplane programs, on `portico node` and with
/// `portico local --dataplane`.
#[derive(Clone, Debug, Default, Args)]
pub struct DataplaneArgs {
    #[command(flatten)]
    pub rules: RuleArgs,
    /// How transactions reach the kernel: `netlink` (nf_tables messages on
    /// a socket that stays open; no program to run) or `nft` (the nft
    /// program, one script per sync). Both write the same ruleset;
    /// `portico node --dump` prints it with nft either way.
    #[arg(
        long,
        default_value = "netlink",
        value_name = "nft|netlink",
        env = "PORTICO_DATAPLANE_BACKEND"
    )]
    pub dataplane_backend: portico_dataplane::BackendKind,
    #[command(flatten)]
    pub conntrack: ConntrackArgs,
}

impl DataplaneArgs {
    /// The agent's settings of these flags.
    pub fn settings(&self) -> portico_agent::Settings {
        self.rules.settings()
    }
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    pub network: NetworkArgs,
    /// This node's name: endpoints with this `nodeName` are local, and its
    /// Node object gives the NodePort addresses.
    #[arg(long, env = "NODE_NAME", required_unless_present_any = ["dump", "cleanup"])]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub dataplane: DataplaneArgs,
    /// A full sync (every rule rewritten) this often; partial syncs of the
    /// changed Services happen in between.
    #[arg(long, default_value = "1h", value_parser = parse_duration, env = "PORTICO_SYNC_PERIOD")]
    pub sync_period: Duration,
    /// At most one sync this often: changes in between are coalesced into
    /// one transaction. A failed sync is retried (as a full sync) after this
    /// pause, doubled for each further failure in a row, up to 30s.
    #[arg(long, default_value = "1s", value_parser = parse_duration, env = "PORTICO_MIN_SYNC_PERIOD")]
    pub min_sync_period: Duration,
    /// Address of the HTTP server for /metrics, /healthz (200 while syncs
    /// succeed) and /readyz.
    #[arg(long, default_value = "0.0.0.0:10256", env = "PORTICO_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// Print the installed ruleset in nft syntax and exit.
    #[arg(long, conflicts_with = "cleanup")]
    pub dump: bool,
    /// Remove everything Portico installed (its nftables tables) and exit.
    #[arg(long)]
    pub cleanup: bool,
    #[command(flatten)]
    pub l2: L2Args,
}

#[derive(Debug, Args)]
pub struct LocalArgs {
    /// Manifest files or directories (`*.yaml`, `*.yml`, `*.json`; multi-document
    /// YAML and `kind: List` are read). Repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        env = "PORTICO_LOCAL_FILES",
        value_delimiter = ','
    )]
    pub files: Vec<PathBuf>,
    /// Output: a table in the shape of `kubectl get svc -o wide`, or every
    /// resulting object as YAML.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What the table shows (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "services")]
    pub show: Vec<Show>,
    /// Keep running: reload and reconcile again whenever the files change.
    #[arg(short, long)]
    pub watch: bool,
    /// How often `--watch` looks at the files.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub watch_interval: Duration,
    /// Serve cluster DNS for the manifests on `--dns-listen` and keep
    /// running (until Ctrl-C); with `--watch`, answers follow the files.
    #[arg(long)]
    pub dns: bool,
    /// Where `--dns` answers (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:5353")]
    pub dns_listen: SocketAddr,
    #[command(flatten)]
    pub dns_settings: DnsSettings,
    #[command(flatten)]
    pub network: NetworkArgs,
    #[command(flatten)]
    pub clusterip: ClusterIpArgs,
    #[command(flatten)]
    pub endpointslices: EndpointSliceArgs,
    #[command(flatten)]
    pub lb: LoadBalancerArgs,
    /// Node ports for NodePort and LoadBalancer Services (and health check
    /// ports), as kube-apiserver's flag of the same name: `FIRST-LAST` or
    /// `FIRST+SIZE`. Ports asked for by number must be in it; random ones
    /// avoid its lowest ports (KEP-3668's static band) while others are free.
    #[arg(
        long,
        default_value = "30000-32767",
        value_name = "RANGE",
        env = "PORTICO_SERVICE_NODE_PORT_RANGE"
    )]
    pub service_node_port_range: portico_ipam::PortRange,
    /// Also program the node dataplane (nftables NAT) of `--node-name` in
    /// the current network namespace, as `portico node` would on that node
    /// (root only).
    #[arg(long, requires = "node_name")]
    pub dataplane: bool,
    /// The node of the manifests whose rules `--dataplane` programs.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// With `--dataplane`: the node dataplane's settings, as on `portico node`.
    #[command(flatten)]
    pub dataplane_settings: DataplaneArgs,
    /// With `--dataplane`, L2 announcement as on `--node-name`: liveness
    /// from the manifests' Node Ready conditions (and gossip, when
    /// `--gossip-listen` is given).
    #[command(flatten)]
    pub l2: L2Args,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables.
    Table,
    /// Every object, as multi-document YAML.
    Yaml,
}

pub use portico_local::print::Show;

/// Parses `500ms`, `2s`, `5m`, `1h` or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 2s, 5m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dns_service_ips_are_comma_separated_or_repeated() {
        let cli = Cli::try_parse_from([
            "portico",
            "dns",
            "--upstream=192.168.56.1",
            "--dns-service-ip=10.96.0.10,fd00:96::a",
            "--dns-service-ip",
            "10.96.0.11",
        ])
        .unwrap();
        let Command::Dns(args) = cli.command else {
            panic!("not dns");
        };
        let config = args.dns.config(args.listen).unwrap();
        let ips: Vec<String> = config.service_ips.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(ips, ["10.96.0.10", "fd00:96::a", "10.96.0.11"]);
        assert!(Cli::try_parse_from(["portico", "dns", "--dns-service-ip=None"]).is_err());
    }

    #[test]
    fn tcp_be_liberal_is_off_unless_asked_for_on_node_and_local() {
        let node = |extra: &[&str]| {
            let args = ["portico", "node", "--node-name", "n1"].iter().chain(extra);
            match Cli::try_parse_from(args).unwrap().command {
                Command::Node(a) => a.dataplane.conntrack,
                other => panic!("{other:?}"),
            }
        };
        let off = node(&[]);
        assert!(!off.conntrack_tcp_be_liberal);
        assert_eq!(off.proc_sys_net, PathBuf::from("/proc/sys/net"));
        let on = node(&[
            "--conntrack-tcp-be-liberal",
            "--proc-sys-net=/host/proc/sys/net",
        ]);
        assert!(on.conntrack_tcp_be_liberal);
        assert_eq!(on.proc_sys_net, PathBuf::from("/host/proc/sys/net"));

        let local = Cli::try_parse_from([
            "portico",
            "local",
            "-f",
            "lab.yaml",
            "--dataplane",
            "--node-name",
            "n1",
            "--conntrack-tcp-be-liberal",
        ])
        .unwrap();
        match local.command {
            Command::Local(a) => assert!(a.dataplane_settings.conntrack.conntrack_tcp_be_liberal),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 fortnights").is_err());
    }
}
