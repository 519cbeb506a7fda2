//! libvirt's backup API (pull mode) and checkpoints, which the `virt` crate does not wrap:
//! raw `virt::sys` calls on a [`LibvirtHost`]'s domain pointers.
//!
//! Invariants: the `Domain` a pointer comes from outlives every call made with it; every
//! string libvirt returns is copied and then freed with `libc`'s `free` (libvirt's rule), and
//! every checkpoint handle is freed, on error paths too. Nothing here retries or waits.

use super::libvirt::LibvirtHost;
use super::{HvError, HvErrorKind, HvResult};
use std::ffi::{CStr, c_char, c_void};
use virt::sys;

unsafe extern "C" {
    /// libc's `free`, for the strings and arrays libvirt allocates for its caller.
    fn free(p: *mut c_void);
}

/// Copy a string libvirt allocated for us and free it; `None` for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string allocated with malloc that nobody else frees.
unsafe fn take_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract; freed once, after the copy.
    unsafe {
        let s = CStr::from_ptr(p).to_string_lossy().into_owned();
        free(p.cast());
        Some(s)
    }
}

impl LibvirtHost {
    pub(super) fn begin_backup(
        &self,
        dom: &str,
        backup_xml: &str,
        checkpoint_xml: &str,
    ) -> HvResult<()> {
        let d = self.dom(dom)?;
        let b = self.cstr("begin backup", dom, backup_xml)?;
        let c = self.cstr("begin backup", dom, checkpoint_xml)?;
        // SAFETY: valid domain pointer (`d` lives to the end of the function) and two
        // NUL-terminated XML strings. REUSE_EXTERNAL (the only flag 9.0 knows): the scratch
        // files were pre-created outside the freeze; libvirt neither creates nor deletes them.
        let rc = unsafe {
            sys::virDomainBackupBegin(
                d.as_ptr(),
                b.as_ptr(),
                c.as_ptr(),
                sys::VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL,
            )
        };
        if rc < 0 {
            return Err(self.last_err("begin backup", dom));
        }
        Ok(())
    }

    pub(super) fn backup_desc(&self, dom: &str) -> HvResult<Option<String>> {
        let d = self.dom(dom)?;
        // SAFETY: valid domain pointer; the returned string is ours to free (take_string).
        let p = unsafe { sys::virDomainBackupGetXMLDesc(d.as_ptr(), 0) };
        // SAFETY: NULL or a malloc'd string handed to us.
        match unsafe { take_string(p) } {
            Some(x) => Ok(Some(x)),
            None => {
                let e = self.last_err("get backup XML", dom);
                if e.kind == HvErrorKind::NoBackup {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub(super) fn abort_backup(&self, dom: &str) -> HvResult<()> {
        let d = self.dom(dom)?;
        // SAFETY: valid domain pointer. For a pull backup this asks QEMU to cancel its jobs;
        // libvirt finishes the job (scratch deleted, NBD server stopped) when they report back.
        let rc = unsafe { sys::virDomainAbortJob(d.as_ptr()) };
        if rc < 0 {
            return Err(self.last_err("abort backup job", dom));
        }
        Ok(())
    }

    pub(super) fn list_checkpoints(&self, dom: &str) -> HvResult<Vec<String>> {
        let d = self.dom(dom)?;
        let mut list: *mut sys::virDomainCheckpointPtr = std::ptr::null_mut();
        // SAFETY: valid domain pointer; `list` receives a malloc'd array of `n` handles.
        let n = unsafe { sys::virDomainListAllCheckpoints(d.as_ptr(), &mut list, 0) };
        if n < 0 {
            return Err(self.last_err("list checkpoints", dom));
        }
        let mut names = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            // SAFETY: `i < n`, so the element is one of the handles libvirt returned; each is
            // read, freed once, and never used again.
            unsafe {
                let cp = *list.add(i);
                let name = sys::virDomainCheckpointGetName(cp);
                if !name.is_null() {
                    // Owned by the handle, not by us: copy, do not free.
                    names.push(CStr::from_ptr(name).to_string_lossy().into_owned());
                }
                sys::virDomainCheckpointFree(cp);
            }
        }
        // SAFETY: the array itself is ours to free; its elements were freed above.
        unsafe { free(list.cast()) };
        names.sort();
        Ok(names)
    }

    /// The checkpoint `name` of `dom`, and the `DOM/NAME` errors name it by.
    fn lookup_checkpoint(&self, dom: &str, name: &str) -> HvResult<(Checkpoint, String)> {
        let d = self.dom(dom)?;
        let target = format!("{dom}/{name}");
        let c = self.cstr("look up checkpoint", &target, name)?;
        // SAFETY: valid domain pointer and NUL-terminated name; a non-null result is owned by
        // the returned `Checkpoint`, which frees it once.
        let cp = unsafe { sys::virDomainCheckpointLookupByName(d.as_ptr(), c.as_ptr(), 0) };
        if cp.is_null() {
            return Err(self.last_err("look up checkpoint", &target));
        }
        Ok((Checkpoint(cp), target))
    }

    pub(super) fn probe_checkpoint(&self, dom: &str, name: &str) -> HvResult<()> {
        let (cp, target) = self.lookup_checkpoint(dom, name)?;
        // SAFETY: `cp` is valid until dropped (after the error, if any, was read); the
        // returned string is ours (take_string).
        let xml = unsafe {
            let x = sys::virDomainCheckpointGetXMLDesc(cp.0, sys::VIR_DOMAIN_CHECKPOINT_XML_SIZE);
            let err = x
                .is_null()
                .then(|| self.last_err("probe checkpoint", &target));
            match (take_string(x), err) {
                (_, Some(e)) => return Err(e),
                (x, None) => x.unwrap_or_default(),
            }
        };
        // libvirt 9.0 sizes what it can and silently leaves out a disk whose bitmap QEMU no
        // longer has; an incremental from it would then fail inside the freeze.
        match unsized_disks(&xml).as_slice() {
            [] => Ok(()),
            disks => Err(HvError {
                uri: crate::hypervisor::Host::uri(self).to_string(),
                op: "probe checkpoint",
                target,
                message: format!(
                    "no size for disk {}: bitmap {name} is missing or broken there",
                    disks.join(", ")
                ),
                kind: HvErrorKind::CheckpointInconsistent,
            }),
        }
    }

    pub(super) fn delete_checkpoint(
        &self,
        dom: &str,
        name: &str,
        metadata_only: bool,
    ) -> HvResult<()> {
        let (cp, target) = self.lookup_checkpoint(dom, name)?;
        let flags = if metadata_only {
            sys::VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
        } else {
            0
        };
        // SAFETY: `cp` is valid until dropped, after the error (if any) was read.
        let rc = unsafe { sys::virDomainCheckpointDelete(cp.0, flags) };
        if rc < 0 {
            return Err(self.last_err("delete checkpoint", &target));
        }
        Ok(())
    }
}

/// A checkpoint handle looked up by name, freed when dropped: every path frees it exactly once,
/// and only after libvirt's error for a failed call was read (freeing resets it).
struct Checkpoint(sys::virDomainCheckpointPtr);

impl Drop for Checkpoint {
    fn drop(&mut self) {
        // SAFETY: the handle came non-null from virDomainCheckpointLookupByName and is freed
        // only here.
        unsafe {
            sys::virDomainCheckpointFree(self.0);
        }
    }
}

/// The disks of a `<domaincheckpoint>` (asked for with sizes) that have a bitmap but no size.
fn unsized_disks(xml: &str) -> Vec<String> {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return vec!["(unreadable checkpoint XML)".into()];
    };
    doc.root_element()
        .children()
        .filter(|n| n.has_tag_name("disks"))
        .flat_map(|n| n.children())
        .filter(|d| d.has_tag_name("disk") && d.attribute("checkpoint") == Some("bitmap"))
        .filter(|d| d.attribute("size").is_none())
        .map(|d| d.attribute("name").unwrap_or("?").to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::unsized_disks;

    #[test]
    fn a_disk_libvirt_could_not_size_is_named() {
        let xml = "<domaincheckpoint><name>c</name><disks>\
            <disk name='vda' checkpoint='bitmap' bitmap='c' size='65536'/>\
            <disk name='sda' checkpoint='bitmap' bitmap='c'/>\
            <disk name='vdc' checkpoint='no'/></disks>\
            <domain><devices><disk><target dev='x'/></disk></devices></domain></domaincheckpoint>";
        assert_eq!(unsized_disks(xml), ["sda"]);
        let whole = xml.replace("bitmap='c'/>", "bitmap='c' size='0'/>");
        assert!(unsized_disks(&whole).is_empty(), "{whole}");
    }
}
