//! The proxier: keeps the kernel's ruleset in step with the catalog.
//!
//! ```text
//!  catalog + Changes ──> render changed Services ──> Model diff ──> Transaction ──> Backend
//!                                                         └── stale UDP flows ──> Conntrack
//! ```
//!
//! A full sync (at start, on request, and after any failure) rebuilds
//! everything; a partial sync touches only the Services that changed.

use crate::Result;
use crate::backend::Backend;
use crate::conntrack::Conntrack;
use crate::model::{Existing, Model, StaticSets, UdpChanges};
use crate::names::Family;
use crate::render::{Config, ConntrackTarget, render_service};
use crate::tx::Transaction;
use portico_catalog::{Catalog, Changes, Key};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A full or a partial sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncKind {
    /// Everything rewritten.
    Full,
    /// Only changed Services.
    Partial,
}

impl SyncKind {
    /// `full` or `partial`.
    pub fn label(self) -> &'static str {
        match self {
            SyncKind::Full => "full",
            SyncKind::Partial => "partial",
        }
    }
}

/// What a sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// Full or partial.
    pub kind: SyncKind,
    /// Wall time, from rendering to the kernel's answer.
    pub duration: Duration,
    /// Operations in the transaction (0: nothing to do, nothing applied).
    pub operations: usize,
    /// Services rendered.
    pub services: usize,
    /// Chains installed afterwards.
    pub chains: usize,
    /// Set and map elements installed afterwards.
    pub elements: usize,
    /// UDP conntrack entries deleted.
    pub conntrack_deleted: usize,
    /// Conntrack deletions that failed (logged, not fatal).
    pub conntrack_errors: usize,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Proxier<B: Backend, C: Conntrack> {
    config: Config,
    backend: B,
    conntrack: C,
    model: Model,
    needs_full: bool,
    /// The last full sync failed: the next one recreates the static sets.
    full_failed: bool,
}

impl<B: Backend, C: Conntrack> Proxier<B, C> {
    /// A proxier whose first sync is full.
    pub fn new(config: Config, backend: B, conntrack: C) -> Self {
        Proxier {
            config,
            backend,
            conntrack,
            model: Model::default(),
            needs_full: true,
            full_failed: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes the configuration; the next sync is full when it differs.
    pub fn set_config(&mut self, config: Config) {
        if config != self.config {
            self.config = config;
            self.needs_full = true;
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (tests inject failures through it).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The conntrack cleaner.
    pub fn conntrack(&self) -> &C {
        &self.conntrack
    }

    /// The ruleset as installed by the last successful sync.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Whether the next sync will be full.
    pub fn needs_full_sync(&self) -> bool {
        self.needs_full
    }

    /// Makes the next sync full.
    pub fn request_full_sync(&mut self) {
        self.needs_full = true;
    }

    /// A full sync when one is due, else a partial sync of the changed
    /// Services.
    pub fn sync(&mut self, catalog: &Catalog, changes: &Changes) -> Result<SyncReport> {
        if self.needs_full {
            self.full_sync(catalog)
        } else {
            self.partial_sync(catalog, changes.services.iter())
        }
    }

    /// What this proxier has installed (its last successful syncs), in
    /// the in-memory nftables: its model written out whole, as a full sync
    /// into an empty table would write it.
    pub fn installed(&self) -> Result<crate::MemoryNft> {
        let mut model = self.model.clone();
        let tx = model.full_transaction(&self.config, &BTreeMap::new(), StaticSets::Recreate);
        let mut nft = crate::MemoryNft::new();
        nft.apply(&tx)?;
        Ok(nft)
    }

    /// Rewrites everything and deletes what is no longer wanted.
    pub fn full_sync(&mut self, catalog: &Catalog) -> Result<SyncReport> {
        self.full_sync_and_forget(catalog, UdpChanges::default())
    }

    /// A full sync that also carries out `pending` UDP changes (those a
    /// partial sync found before it gave way to a full one).
    fn full_sync_and_forget(
        &mut self,
        catalog: &Catalog,
        pending: UdpChanges,
    ) -> Result<SyncReport> {
        let start = Instant::now();
        self.needs_full = true;
        let mut existing: BTreeMap<Family, Existing> = BTreeMap::new();
        for family in Family::ALL {
            existing.insert(family, self.backend.list(family)?);
        }
        let mut model = Model::rebuild(&self.config, catalog, &self.model);
        let sets = if self.full_failed {
            StaticSets::Recreate
        } else {
            StaticSets::Keep
        };
        let tx = model.full_transaction(&self.config, &existing, sets);
        if let Err(e) = self.backend.apply(&tx) {
            self.full_failed = true;
            return Err(e);
        }
        let old = std::mem::replace(&mut self.model, model);
        self.needs_full = false;
        self.full_failed = false;
        let now: Vec<(ConntrackTarget, SocketAddr)> = udp_flows(&self.model);
        let mut udp = UdpChanges::between(&udp_flows(&old), &now);
        // What the partial sync that gave way found, where it still holds.
        let flows: HashSet<&(ConntrackTarget, SocketAddr)> = now.iter().collect();
        let targets: HashSet<ConntrackTarget> = now.iter().map(|(t, _)| *t).collect();
        udp.stale
            .extend(pending.stale.into_iter().filter(|f| !flows.contains(f)));
        udp.fresh
            .extend(pending.fresh.into_iter().filter(|t| targets.contains(t)));
        Ok(self.finish(SyncKind::Full, start, &tx, catalog.service_count(), udp))
    }

    /// Rewrites the rules of some Services (those gone from the catalog
    /// are removed). Falls back to a full sync when one is due.
    pub fn partial_sync<'a>(
        &mut self,
        catalog: &Catalog,
        services: impl IntoIterator<Item = &'a Key>,
    ) -> Result<SyncReport> {
        if self.needs_full {
            return self.full_sync(catalog);
        }
        let start = Instant::now();
        let updates: Vec<(Key, Option<_>)> = services
            .into_iter()
            .map(|key| {
                let rendered = catalog
                    .service(key)
                    .map(|svc| render_service(&self.config, svc, catalog.endpoints(key)));
                (key.clone(), rendered)
            })
            .collect();
        let count = updates.len();
        let (tx, udp) = self.model.partial_transaction(updates);
        if self.model.outgrown() {
            // A set would hold more than it was declared for: a full sync
            // declares it anew, larger.
            self.needs_full = true;
            return self.full_sync_and_forget(catalog, udp);
        }
        if !tx.is_empty()
            && let Err(e) = self.backend.apply(&tx)
        {
            // The model now describes what was wanted, not what is there.
            self.needs_full = true;
            return Err(e);
        }
        Ok(self.finish(SyncKind::Partial, start, &tx, count, udp))
    }

    fn finish(
        &mut self,
        kind: SyncKind,
        start: Instant,
        tx: &Transaction,
        services: usize,
        mut udp: UdpChanges,
    ) -> SyncReport {
        udp.tidy();
        let mut deleted = 0;
        let mut errors = 0;
        for (target, endpoint) in udp.stale {
            match self.conntrack.delete_udp(target, endpoint) {
                Ok(n) => deleted += n,
                Err(e) => {
                    errors += 1;
                    tracing::warn!(error = %e, ?target, %endpoint, "deleting UDP conntrack entries");
                }
            }
        }
        for target in udp.fresh {
            match self.conntrack.delete_udp_untranslated(target) {
                Ok(n) => deleted += n,
                Err(e) => {
                    errors += 1;
                    tracing::warn!(error = %e, ?target, "deleting untranslated UDP conntrack entries");
                }
            }
        }
        SyncReport {
            kind,
            duration: start.elapsed(),
            operations: tx.len(),
            services,
            chains: self.model.chain_count(),
            elements: self.model.element_count(),
            conntrack_deleted: deleted,
            conntrack_errors: errors,
        }
    }
}

fn udp_flows(model: &Model) -> Vec<(ConntrackTarget, SocketAddr)> {
    model.udp_flows().collect()
}

/// Whether this process may program nftables: it holds `CAP_NET_ADMIN`
/// (read from `/proc/self/status`).
pub fn can_program_nftables() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}
