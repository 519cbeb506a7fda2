//! A safe wrapper around libnbd (the NBD client library of the libguestfs project), for reading
//! disks that libvirt's pull-mode backup exports over NBD and for writing qcow2 files that
//! `qemu-nbd` serves.
//!
//! Invariants:
//! - cgsnap never speaks the NBD protocol itself: every request goes through libnbd, declared
//!   here by hand for exactly the functions used (the layouts follow `/usr/include/libnbd.h`
//!   of libnbd 1.14).
//! - One [`Nbd`] owns one libnbd handle and closes it when dropped; callers use one handle per
//!   thread (a handle is `Send`, not `Sync`).
//! - Every failure is an [`NbdError`] naming the URI, the call and libnbd's message, captured on
//!   the thread of the failing call right after it (libnbd keeps its last error per thread).
//! - [`Nbd::extents`] covers exactly the asked range, entries clipped to it, in order.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::ptr::NonNull;

/// `base:allocation`: the allocation status every NBD server offers.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// `base:allocation` flag: the extent is not allocated (it may still read as data through a
/// backing file unless [`STATE_ZERO`] is set too).
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` flag: the extent reads as zeros.
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:NAME` flag: the extent changed since the bitmap was started.
pub const STATE_DIRTY: u32 = 1;

/// libnbd refuses requests whose length does not fit the protocol's 32 bits; block status is
/// asked in pieces of at most this many bytes (the server may answer less: we loop).
const BLOCK_STATUS_MAX: u64 = 1 << 30;

/// libnbd's opaque handle.
#[repr(C)]
struct NbdHandle {
    _opaque: [u8; 0],
}

/// `nbd_extent_callback`, passed by value: the function, its data, and a free function libnbd
/// calls once when it no longer needs the data (none here: the data lives on our stack for the
/// whole synchronous call).
#[repr(C)]
struct ExtentCallback {
    callback: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            metacontext: *const c_char,
            offset: u64,
            entries: *mut u32,
            nr_entries: usize,
            error: *mut c_int,
        ) -> c_int,
    >,
    user_data: *mut c_void,
    free: Option<unsafe extern "C" fn(user_data: *mut c_void)>,
}

#[link(name = "nbd")]
unsafe extern "C" {
    fn nbd_create() -> *mut NbdHandle;
    fn nbd_close(h: *mut NbdHandle);
    fn nbd_get_error() -> *const c_char;
    fn nbd_get_errno() -> c_int;
    fn nbd_add_meta_context(h: *mut NbdHandle, name: *const c_char) -> c_int;
    fn nbd_connect_uri(h: *mut NbdHandle, uri: *const c_char) -> c_int;
    fn nbd_get_size(h: *mut NbdHandle) -> i64;
    fn nbd_can_meta_context(h: *mut NbdHandle, name: *const c_char) -> c_int;
    fn nbd_block_status(
        h: *mut NbdHandle,
        count: u64,
        offset: u64,
        extent_callback: ExtentCallback,
        flags: u32,
    ) -> c_int;
    fn nbd_pread(
        h: *mut NbdHandle,
        buf: *mut c_void,
        count: usize,
        offset: u64,
        flags: u32,
    ) -> c_int;
    fn nbd_pwrite(
        h: *mut NbdHandle,
        buf: *const c_void,
        count: usize,
        offset: u64,
        flags: u32,
    ) -> c_int;
    fn nbd_zero(h: *mut NbdHandle, count: u64, offset: u64, flags: u32) -> c_int;
    fn nbd_flush(h: *mut NbdHandle, flags: u32) -> c_int;
    fn nbd_shutdown(h: *mut NbdHandle, flags: u32) -> c_int;
}

/// A failed libnbd call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("NBD {call} on {uri} failed: {message}")]
pub struct NbdError {
    /// The NBD URI of the connection.
    pub uri: String,
    /// The libnbd call that failed (`nbd_connect_uri`, `nbd_pread`, ...).
    pub call: &'static str,
    /// libnbd's message, as it gave it.
    pub message: String,
    /// libnbd's errno for the failure (0 when it gave none).
    pub errno: i32,
}

/// One extent of a meta context: `len` bytes from `offset` with the context's `flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First byte.
    pub offset: u64,
    /// Length in bytes (never 0).
    pub len: u64,
    /// The context's flags, e.g. [`STATE_ZERO`] or [`STATE_DIRTY`].
    pub flags: u32,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// One connection to an NBD export.
pub struct Nbd {
    h: NonNull<NbdHandle>,
    uri: String,
}

// SAFETY: libnbd handles may be used from any thread (libnbd(3), "MULTITHREADING": every call
// takes the handle's lock); the handle holds no thread-local state. We still use one handle per
// thread, and do not claim `Sync`.
unsafe impl Send for Nbd {}

impl Drop for Nbd {
    fn drop(&mut self) {
        // SAFETY: `h` came from nbd_create, is closed only here, and is never used afterwards.
        unsafe { nbd_close(self.h.as_ptr()) }
    }
}

/// libnbd's message and errno for the last failure on this thread.
fn last_error(uri: &str, call: &'static str) -> NbdError {
    // SAFETY: nbd_get_error returns NULL or a NUL-terminated string owned by libnbd that stays
    // valid until the next libnbd call on this thread; it is copied before any other call.
    let message = unsafe {
        let p = nbd_get_error();
        if p.is_null() {
            "no message from libnbd".to_string()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    // SAFETY: nbd_get_errno only reads this thread's last error.
    let errno = unsafe { nbd_get_errno() };
    NbdError {
        uri: uri.to_string(),
        call,
        message,
        errno,
    }
}

fn c_string(uri: &str, call: &'static str, s: &str) -> Result<CString, NbdError> {
    CString::new(s).map_err(|_| NbdError {
        uri: uri.to_string(),
        call,
        message: format!("{s:?} contains a NUL byte"),
        errno: libc::EINVAL,
    })
}

/// What the block-status callback fills: the extents of one context, from the request offset.
struct Collect {
    want: CString,
    found: Vec<(u64, u32)>,
    offset: Option<u64>,
}

/// The extent callback: keeps the (length, flags) pairs of the context asked for. It never
/// panics (a panic cannot unwind through C).
unsafe extern "C" fn collect_extents(
    user_data: *mut c_void,
    metacontext: *const c_char,
    offset: u64,
    entries: *mut u32,
    nr_entries: usize,
    _error: *mut c_int,
) -> c_int {
    if user_data.is_null() || metacontext.is_null() || (entries.is_null() && nr_entries > 0) {
        return 0;
    }
    // SAFETY: user_data is the `Collect` that `extents` passed, alive and not otherwise borrowed
    // for the whole synchronous nbd_block_status call; libnbd calls back on that same thread.
    let c = unsafe { &mut *user_data.cast::<Collect>() };
    // SAFETY: libnbd passes the context's name as a NUL-terminated string valid during the call.
    if unsafe { CStr::from_ptr(metacontext) } != c.want.as_c_str() {
        return 0;
    }
    if nr_entries == 0 {
        return 0;
    }
    // SAFETY: libnbd passes `nr_entries` u32s at `entries` (pairs of length and flags), valid
    // for the duration of the callback.
    let e = unsafe { std::slice::from_raw_parts(entries, nr_entries) };
    c.offset.get_or_insert(offset);
    c.found
        .extend(e.chunks_exact(2).map(|p| (u64::from(p[0]), p[1])));
    0
}

impl Nbd {
    /// Connect to `uri` (`nbd://HOST:PORT/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`), asking
    /// for the meta contexts `meta_contexts` (e.g. [`BASE_ALLOCATION`]).
    pub fn connect(uri: &str, meta_contexts: &[&str]) -> Result<Nbd, NbdError> {
        // SAFETY: nbd_create has no preconditions; NULL means failure.
        let h =
            NonNull::new(unsafe { nbd_create() }).ok_or_else(|| last_error(uri, "nbd_create"))?;
        // From here on, Drop closes the handle on every path.
        let nbd = Nbd {
            h,
            uri: uri.to_string(),
        };
        for ctx in meta_contexts {
            let name = c_string(uri, "nbd_add_meta_context", ctx)?;
            // SAFETY: the handle is live; libnbd copies the name.
            if unsafe { nbd_add_meta_context(nbd.h.as_ptr(), name.as_ptr()) } == -1 {
                return Err(last_error(uri, "nbd_add_meta_context"));
            }
        }
        let c_uri = c_string(uri, "nbd_connect_uri", uri)?;
        // SAFETY: the handle is live; libnbd copies the URI.
        if unsafe { nbd_connect_uri(nbd.h.as_ptr(), c_uri.as_ptr()) } == -1 {
            return Err(last_error(uri, "nbd_connect_uri"));
        }
        Ok(nbd)
    }

    /// The URI this connection was made to.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The export's size in bytes.
    pub fn size(&self) -> Result<u64, NbdError> {
        // SAFETY: the handle is live and connected.
        let n = unsafe { nbd_get_size(self.h.as_ptr()) };
        u64::try_from(n).map_err(|_| last_error(&self.uri, "nbd_get_size"))
    }

    /// Whether the server agreed to the meta context `name` (asked for at connect).
    pub fn can_meta_context(&self, name: &str) -> bool {
        let Ok(name) = CString::new(name) else {
            return false;
        };
        // SAFETY: the handle is live; the name is a valid C string for the call.
        unsafe { nbd_can_meta_context(self.h.as_ptr(), name.as_ptr()) == 1 }
    }

    /// The extents of `context` covering `offset..offset + len`, in order, clipped to it;
    /// neighbours with equal flags are merged.
    pub fn extents(&self, context: &str, offset: u64, len: u64) -> Result<Vec<Extent>, NbdError> {
        let end = offset.saturating_add(len);
        let mut out: Vec<Extent> = Vec::new();
        let mut cur = offset;
        while cur < end {
            let mut c = Collect {
                want: c_string(&self.uri, "nbd_block_status", context)?,
                found: Vec::new(),
                offset: None,
            };
            let cb = ExtentCallback {
                callback: Some(collect_extents),
                user_data: (&raw mut c).cast::<c_void>(),
                free: None,
            };
            let count = (end - cur).min(BLOCK_STATUS_MAX);
            // SAFETY: the handle is live; `c` outlives the synchronous call, and libnbd does not
            // keep the callback after it returns (no free function is needed).
            let rc = unsafe { nbd_block_status(self.h.as_ptr(), count, cur, cb, 0) };
            if rc == -1 {
                return Err(last_error(&self.uri, "nbd_block_status"));
            }
            let before = cur;
            let mut at = c.offset.unwrap_or(cur);
            for (l, flags) in c.found {
                let (s, e) = (at.max(cur), at.saturating_add(l).min(end));
                at = at.saturating_add(l);
                if e <= s {
                    continue;
                }
                match out.last_mut() {
                    Some(last) if last.end() == s && last.flags == flags => last.len += e - s,
                    _ => out.push(Extent {
                        offset: s,
                        len: e - s,
                        flags,
                    }),
                }
                cur = e;
            }
            if cur == before {
                // A server answering nothing for the range would loop forever.
                return Err(NbdError {
                    uri: self.uri.clone(),
                    call: "nbd_block_status",
                    message: format!("no {context} extent returned at offset {cur}"),
                    errno: libc::EIO,
                });
            }
        }
        Ok(out)
    }

    /// Read `buf.len()` bytes at `offset`.
    pub fn pread(&self, buf: &mut [u8], offset: u64) -> Result<(), NbdError> {
        // SAFETY: the handle is live; buf is valid for writes of buf.len() bytes during the call.
        let rc = unsafe {
            nbd_pread(
                self.h.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                offset,
                0,
            )
        };
        if rc == -1 {
            return Err(last_error(&self.uri, "nbd_pread"));
        }
        Ok(())
    }

    /// Write `buf` at `offset`.
    pub fn pwrite(&self, buf: &[u8], offset: u64) -> Result<(), NbdError> {
        // SAFETY: the handle is live; buf is valid for reads of buf.len() bytes during the call.
        let rc = unsafe { nbd_pwrite(self.h.as_ptr(), buf.as_ptr().cast(), buf.len(), offset, 0) };
        if rc == -1 {
            return Err(last_error(&self.uri, "nbd_pwrite"));
        }
        Ok(())
    }

    /// Make `len` bytes at `offset` read as zeros. No flags: the server may punch a hole or
    /// write a zero cluster instead of writing zeros, but the range must read back as zeros.
    pub fn zero(&self, len: u64, offset: u64) -> Result<(), NbdError> {
        // SAFETY: the handle is live.
        if unsafe { nbd_zero(self.h.as_ptr(), len, offset, 0) } == -1 {
            return Err(last_error(&self.uri, "nbd_zero"));
        }
        Ok(())
    }

    /// Ask the server to make every completed write durable.
    pub fn flush(&self) -> Result<(), NbdError> {
        // SAFETY: the handle is live.
        if unsafe { nbd_flush(self.h.as_ptr(), 0) } == -1 {
            return Err(last_error(&self.uri, "nbd_flush"));
        }
        Ok(())
    }

    /// Disconnect cleanly (the server sees an orderly end, not a dropped socket).
    pub fn shutdown(&self) -> Result<(), NbdError> {
        // SAFETY: the handle is live.
        if unsafe { nbd_shutdown(self.h.as_ptr(), 0) } == -1 {
            return Err(last_error(&self.uri, "nbd_shutdown"));
        }
        Ok(())
    }
}
