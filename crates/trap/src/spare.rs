//! Host sockets made ahead, so an app's `socket()` is answered with one that is ready
//! (made, marked, its inode known) instead of waiting while the daemon makes and marks
//! it: the answer costs the engine only the install and the answer.
//!
//! A spare is made exactly as the call it will answer would have made it (same domain,
//! type with its flags, and protocol, marked the same way), by the engine of the app it
//! will go to, after that app's earlier `socket()` of the same recipe was answered; it
//! is handed out at most once (taken out of the set, then installed or dropped) and never
//! to another app: every engine has its own set. A spare is a descriptor of the daemon
//! only; at the daemon's end it is closed with the process, its marks with it.

use std::sync::Mutex;

/// At most this many spares per app (a recipe has at most one): what an app can make
/// the daemon hold by asking for sockets of many kinds.
pub(crate) const MAX_SPARES: usize = 4;

/// What a socket is made of: the `socket()` call's arguments less SOCK_CLOEXEC (a flag
/// of the app's descriptor, given when the socket is installed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recipe {
    pub domain: i32,
    pub ty: i32,
    pub protocol: i32,
}

/// A socket made and marked, with its inode: the in-flight note that lets a next daemon
/// find it in the app (see `crate::resume`), taken when the socket is made rather than
/// while the app waits for its answer.
pub(crate) struct Made<F> {
    pub fd: F,
    pub inode: u64,
}

/// One app's spares, at most one per recipe.
pub(crate) struct Spares<F>(Mutex<Vec<(Recipe, Made<F>)>>);

impl<F> Default for Spares<F> {
    fn default() -> Self {
        Spares(Mutex::new(Vec::new()))
    }
}

impl<F> Spares<F> {
    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<(Recipe, Made<F>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The spare made by `recipe`, taken out of the set.
    pub(crate) fn take(&self, recipe: Recipe) -> Option<Made<F>> {
        let mut ready = self.ready();
        let at = ready.iter().position(|(r, _)| *r == recipe)?;
        Some(ready.swap_remove(at).1)
    }

    /// Whether a spare by `recipe` would be kept: none by it yet, and room for it.
    pub(crate) fn wants(&self, recipe: Recipe) -> bool {
        let ready = self.ready();
        ready.len() < MAX_SPARES && ready.iter().all(|(r, _)| *r != recipe)
    }

    /// Keeps `spare` for the next call by `recipe`, unless it is not wanted (then it is
    /// dropped: closed).
    pub(crate) fn keep(&self, recipe: Recipe, spare: Made<F>) {
        let mut ready = self.ready();
        if ready.len() < MAX_SPARES && ready.iter().all(|(r, _)| *r != recipe) {
            ready.push((recipe, spare));
        }
    }

    /// How many spares are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ready().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(domain: i32, ty: i32) -> Recipe {
        Recipe { domain, ty, protocol: 0 }
    }

    fn made(i: i32) -> Made<i32> {
        Made { fd: i, inode: i as u64 }
    }

    fn fd(m: Option<Made<i32>>) -> Option<i32> {
        m.map(|m| m.fd)
    }

    #[test]
    fn a_spare_is_taken_once_and_only_by_its_own_recipe() {
        let spares = Spares::default();
        let tcp = recipe(libc::AF_INET, libc::SOCK_STREAM);
        spares.keep(tcp, made(1));
        for other in [
            recipe(libc::AF_INET6, libc::SOCK_STREAM),
            recipe(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK),
            recipe(libc::AF_INET, libc::SOCK_DGRAM),
            Recipe { protocol: libc::IPPROTO_TCP, ..tcp },
        ] {
            assert_eq!(fd(spares.take(other)), None, "{other:?}");
        }
        assert_eq!(fd(spares.take(tcp)), Some(1));
        assert_eq!(fd(spares.take(tcp)), None, "taken out: never handed out twice");
    }

    #[test]
    fn one_spare_per_recipe_and_a_bound_on_all() {
        let spares = Spares::default();
        let tcp = recipe(libc::AF_INET, libc::SOCK_STREAM);
        spares.keep(tcp, made(1));
        assert!(!spares.wants(tcp));
        spares.keep(tcp, made(2));
        assert_eq!((spares.len(), fd(spares.take(tcp)), fd(spares.take(tcp))), (1, Some(1), None));
        for ty in 0..10 {
            spares.keep(recipe(libc::AF_INET, ty), made(ty));
        }
        assert_eq!(spares.len(), MAX_SPARES);
        assert!(!spares.wants(tcp), "full");
    }
}
