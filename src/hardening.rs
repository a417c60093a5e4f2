//! Start-up hardening of the operator process. It holds AWS credentials and
//! the URLs it signs: a core dump, or another process of the same user
//! reading its memory, would give them away.
//!
//! On Linux the process is made not dumpable (`prctl(PR_SET_DUMPABLE, 0)`:
//! no core dump, and its `/proc/PID/mem`, `environ` and ptrace are closed to
//! other processes of the same user without CAP_SYS_PTRACE) and its core
//! file size limit is set to zero, soft and hard, so a core is never written
//! even where something made it dumpable again.

/// What [`harden`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hardened {
    /// Not dumpable, core size limit 0.
    Done,
    /// Not Linux: nothing was done.
    Unsupported,
}

/// A step of [`harden`] that failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct HardeningError {
    pub step: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Makes the process not dumpable and sets its core size limit to zero.
#[cfg(target_os = "linux")]
pub fn harden() -> Result<Hardened, HardeningError> {
    let failed = |step| HardeningError {
        step,
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: PR_SET_DUMPABLE takes integers only; the unused arguments are
    // passed as the unsigned longs the kernel reads.
    let set = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) };
    if set != 0 {
        return Err(failed("prctl(PR_SET_DUMPABLE, 0)"));
    }
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit that outlives the call. Lowering a
    // limit needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(failed("setrlimit(RLIMIT_CORE, 0)"));
    }
    Ok(Hardened::Done)
}

/// Makes the process not dumpable and sets its core size limit to zero.
#[cfg(not(target_os = "linux"))]
pub fn harden() -> Result<Hardened, HardeningError> {
    Ok(Hardened::Unsupported)
}

/// [`harden`], and one log line saying how it went. A failure is a warning:
/// the operator still runs.
pub fn harden_and_log() {
    match harden() {
        Ok(Hardened::Done) => {
            tracing::info!("process hardened: not dumpable, core size limit 0")
        }
        Ok(Hardened::Unsupported) => {
            tracing::info!("process not hardened: core dumps are only turned off on Linux")
        }
        Err(error) => tracing::warn!(%error, "could not harden the process against core dumps"),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::process::Command;

    /// Set in the copy of the test binary that hardens itself.
    const CHILD: &str = "UGO_HARDENING_TEST_CHILD";

    fn dumpable() -> libc::c_int {
        // SAFETY: PR_GET_DUMPABLE takes no pointer.
        unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) }
    }

    fn core_limit() -> (libc::rlim_t, libc::rlim_t) {
        let mut limit = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        // SAFETY: `limit` is a valid rlimit the call writes into.
        let got = unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) };
        assert_eq!(got, 0, "getrlimit: {}", std::io::Error::last_os_error());
        (limit.rlim_cur, limit.rlim_max)
    }

    /// Hardens the process it runs in: only in the child the test below
    /// starts, so the test process itself stays dumpable (debuggers,
    /// profilers and other tests keep working).
    #[test]
    fn harden_in_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        assert_eq!(super::harden().expect("hardened"), super::Hardened::Done);
        assert_eq!(dumpable(), 0, "still dumpable");
        assert_eq!(core_limit(), (0, 0), "core size limit");
        // Idempotent: a second call changes nothing and fails nothing.
        assert_eq!(super::harden().expect("hardened"), super::Hardened::Done);
        println!("hardened child checked");
    }

    #[test]
    fn the_process_is_not_dumpable_and_writes_no_core() {
        let before = dumpable();
        let exe = std::env::current_exe().expect("the test binary");
        let out = Command::new(exe)
            .args([
                "hardening::tests::harden_in_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .output()
            .expect("runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("hardened child checked") && stdout.contains("1 passed"),
            "the child did not run the check:\n{stdout}"
        );
        assert_eq!(dumpable(), before, "the test process itself is left alone");
    }
}
