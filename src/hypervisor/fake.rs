//! An in-memory [`Host`] for unit tests of pure logic (protocol ordering, abort paths).
//!
//! It records every call in order, can be told to fail a given operation on a given domain,
//! and models only what the protocol observes: run state, metadata and which file each disk
//! currently writes to. It is never the only test of a feature: the libvirt adapter and the
//! real-VM integration tests cover the same paths against real libvirtd and QEMU.

use super::{BlockJob, DomState, DomainSummary, Host, HvError, HvErrorKind, HvResult};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

/// One domain of a [`FakeHost`].
#[derive(Debug, Clone)]
pub struct FakeDomain {
    /// Its run state.
    pub state: DomState,
    /// The definition (persistent config).
    pub xml: String,
    /// What the domain runs on when it differs from `xml` (started before a config change).
    pub live_xml: Option<String>,
    /// The cgsnap group metadata element, if any.
    pub metadata: Option<String>,
    /// disk target -> overlay it was switched to by a snapshot.
    pub overlays: BTreeMap<String, String>,
    /// disk target -> the block job running on it.
    pub jobs: BTreeMap<String, BlockJob>,
}

/// A domain with one qcow2 disk `vda` on `source`; `extra` goes inside `<disk>` (a
/// `<backingStore>`, a `<mirror>`).
pub fn one_disk(source: &str, extra: &str) -> String {
    format!(
        "<domain><devices><disk type='file' device='disk'><driver type='qcow2'/>\
         <source file='{source}'/>{extra}<target dev='vda'/></disk></devices></domain>"
    )
}

/// A fake libvirt connection: its domains, injected failures and delays, and a call log.
#[derive(Default)]
pub struct FakeHost {
    /// The URI it answers for.
    pub uri: String,
    /// Domains by name.
    pub domains: Mutex<BTreeMap<String, FakeDomain>>,
    /// (operation, domain) pairs that fail.
    pub fail: Mutex<HashSet<(String, String)>>,
    /// "op:domain" in call order.
    pub log: Mutex<Vec<String>>,
    /// (operation, domain) pairs that take this long (to model a slow member).
    pub slow: Mutex<BTreeMap<(String, String), std::time::Duration>>,
    /// `(op, dom)`: when `op` is next called on `dom`, `dom` is started first, as by someone
    /// else, on its definition of that moment.
    pub start_on: Mutex<Option<(String, String)>>,
    /// Storage pools: target directory -> bytes free.
    pub pools: Mutex<BTreeMap<String, u64>>,
    /// Files in those pools' directories (what `pool_has` finds).
    pub pool_files: Mutex<HashSet<String>>,
    /// Image file -> the backing file its header names, which libvirt reads when it starts a
    /// domain on the image and shows as the disk's `<backingStore>`.
    pub backing: Mutex<BTreeMap<String, String>>,
    /// Domains with a running backup job (only what `backup_xml` and `backup_abort` need).
    pub backup_jobs: Mutex<HashSet<String>>,
}

impl FakeHost {
    /// An empty host answering for `uri`.
    pub fn new(uri: &str) -> Self {
        Self {
            uri: uri.to_string(),
            ..Default::default()
        }
    }

    /// Define a running domain `name` with definition `xml`.
    pub fn add(&self, name: &str, xml: &str) {
        self.lock_domains().insert(
            name.to_string(),
            FakeDomain {
                state: DomState::Running,
                xml: xml.to_string(),
                live_xml: None,
                metadata: None,
                overlays: BTreeMap::new(),
                jobs: BTreeMap::new(),
            },
        );
    }

    /// Make operation `op` (e.g. `suspend`) on `dom` fail from now on.
    pub fn fail_on(&self, op: &str, dom: &str) {
        self.fail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((op.to_string(), dom.to_string()));
    }

    /// Make operation `op` on `dom` take `d` before it answers.
    pub fn slow_on(&self, op: &str, dom: &str, d: std::time::Duration) {
        self.slow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((op.to_string(), dom.to_string()), d);
    }

    /// Set `dom`'s run state, as something outside cgsnap would.
    pub fn set_state(&self, dom: &str, state: DomState) {
        if let Some(d) = self.lock_domains().get_mut(dom) {
            d.state = state;
        }
    }

    /// Every call so far, as `op:domain`, in order.
    pub fn calls(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `dom`'s run state, `None` when it does not exist.
    pub fn state_of(&self, dom: &str) -> Option<DomState> {
        self.lock_domains().get(dom).map(|d| d.state)
    }

    fn lock_domains(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FakeDomain>> {
        self.domains.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `fail_on(op, dom)` asked for this fault.
    fn injected(&self, op: &str, dom: &str) -> bool {
        self.fail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(op.to_string(), dom.to_string()))
    }

    fn enter(&self, op: &'static str, dom: &str) -> HvResult<()> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{op}:{dom}"));
        let mut start = self.start_on.lock().unwrap_or_else(|p| p.into_inner());
        if start.as_ref().is_some_and(|(o, d)| o == op && d == dom) {
            *start = None;
            if let Some(d) = self.lock_domains().get_mut(dom) {
                d.state = DomState::Running;
                d.live_xml = Some(d.xml.clone());
            }
        }
        drop(start);
        let delay = self
            .slow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(op.to_string(), dom.to_string()))
            .copied();
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        if self.injected(op, dom) {
            return Err(self.error(op, dom, HvErrorKind::Other, "injected failure"));
        }
        Ok(())
    }

    fn error(&self, op: &'static str, dom: &str, kind: HvErrorKind, msg: &str) -> HvError {
        HvError {
            uri: self.uri.clone(),
            op,
            target: dom.to_string(),
            message: msg.to_string(),
            kind,
        }
    }

    fn with<T>(
        &self,
        op: &'static str,
        dom: &str,
        f: impl FnOnce(&mut FakeDomain) -> HvResult<T>,
    ) -> HvResult<T> {
        self.enter(op, dom)?;
        let mut doms = self.lock_domains();
        match doms.get_mut(dom) {
            Some(d) => f(d),
            None => Err(self.error(op, dom, HvErrorKind::NoDomain, "no such domain")),
        }
    }
}

impl Host for FakeHost {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn list_domains(&self) -> HvResult<Vec<DomainSummary>> {
        Ok(self
            .lock_domains()
            .iter()
            .map(|(n, d)| DomainSummary {
                name: n.clone(),
                state: d.state,
                persistent: true,
            })
            .collect())
    }

    fn state(&self, dom: &str) -> HvResult<DomState> {
        self.with("state", dom, |d| Ok(d.state))
    }

    fn xml(&self, dom: &str) -> HvResult<String> {
        self.with("xml", dom, |d| {
            Ok(d.live_xml.clone().unwrap_or(d.xml.clone()))
        })
    }

    fn uuid(&self, dom: &str) -> HvResult<String> {
        self.with("uuid", dom, |_| Ok(format!("fake-{dom}")))
    }

    fn persistent(&self, dom: &str) -> HvResult<bool> {
        self.with("persistent", dom, |_| Ok(true))
    }

    /// True after `fail_on("managed_save", dom)`: the domain was saved, not shut down.
    fn has_managed_save(&self, dom: &str) -> HvResult<bool> {
        let saved = self.injected("managed_save", dom);
        self.with("has_managed_save", dom, |_| Ok(saved))
    }

    fn capacity(&self, dom: &str, _disk: &str) -> HvResult<u64> {
        self.with("capacity", dom, |_| Ok(64 << 20))
    }

    /// With `fail_on("vanish", dom)` the domain is still listed but gone when its metadata
    /// is read, as a transient domain destroyed between the two calls.
    fn metadata(&self, dom: &str, _ns: &str) -> HvResult<Option<String>> {
        if self.injected("vanish", dom) {
            return Err(self.error("metadata", dom, HvErrorKind::NoDomain, "no such domain"));
        }
        self.with("metadata", dom, |d| Ok(d.metadata.clone()))
    }

    fn set_metadata(&self, dom: &str, _ns: &str, _key: &str, xml: Option<&str>) -> HvResult<()> {
        self.with("set_metadata", dom, |d| {
            d.metadata = xml.map(str::to_string);
            Ok(())
        })
    }

    /// With `fail_on("suspend_lost", dom)` the domain is paused but the call fails, as when
    /// the reply to a pause is lost.
    fn suspend(&self, dom: &str) -> HvResult<()> {
        let lost = self.injected("suspend_lost", dom);
        self.with("suspend", dom, |d| {
            d.state = DomState::PausedByUser;
            Ok(())
        })?;
        if lost {
            return Err(self.error(
                "suspend",
                dom,
                HvErrorKind::ConnectionLost,
                "connection closed",
            ));
        }
        Ok(())
    }

    /// [`DomState::PausedOther`] stands for a pause on an I/O error here.
    fn paused_on_io_error(&self, dom: &str) -> HvResult<bool> {
        self.with("paused_on_io_error", dom, |d| {
            Ok(d.state == DomState::PausedOther)
        })
    }

    fn backup_xml(&self, dom: &str) -> HvResult<Option<String>> {
        self.with("backup_xml", dom, |_| Ok(()))?;
        let jobs = self.backup_jobs.lock().unwrap_or_else(|p| p.into_inner());
        Ok(jobs.contains(dom).then(|| "<domainbackup/>".to_string()))
    }

    fn backup_abort(&self, dom: &str) -> HvResult<()> {
        self.with("backup_abort", dom, |_| Ok(()))?;
        let mut jobs = self.backup_jobs.lock().unwrap_or_else(|p| p.into_inner());
        jobs.remove(dom);
        Ok(())
    }

    fn resume(&self, dom: &str) -> HvResult<()> {
        self.with("resume", dom, |d| {
            d.state = DomState::Running;
            Ok(())
        })
    }

    fn snapshot(&self, dom: &str, snapshot_xml: &str, _reuse: bool) -> HvResult<()> {
        let xml = snapshot_xml.to_string();
        self.with("snapshot", dom, move |d| {
            let doc = roxmltree::Document::parse(&xml).map_err(|e| HvError {
                uri: String::new(),
                op: "snapshot",
                target: String::new(),
                message: e.to_string(),
                kind: HvErrorKind::Other,
            })?;
            for disk in doc.descendants().filter(|n| n.has_tag_name("disk")) {
                if disk.attribute("snapshot") != Some("external") {
                    continue;
                }
                let name = disk.attribute("name").unwrap_or_default().to_string();
                let file = disk
                    .descendants()
                    .find(|n| n.has_tag_name("source"))
                    .and_then(|s| s.attribute("file"))
                    .unwrap_or_default()
                    .to_string();
                d.overlays.insert(name, file);
            }
            Ok(())
        })
    }

    /// Starts a job that is ready at once, or (with `fail_on("job_lost", dom)`) one that ends
    /// at once without a pivot, as a commit that failed does.
    fn commit_active(&self, dom: &str, disk: &str, _bandwidth: u64) -> HvResult<()> {
        let lost = self.injected("job_lost", dom);
        self.with("commit", dom, |d| {
            if !lost {
                d.jobs
                    .insert(disk.to_string(), BlockJob { cur: 10, end: 10 });
            }
            Ok(())
        })
    }

    fn block_job(&self, dom: &str, disk: &str) -> HvResult<Option<BlockJob>> {
        self.with("block_job", dom, |d| Ok(d.jobs.get(disk).copied()))
    }

    fn pivot(&self, dom: &str, disk: &str) -> HvResult<()> {
        self.with("pivot", dom, |d| {
            d.jobs.remove(disk);
            d.overlays.remove(disk);
            Ok(())
        })
    }

    fn abort_job(&self, dom: &str, disk: &str) -> HvResult<()> {
        self.with("abort_job", dom, |d| {
            d.jobs.remove(disk);
            Ok(())
        })
    }

    /// Replaces the `<disk>` element with the same target in the domain's XML.
    fn set_disk_config(&self, dom: &str, disk_xml: &str) -> HvResult<()> {
        let bad = |message: String| HvError {
            uri: String::new(),
            op: "set_disk_config",
            target: dom.to_string(),
            message,
            kind: HvErrorKind::Other,
        };
        let target_of = |n: roxmltree::Node| {
            n.children()
                .find(|c| c.has_tag_name("target"))
                .and_then(|t| t.attribute("dev"))
                .map(str::to_string)
        };
        let new = roxmltree::Document::parse(disk_xml).map_err(|e| bad(e.to_string()))?;
        let target = target_of(new.root_element()).ok_or_else(|| bad("no target".into()))?;
        self.with("set_disk_config", dom, |d| {
            let doc = roxmltree::Document::parse(&d.xml).map_err(|e| bad(e.to_string()))?;
            let range = doc
                .descendants()
                .find(|n| n.has_tag_name("disk") && target_of(*n).as_deref() == Some(&target))
                .map(|n| n.range())
                .ok_or_else(|| bad(format!("no disk {target}")))?;
            let mut xml = d.xml.clone();
            xml.replace_range(range, disk_xml);
            d.xml = xml;
            Ok(())
        })
    }

    fn pool_has(&self, path: &str) -> HvResult<Option<bool>> {
        let dir = std::path::Path::new(path)
            .parent()
            .and_then(|d| d.to_str())
            .unwrap_or("/");
        if !self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(dir)
        {
            return Ok(None);
        }
        Ok(Some(
            self.pool_files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(path),
        ))
    }

    /// Adds the domain, paused, with a `<backingStore>` after each `<source file='P'/>` whose
    /// P has an entry in [`FakeHost::backing`].
    fn start_helper(&self, name: &str, xml: &str) -> HvResult<()> {
        self.enter("start_helper", name)?;
        if self.lock_domains().contains_key(name) {
            return Err(self.error(
                "start_helper",
                name,
                HvErrorKind::Other,
                "domain already exists",
            ));
        }
        let mut xml = xml.to_string();
        for (file, base) in self
            .backing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let source = format!("<source file='{file}'/>");
            let chain = format!(
                "{source}<backingStore type='file'><format type='qcow2'/><source file='{base}'/><backingStore/></backingStore>"
            );
            xml = xml.replace(&source, &chain);
        }
        self.add(name, &xml);
        self.set_state(name, DomState::PausedByUser);
        Ok(())
    }

    fn destroy(&self, dom: &str) -> HvResult<()> {
        self.enter("destroy", dom)?;
        match self.lock_domains().remove(dom) {
            Some(_) => Ok(()),
            None => Err(self.error("destroy", dom, HvErrorKind::NoDomain, "no such domain")),
        }
    }

    fn pool_free(&self, dir: &str) -> HvResult<Option<u64>> {
        Ok(self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(dir)
            .copied())
    }
}
