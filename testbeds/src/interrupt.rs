//! Interrupt-safe removal of throwaway VMs: on SIGINT, SIGTERM or SIGHUP, remove every
//! registered throwaway thing (a guest, a verification sandbox) and exit with 128 + signal.
//!
//! Without this a `systemctl stop`, a backup scheduler's timeout or a Ctrl-C during
//! `cgsnap verify`, `bench` or `demo` would kill the process before any `Drop` ran, leaving
//! running transient domains and their overlay directories behind.
//!
//! Invariants:
//! - [`install`] blocks the three signals in the calling thread before any other thread
//!   exists, so every later thread inherits the mask and only the dedicated waiter thread
//!   receives them (child processes start with a clean mask: `std::process::Command` resets it).
//! - A thing is registered *before* it is created and created inside [`guarded`]; the waiter
//!   runs the cleanups under the same lock, so it never runs between "created" and
//!   "registered", and nothing is created after it ran (it exits while holding the lock).
//! - Without [`install`] registrations are inert: owners still clean up in their `Drop`.
//! - A second signal while the clean-up runs exits at once (the clean-up may be stuck).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

type Cleanup = Box<dyn Fn() + Send>;

static REGISTRY: Mutex<Vec<(u64, String, Cleanup)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(1);

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Removes its cleanup from the registry when dropped (the owner cleaned up itself, or keeps
/// the thing on purpose).
#[derive(Debug)]
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        let mut r = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
        r.retain(|(id, _, _)| *id != self.0);
    }
}

/// Register `cleanup` (idempotent: it may find the thing half-made or already gone) to run if
/// the process is interrupted. `what` names the thing in the message printed then.
pub fn register(what: &str, cleanup: impl Fn() + Send + 'static) -> Registration {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut r = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    r.push((id, what.to_string(), Box::new(cleanup)));
    Registration(id)
}

/// Run `f` (the creation of a registered thing) so that an interrupt is handled before or
/// after it, never during it.
pub fn guarded<T>(f: impl FnOnce() -> T) -> T {
    let _held = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    f()
}

fn sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset initializes the set; sigaddset only writes into it.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "SIGHUP",
    }
}

/// Run every registered cleanup, then exit with 128 + `sig`. Holds the registry lock to the end.
fn on_signal(sig: libc::c_int) -> ! {
    let r = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let what: Vec<&str> = r.iter().map(|(_, w, _)| w.as_str()).collect();
    // The one place this library prints: the process is about to exit from a signal thread,
    // with no caller left to return a message to, so stderr is the only way to say why it
    // stopped and what it removed (the CLI documents these lines; vm_interrupt checks them).
    if what.is_empty() {
        eprintln!("cgsnap: interrupted by {}", name(sig));
    } else {
        eprintln!(
            "cgsnap: interrupted by {}: removing {}",
            name(sig),
            what.join(", ")
        );
    }
    for (_, _, cleanup) in r.iter().rev() {
        cleanup();
    }
    std::process::exit(128 + sig);
}

/// Route SIGINT, SIGTERM and SIGHUP to a waiter thread that removes the registered things and
/// exits. Call first thing in `main`, before any thread is started.
pub fn install() -> std::io::Result<()> {
    let set = sigset();
    // SAFETY: `set` is initialized; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("cgsnap-signals".into())
        .spawn(move || {
            let mut cleaning = false;
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` lives in this closure; sigwait writes the signal number.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if cleaning {
                    // The clean-up hangs (e.g. on an unresponsive libvirtd) and the user insists.
                    // A last-resort message before exiting, as in `on_signal`.
                    eprintln!(
                        "cgsnap: interrupted again by {}: exiting before the clean-up finished",
                        name(sig)
                    );
                    std::process::exit(128 + sig);
                }
                cleaning = true;
                // Clean up on another thread so that a second signal is still heard.
                std::thread::spawn(move || on_signal(sig));
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn dropped_registrations_leave_the_registry() {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let reg = register("test thing", move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        let id = reg.0;
        assert!(REGISTRY.lock().unwrap().iter().any(|(i, _, _)| *i == id));
        drop(reg);
        assert!(!REGISTRY.lock().unwrap().iter().any(|(i, _, _)| *i == id));
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "a dropped cleanup never runs"
        );
    }

    #[test]
    fn guarded_returns_the_value() {
        assert_eq!(guarded(|| 41 + 1), 42);
    }
}
