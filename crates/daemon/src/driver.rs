//! Which driver the daemon's apps run under: `--driver` as given, else the kernel
//! driver where its programs load and attach, else the user driver, with the reason
//! logged either way.

use std::net::SocketAddrV4;
use std::sync::Arc;

use ax_core::Driver;
use ax_trap::kdriver::KernelDriver;

/// The kernel driver as the daemon runs it: its programs and maps, and where its
/// broker listens.
pub struct Kernel {
    pub driver: Arc<KernelDriver>,
    pub broker: SocketAddrV4,
}

/// The driver chosen, what it runs on, and why it was chosen (for the log).
#[derive(Debug)]
pub struct Choice<K> {
    pub driver: Driver,
    /// The kernel driver's programs and maps, when it is the one.
    pub kernel: Option<K>,
    pub why: String,
}

/// Chooses the driver for `asked` (`--driver`), installing the kernel driver's
/// programs with `install` only when it may be the one. A kernel driver asked for by
/// name that cannot install is an error, not a quiet fallback.
pub fn choose<K, E: std::fmt::Display>(
    asked: Option<Driver>,
    install: impl FnOnce() -> Result<K, E>,
) -> Result<Choice<K>, String> {
    match asked {
        Some(Driver::User) => Ok(Choice { driver: Driver::User, kernel: None, why: "--driver user".into() }),
        Some(Driver::Kernel) => match install() {
            Ok(k) => Ok(Choice { driver: Driver::Kernel, kernel: Some(k), why: "--driver kernel".into() }),
            Err(e) => Err(format!(
                "--driver kernel: the kernel driver's programs cannot be installed ({e}); run without --driver to fall back to the user driver"
            )),
        },
        None => match install() {
            Ok(k) => Ok(Choice {
                driver: Driver::Kernel,
                kernel: Some(k),
                why: "its programs load and attach on this host".into(),
            }),
            Err(e) => Ok(Choice {
                driver: Driver::User,
                kernel: None,
                why: format!("the kernel driver's programs cannot be installed: {e}"),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_driver_where_it_installs_else_the_user_driver_and_why() {
        let ok = || Ok::<_, String>(7);
        let fails = || Err::<u8, _>("kernel too old: no BPF_CGROUP_INET4_GETPEERNAME".to_string());
        let c = choose(None, ok).unwrap();
        assert_eq!((c.driver, c.kernel), (Driver::Kernel, Some(7)));
        let c = choose(None, fails).unwrap();
        assert_eq!((c.driver, c.kernel), (Driver::User, None));
        assert!(c.why.contains("kernel too old"), "{}", c.why);
        // Asked by name: never installed for the user driver, never a fallback for the kernel.
        let c = choose(Some(Driver::User), || -> Result<u8, String> { panic!("installed") }).unwrap();
        assert_eq!(c.driver, Driver::User);
        assert_eq!(choose(Some(Driver::Kernel), ok).unwrap().kernel, Some(7));
        let e = choose(Some(Driver::Kernel), fails).unwrap_err();
        assert!(e.contains("kernel too old") && e.contains("without --driver"), "{e}");
    }
}
