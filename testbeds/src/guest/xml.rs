//! The libvirt XML of a testbed guest: TCG, direct kernel boot, its disks in target order,
//! the serial console to a file, and no network but an optional loopback-only forward.

use super::{Spec, target};
use crate::assets::Assets;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The transient domain of `spec` with `disks` (vda, vdb, ...) and its console log file.
pub(super) fn domain_xml(
    spec: &Spec,
    assets: &Assets,
    disks: &[PathBuf],
    console: &Path,
) -> String {
    let mut x = String::new();
    let _ = write!(
        x,
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>{}</name><memory unit='MiB'>{}</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 quiet panic=-1 cgsnap.mode={} cgsnap.interval_ms={} {}</cmdline></os>\
         <clock offset='utc'/><on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>\
         <on_crash>destroy</on_crash><devices>",
        spec.name,
        spec.memory_mib,
        assets.kernel.display(),
        assets.initrd.display(),
        spec.mode,
        spec.interval_ms,
        spec.cmdline
    );
    for (i, d) in disks.iter().enumerate() {
        let scratch = spec.scratch && i + 1 == disks.len();
        let _ = write!(
            x,
            "<disk type='file' device='disk'{}><driver name='qemu' type='{}' cache='none'/>\
             <source file='{}'/><target dev='{}' bus='virtio'/></disk>",
            if scratch { " snapshot='no'" } else { "" },
            if scratch { "raw" } else { spec.format },
            d.display(),
            target(i)
        );
    }
    let _ = write!(
        x,
        "<serial type='file'><source path='{}'/><target port='0'/></serial>{}\
         <memballoon model='none'/></devices>",
        console.display(),
        spec.extra_devices
    );
    if let Some((host, guest)) = spec.forward {
        // User-mode networking: the guest reaches nothing but QEMU's NAT, and the host reaches
        // the guest only through this forward bound to loopback.
        let _ = write!(
            x,
            "<qemu:commandline><qemu:arg value='-netdev'/>\
             <qemu:arg value='user,id=cgnet,restrict=on,hostfwd=tcp:127.0.0.1:{host}-:{guest}'/>\
             <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev=cgnet,bus=pci.0,addr=0x1f'/></qemu:commandline>"
        );
    }
    x.push_str("</domain>");
    x
}
