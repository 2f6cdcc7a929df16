//! Liveness among the node agents: SWIM membership over UDP (the `foca`
//! crate), so that an agent notices a dead one within seconds without
//! writing anything to the Kubernetes API.
//!
//! ```text
//!  UDP socket ──> foca (probe one member per period, indirect probes on
//!                 timeout, suspicion, gossip piggy-backed) ──> live agents
//!  timers (tokio tasks) ──┘                                      │
//!                                 tokio::sync::watch<BTreeSet<node name>>
//! ```
//!
//! Each agent probes one other per `--gossip-probe-period`; one that does
//! not answer (directly or through others) within `--gossip-probe-timeout`
//! is suspected, and unless it refutes within `--gossip-suspect-timeout` it
//! is down: its node's addresses move. The cost per agent is constant in
//! the number of agents and of Services. An agent identifies itself by its
//! node name, its gossip address and its start time, so a restarted agent
//! rejoins as new.

use anyhow::Context as _;
use foca::{Config, Foca, Identity, OwnedNotification, PostcardCodec, Timer};
use rand010::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// One agent, as the others know it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Agent {
    /// Its node's name.
    pub node: String,
    /// Where it gossips.
    pub addr: SocketAddr,
    /// When it started (ns since the epoch): a restarted agent is new.
    pub since: u64,
}

impl Identity for Agent {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Agent {
            since: self.since.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.since > adversary.since
    }
}

/// Timings and peers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node's name.
    pub node: String,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The address others reach this agent at, when `listen` is the
    /// unspecified address (`0.0.0.0`): the node's InternalIP.
    pub advertise: Option<std::net::IpAddr>,
    /// Agents to join at start, and again every few seconds while they
    /// are not members.
    pub join: Vec<SocketAddr>,
    /// `--gossip-probe-period`.
    pub probe_period: Duration,
    /// `--gossip-probe-timeout`.
    pub probe_timeout: Duration,
    /// `--gossip-suspect-timeout`.
    pub suspect_timeout: Duration,
    /// `--gossip-key-file`: every datagram carries an HMAC-SHA256 of its
    /// contents under this key, and datagrams without a valid one are
    /// dropped, so nobody without the key can join or declare agents dead.
    pub key: Option<GossipKey>,
    /// Datagrams dropped, by reason (`portico_l2_gossip_dropped_datagrams_total`).
    pub drops: DropCounts,
}

/// Dropped datagrams counted by [`Dropped::label`].
pub type DropCounts = prometheus_client::metrics::family::Family<
    DropLabel,
    prometheus_client::metrics::counter::Counter,
>;

/// The label of [`DropCounts`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DropLabel {
    /// [`Dropped::label`].
    pub reason: &'static str,
}

/// The shared secret of the gossip (memberlist's secret key).
#[derive(Clone)]
pub struct GossipKey(ring::hmac::Key);

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

/// Bytes of the tag after each authenticated datagram.
const TAG_LEN: usize = 32;

/// Bytes of the send time (milliseconds since the epoch) before the data
/// of an authenticated datagram.
const STAMP_LEN: usize = 8;

/// An authenticated datagram sent longer ago (or later, by the receiver's
/// clock) than this is dropped; within it, one seen before is a replay.
const REPLAY_WINDOW_MS: u64 = 30_000;

/// The largest datagram read: foca's packets (1,400 bytes) with the stamp
/// and tag; anything larger is dropped.
const MAX_DATAGRAM: usize = 1400 + STAMP_LEN + TAG_LEN;

impl GossipKey {
    /// A key from the secret's bytes (at least 16).
    pub fn new(secret: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= 16,
            "the gossip key has {} bytes; use at least 16 (e.g. `head -c 32 /dev/urandom | base64`)",
            secret.len()
        );
        Ok(GossipKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            secret,
        )))
    }

    /// Reads the key from a file; surrounding whitespace is not part of it.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let raw = std::fs::read(path)
            .with_context(|| format!("reading the gossip key {}", path.display()))?;
        Self::new(raw.trim_ascii()).with_context(|| format!("{}", path.display()))
    }

    /// The send time `now_ms`, `data`, and the tag of both.
    pub fn seal(&self, data: &[u8], now_ms: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(STAMP_LEN + data.len() + TAG_LEN);
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(data);
        let tag = ring::hmac::sign(&self.0, &out);
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// The send time and data of a sealed datagram, when its tag is valid.
    pub fn open<'a>(&self, sealed: &'a [u8]) -> Option<(u64, &'a [u8])> {
        let split = sealed.len().checked_sub(TAG_LEN)?;
        if split < STAMP_LEN {
            return None;
        }
        let (signed, tag) = sealed.split_at(split);
        ring::hmac::verify(&self.0, signed, tag).ok()?;
        let (stamp, data) = signed.split_at(STAMP_LEN);
        let stamp = u64::from_be_bytes(stamp.try_into().ok()?);
        Some((stamp, data))
    }
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Larger than any agent sends.
    Oversized,
    /// No valid tag: a stranger, another key, or a damaged datagram.
    BadTag,
    /// Sent outside the replay window (an old datagram sent again, or a
    /// clock far off).
    Stale,
    /// Seen before within the window: a replay.
    Replayed,
    /// Authenticated (or unkeyed) but not a gossip message.
    Malformed,
}

impl Dropped {
    /// Every reason, in order.
    pub const ALL: [Dropped; 5] = [
        Dropped::Oversized,
        Dropped::BadTag,
        Dropped::Stale,
        Dropped::Replayed,
        Dropped::Malformed,
    ];

    /// The metric label: `oversized`, `bad_tag`, `stale`, `replayed` or
    /// `malformed`.
    pub fn label(self) -> &'static str {
        match self {
            Dropped::Oversized => "oversized",
            Dropped::BadTag => "bad_tag",
            Dropped::Stale => "stale",
            Dropped::Replayed => "replayed",
            Dropped::Malformed => "malformed",
        }
    }
}

/// The authenticated datagrams seen within the replay window.
#[derive(Default)]
struct Seen(std::collections::HashMap<[u8; TAG_LEN], u64>);

impl Seen {
    /// Opens a datagram received at `now_ms`: its data, or why it is
    /// dropped.
    fn open<'a>(
        &mut self,
        key: &GossipKey,
        sealed: &'a [u8],
        now_ms: u64,
    ) -> Result<&'a [u8], Dropped> {
        let (stamp, data) = key.open(sealed).ok_or(Dropped::BadTag)?;
        if stamp.abs_diff(now_ms) > REPLAY_WINDOW_MS {
            return Err(Dropped::Stale);
        }
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&sealed[sealed.len() - TAG_LEN..]);
        if self.0.len() > 16_384 {
            self.0
                .retain(|_, at| at.abs_diff(now_ms) <= REPLAY_WINDOW_MS);
        }
        if self.0.insert(tag, stamp).is_some() {
            return Err(Dropped::Replayed);
        }
        Ok(data)
    }
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Seals outgoing datagrams when there is a key.
fn seal<'a>(key: Option<&GossipKey>, data: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
    match key {
        Some(k) => std::borrow::Cow::Owned(k.seal(data, now_ms())),
        None => std::borrow::Cow::Borrowed(data),
    }
}

impl Settings {
    /// The foca configuration: memberlist's LAN settings with our timings.
    fn config(&self) -> anyhow::Result<Config> {
        anyhow::ensure!(
            !self.probe_timeout.is_zero() && self.probe_timeout < self.probe_period,
            "--gossip-probe-timeout ({:?}) must be above zero and below --gossip-probe-period ({:?})",
            self.probe_timeout,
            self.probe_period
        );
        anyhow::ensure!(
            !self.suspect_timeout.is_zero(),
            "--gossip-suspect-timeout must be above zero"
        );
        let mut c = Config::new_lan(NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN));
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_timeout;
        c.suspect_to_down_after = self.suspect_timeout;
        c.max_packet_size = NonZeroUsize::new(1400).unwrap_or(NonZeroUsize::MIN);
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(200).min(self.probe_period),
            num_members: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
        });
        Ok(c)
    }
}

/// A running member of the gossip. [`Gossip::leave`] says goodbye (the
/// others move its addresses at once); dropping it stops it without one
/// (the others notice as they would a dead agent).
pub struct Gossip {
    live: watch::Receiver<BTreeSet<String>>,
    /// Datagrams dropped for want of a valid tag (a stranger, or a key
    /// that differs).
    dropped: watch::Receiver<u64>,
    commands: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
    local: SocketAddr,
}

impl Drop for Gossip {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Input {
    Data(Vec<u8>, SocketAddr),
    Timer(Timer<Agent>),
    Join(Vec<SocketAddr>),
    Leave(tokio::sync::oneshot::Sender<()>),
}

impl Gossip {
    /// Binds the socket and starts gossiping.
    pub async fn start(settings: Settings) -> anyhow::Result<Gossip> {
        let config = settings.config()?;
        let socket = Arc::new(
            UdpSocket::bind(settings.listen)
                .await
                .with_context(|| format!("binding the gossip socket to {}", settings.listen))?,
        );
        let local = socket.local_addr()?;
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let addr = match (local.ip().is_unspecified(), settings.advertise) {
            (false, _) => local,
            (true, Some(ip)) => SocketAddr::new(ip, local.port()),
            (true, None) => anyhow::bail!(
                "gossip listens on {local}: others need an address to reach it (listen on one, or give the node an InternalIP)"
            ),
        };
        let me = Agent {
            node: settings.node.clone(),
            addr,
            since,
        };
        let rng = rand010::rngs::StdRng::seed_from_u64(since ^ u64::from(local.port()));
        let foca = Foca::new(me, config, rng, PostcardCodec);
        let (live_tx, live) = watch::channel(BTreeSet::from([settings.node.clone()]));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (dropped_tx, dropped) = watch::channel(0);
        let task = tokio::spawn(run(
            foca,
            socket,
            (live_tx, dropped_tx),
            commands_rx,
            settings,
        ));
        Ok(Gossip {
            live,
            dropped,
            commands,
            task,
            local,
        })
    }

    /// The nodes whose agents are alive (this one included).
    pub fn live(&self) -> BTreeSet<String> {
        self.live.borrow().clone()
    }

    /// A receiver that changes whenever the live set does.
    pub fn watch(&self) -> watch::Receiver<BTreeSet<String>> {
        self.live.clone()
    }

    /// Datagrams dropped so far for want of a valid tag; the receiver
    /// changes with each.
    pub fn dropped(&self) -> watch::Receiver<u64> {
        self.dropped.clone()
    }

    /// Joins more agents (new Nodes).
    pub fn join(&self, peers: Vec<SocketAddr>) {
        let _ = self.commands.send(Command::Join(peers));
    }

    /// Tells a few others that this agent leaves (they spread it), so its
    /// addresses move at once rather than after the suspicion timeout;
    /// waits at most half a second for the goodbye to be sent.
    pub async fn leave(self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.commands.send(Command::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(500), rx).await;
        }
    }

    /// Where this agent listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// What the owner asks of the gossip task.
enum Command {
    Join(Vec<SocketAddr>),
    Leave(tokio::sync::oneshot::Sender<()>),
}

type Member = Foca<Agent, PostcardCodec, rand010::rngs::StdRng, foca::NoCustomBroadcast>;

async fn run(
    mut foca: Member,
    socket: Arc<UdpSocket>,
    (live, dropped): (watch::Sender<BTreeSet<String>>, watch::Sender<u64>),
    mut commands: mpsc::UnboundedReceiver<Command>,
    settings: Settings,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
    let mut runtime = foca::AccumulatingRuntime::new();
    let mut seeds: BTreeSet<SocketAddr> = settings.join.iter().copied().collect();
    seeds.remove(&foca.identity().addr);
    let mut rejoin = tokio::time::interval(Duration::from_secs(2));
    // Larger than any datagram an agent sends, so an oversized one is seen
    // whole (and dropped) rather than cut to size.
    let mut buf = vec![0u8; 65_536];
    let mut seen = Seen::default();
    let me = foca.identity().node.clone();
    let drop_one = |from: SocketAddr, why: Dropped| {
        tracing::debug!(%from, ?why, "gossip datagram dropped");
        settings
            .drops
            .get_or_create(&DropLabel {
                reason: why.label(),
            })
            .inc();
        dropped.send_modify(|n| *n += 1);
    };
    loop {
        let input = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) if n > MAX_DATAGRAM => {
                    drop_one(from, Dropped::Oversized);
                    continue;
                }
                Ok((n, from)) => match &settings.key {
                    None => Input::Data(buf[..n].to_vec(), from),
                    Some(key) => match seen.open(key, &buf[..n], now_ms()) {
                        Ok(data) => Input::Data(data.to_vec(), from),
                        Err(why) => {
                            drop_one(from, why);
                            continue;
                        }
                    },
                },
                Err(e) => {
                    tracing::debug!(error = %e, "gossip receive");
                    continue;
                }
            },
            Some(i) = rx.recv() => i,
            Some(c) = commands.recv() => match c {
                Command::Join(peers) => Input::Join(peers),
                Command::Leave(done) => Input::Leave(done),
            },
            _ = rejoin.tick() => Input::Join(Vec::new()),
        };
        let result = match input {
            Input::Leave(done) => {
                if let Err(e) = foca.leave_cluster(&mut runtime) {
                    tracing::debug!(error = %e, "leaving the gossip");
                }
                while let Some((to, data)) = runtime.to_send() {
                    let _ = socket
                        .send_to(&seal(settings.key.as_ref(), &data), to.addr)
                        .await;
                }
                tracing::info!("left the gossip");
                let _ = done.send(());
                return;
            }
            Input::Data(d, from) => {
                let r = foca.handle_data(&d, &mut runtime);
                if r.is_err() {
                    drop_one(from, Dropped::Malformed);
                }
                r
            }
            Input::Timer(t) => foca.handle_timer(t, &mut runtime),
            Input::Join(peers) => {
                seeds.extend(peers);
                seeds.remove(&foca.identity().addr);
                // Announce to the seeds that are not members yet.
                let members: BTreeSet<SocketAddr> =
                    foca.iter_members().map(|m| m.id().addr).collect();
                let mut r = Ok(());
                for s in seeds.iter().filter(|s| !members.contains(s)) {
                    let probe = Agent {
                        node: String::new(),
                        addr: *s,
                        since: 0,
                    };
                    r = r.and(foca.announce(probe, &mut runtime));
                }
                r
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "gossip");
        }
        while let Some((to, data)) = runtime.to_send() {
            if let Err(e) = socket.try_send_to(&seal(settings.key.as_ref(), &data), to.addr) {
                tracing::debug!(to = %to.addr, error = %e, "gossip send");
            }
        }
        while let Some((after, timer)) = runtime.to_schedule() {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(Input::Timer(timer));
            });
        }
        let mut changed = false;
        while let Some(n) = runtime.to_notify() {
            match n {
                OwnedNotification::MemberUp(a) => {
                    tracing::info!(node = %a.node, addr = %a.addr, "agent joined");
                    changed = true;
                }
                OwnedNotification::MemberDown(a) => {
                    tracing::warn!(node = %a.node, addr = %a.addr, "agent down");
                    changed = true;
                }
                OwnedNotification::Rename(..) => changed = true,
                _ => {}
            }
        }
        if changed {
            let now: BTreeSet<String> = foca
                .iter_members()
                .map(|m| m.id().node.clone())
                .chain([me.clone()])
                .collect();
            live.send_if_modified(|l| {
                let differs = *l != now;
                if differs {
                    *l = now;
                }
                differs
            });
        }
    }
}

/// Parses `--gossip-listen` (`off` disables gossip).
pub fn parse_listen(s: &str) -> anyhow::Result<Option<SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .with_context(|| format!("--gossip-listen: {s:?} is not host:port or off"))
}

/// Parses `--gossip-join`.
pub fn parse_join(list: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    list.iter()
        .map(|s| {
            s.trim()
                .parse()
                .with_context(|| format!("--gossip-join: {s:?} is not host:port"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings(node: &str, join: Vec<SocketAddr>) -> Settings {
        Settings {
            node: node.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            join,
            probe_period: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(80),
            suspect_timeout: Duration::from_millis(400),
            key: None,
            drops: DropCounts::default(),
        }
    }

    #[tokio::test]
    async fn a_running_agent_drops_and_counts_hostile_datagrams() {
        let key = GossipKey::new(b"the lab's gossip key, 32 bytes!!").unwrap();
        let drops = DropCounts::default();
        let a = Gossip::start(Settings {
            key: Some(key.clone()),
            drops: drops.clone(),
            ..settings("a", vec![])
        })
        .await
        .unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = a.local_addr();
        let valid_tag = key.seal(b"not a gossip message", now_ms());
        for datagram in [
            vec![0u8; 5_000],                     // oversized
            vec![1u8; 8],                         // truncated
            vec![2u8; 200],                       // no valid tag
            key.seal(b"x", now_ms() - 3_600_000), // an hour old
            valid_tag.clone(),                    // authentic, not foca's
            valid_tag,                            // the same, replayed
        ] {
            s.send_to(&datagram, to).await.unwrap();
        }
        let mut dropped = a.dropped();
        tokio::time::timeout(Duration::from_secs(10), dropped.wait_for(|n| *n >= 6))
            .await
            .expect("six datagrams dropped")
            .unwrap();
        assert_eq!(*dropped.borrow(), 6);
        let counts: Vec<u64> = Dropped::ALL
            .iter()
            .map(|why| {
                drops
                    .get_or_create(&DropLabel {
                        reason: why.label(),
                    })
                    .get()
            })
            .collect();
        // oversized; truncated and untagged; an hour old; replayed;
        // authentic but not gossip.
        assert_eq!(counts, [1, 2, 1, 1, 1]);
        assert_eq!(a.live(), BTreeSet::from(["a".to_owned()]));
    }

    #[test]
    fn replayed_stale_truncated_and_foreign_datagrams_are_dropped_with_their_reason() {
        let key = GossipKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let other = GossipKey::new(b"fedcba9876543210fedcba9876543210").unwrap();
        let mut seen = Seen::default();
        let now = 1_700_000_000_000;
        let sealed = key.seal(b"probe", now);
        assert_eq!(seen.open(&key, &sealed, now + 5), Ok(&b"probe"[..]));
        assert_eq!(seen.open(&key, &sealed, now + 10), Err(Dropped::Replayed));
        let old = key.seal(b"probe", now - REPLAY_WINDOW_MS - 1);
        assert_eq!(seen.open(&key, &old, now), Err(Dropped::Stale));
        let ahead = key.seal(b"probe", now + REPLAY_WINDOW_MS + 1);
        assert_eq!(seen.open(&key, &ahead, now), Err(Dropped::Stale));
        assert_eq!(
            seen.open(&key, &sealed[..sealed.len() - 1], now),
            Err(Dropped::BadTag)
        );
        assert_eq!(
            seen.open(&key, &other.seal(b"probe", now), now),
            Err(Dropped::BadTag)
        );
        // The same data sent again is a new datagram (a new stamp).
        assert!(seen.open(&key, &key.seal(b"probe", now + 1), now).is_ok());
    }

    #[test]
    fn sealed_datagrams_open_only_with_the_same_key() {
        let key = GossipKey::new(b"0123456789abcdef0123456789abcdef").unwrap();
        let other = GossipKey::new(b"fedcba9876543210fedcba9876543210").unwrap();
        let sealed = key.seal(b"probe", 1_000);
        assert_eq!(sealed.len(), STAMP_LEN + 5 + TAG_LEN);
        assert_eq!(key.open(&sealed), Some((1_000, &b"probe"[..])));
        assert_eq!(other.open(&sealed), None);
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert_eq!(key.open(&tampered), None);
        assert_eq!(key.open(b"short"), None);
        assert_eq!(key.open(b""), None);
        let e = GossipKey::new(b"too short").unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
    }

    #[tokio::test]
    async fn agents_without_the_key_are_not_heard() {
        let key = GossipKey::new(b"the lab's gossip key, 32 bytes!!").unwrap();
        let keyed = |node: &str, join| Settings {
            key: Some(key.clone()),
            ..settings(node, join)
        };
        let a = Gossip::start(keyed("a", vec![])).await.unwrap();
        let b = Gossip::start(keyed("b", vec![a.local_addr()]))
            .await
            .unwrap();
        let stranger = Gossip::start(settings("x", vec![a.local_addr(), b.local_addr()]))
            .await
            .unwrap();
        until("a and b", &a, &["a", "b"], Duration::from_secs(5)).await;
        until("b and a", &b, &["a", "b"], Duration::from_secs(5)).await;
        // The stranger's joins reach a and are dropped, again and again.
        let mut dropped = a.dropped();
        tokio::time::timeout(Duration::from_secs(10), dropped.wait_for(|n| *n >= 3))
            .await
            .expect("the stranger's datagrams never reached a")
            .unwrap();
        assert_eq!(a.live(), BTreeSet::from(["a".to_owned(), "b".to_owned()]));
        assert_eq!(b.live(), BTreeSet::from(["a".to_owned(), "b".to_owned()]));
        assert_eq!(stranger.live(), BTreeSet::from(["x".to_owned()]));
    }

    /// Waits until `g`'s live set is `want`; fails after `within` (a
    /// deadline against a hang, not a measure: speed is benchmarked).
    async fn until(what: &str, g: &Gossip, want: &[&str], within: Duration) {
        let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
        let mut w = g.watch();
        let reached = tokio::time::timeout(within, w.wait_for(|live| *live == want)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "{what}: {:?} after {within:?}",
            g.live()
        );
    }

    #[tokio::test]
    async fn agents_find_each_other_and_notice_a_dead_one() {
        let a = Gossip::start(settings("a", vec![])).await.unwrap();
        let b = Gossip::start(settings("b", vec![a.local_addr()]))
            .await
            .unwrap();
        let c = Gossip::start(settings("c", vec![a.local_addr()]))
            .await
            .unwrap();
        let all = ["a", "b", "c"];
        for g in [&a, &b, &c] {
            until("join", g, &all, Duration::from_secs(5)).await;
        }
        // c dies without a goodbye.
        drop(c);
        until("death", &a, &["a", "b"], Duration::from_secs(10)).await;
        until("death", &b, &["a", "b"], Duration::from_secs(10)).await;
    }

    #[tokio::test]
    async fn an_agent_that_leaves_is_gone_at_once() {
        // Suspicion alone would take ten minutes: b can only be gone
        // within the deadline below because it said goodbye.
        let patient = |node: &str, join| Settings {
            suspect_timeout: Duration::from_secs(600),
            ..settings(node, join)
        };
        let a = Gossip::start(patient("a", vec![])).await.unwrap();
        let b = Gossip::start(patient("b", vec![a.local_addr()]))
            .await
            .unwrap();
        until("join", &a, &["a", "b"], Duration::from_secs(10)).await;
        until("join", &b, &["a", "b"], Duration::from_secs(10)).await;
        b.leave().await;
        until("leave", &a, &["a"], Duration::from_secs(60)).await;
    }

    #[tokio::test]
    async fn bad_timings_and_addresses_are_refused_with_the_flag_named() {
        let mut s = settings("a", vec![]);
        s.probe_timeout = s.probe_period;
        let e = s.config().unwrap_err().to_string();
        assert!(e.contains("--gossip-probe-timeout"), "{e}");
        assert_eq!(parse_listen("off").unwrap(), None);
        let mut s = settings("a", vec![]);
        s.listen = "0.0.0.0:0".parse().unwrap();
        let e = Gossip::start(s).await.err().unwrap().to_string();
        assert!(e.contains("others need an address"), "{e}");
        assert!(
            parse_listen("nope")
                .unwrap_err()
                .to_string()
                .contains("--gossip-listen")
        );
        assert!(
            parse_join(&["1.2.3.4".into()])
                .unwrap_err()
                .to_string()
                .contains("--gossip-join")
        );
    }
}
