//! The app registry: which apps run under ax on this node, their ids, and the made-up
//! addresses named apps without `--ip` get. It knows nothing of their sockets.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::addr::Subnet;
use crate::ids::{self, AppId};
use crate::labels::Labels;
use crate::vservice::Expose;

/// How an app's socket calls are carried out: trapped and decided by the daemon
/// (`user`), or decided in the kernel by BPF programs from maps the daemon fills
/// (`kernel`; socket, bind and listen still trapped). In JSON as `user` / `kernel`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    User,
    Kernel,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::User => "user",
            Driver::Kernel => "kernel",
        }
    }
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A driver name that is neither `user` nor `kernel`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("driver '{0}' is neither 'user' nor 'kernel'")]
pub struct BadDriver(pub String);

impl std::str::FromStr for Driver {
    type Err = BadDriver;
    fn from_str(s: &str) -> Result<Driver, BadDriver> {
        match s {
            "user" => Ok(Driver::User),
            "kernel" => Ok(Driver::Kernel),
            other => Err(BadDriver(other.into())),
        }
    }
}

/// An app run under ax.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct App {
    pub id: AppId,
    pub uuid: String,
    pub name: Option<String>,
    pub ip: Ipv4Addr,
    pub labels: Labels,
    pub pid: i32,
    pub driver: Driver,
    /// `--expose` as given; the forms for this node bind the app's socket on the host
    /// port as it is, the others are relayed by the nodes they name.
    pub expose: Vec<Expose>,
    /// Whether the app's seccomp filter relies on the socket guard (the daemon it
    /// registered with had one): a daemon without the guard must not take it back.
    /// Not saved from the no-BPF mode on until this field: false then (the stricter
    /// engine; a daemon without the guard starts only where none was left pinned).
    #[serde(default)]
    pub socket_guard: bool,
    /// The app lives in the host's network namespace, in a cgroup of its own, and makes
    /// its TCP sockets itself under the kernel driver's programs (see `RunReply`).
    #[serde(default)]
    pub host_sockets: bool,
}

/// What an app asks for when it registers.
#[derive(Debug, Clone, Default)]
pub struct NewApp {
    pub name: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub labels: Labels,
    pub pid: i32,
    pub driver: Driver,
    pub expose: Vec<Expose>,
    /// The daemon serves it with the socket guard.
    pub socket_guard: bool,
    /// It lives in the host's namespace (see [`App::host_sockets`]).
    pub host_sockets: bool,
}

/// Why an app could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddAppError {
    #[error("no address range for made-up addresses: give --ip")]
    NoMadeUpRange,
    #[error("every address of the made-up range {0} is in use: give --ip")]
    MadeUpRangeFull(Subnet),
}

/// The apps of this node, by id. Ids are unique; a made-up address is never one an app
/// already has, nor the node's.
#[derive(Debug, Default)]
pub(super) struct Apps {
    by_id: BTreeMap<AppId, App>,
    /// Where apps with a name and no `--ip` get their address, and the next to try.
    made_up: Option<(Subnet, u32)>,
}

impl Apps {
    /// Sets the range made-up addresses come from (see [`crate::addr::made_up_range`]).
    pub(super) fn set_made_up_range(&mut self, range: Subnet) {
        self.made_up = Some((range, 0));
    }

    /// Registers an app; it gets a fresh id and, without `--ip`, a made-up address if
    /// it has a name, else `node_ip`.
    pub(super) fn add(&mut self, new: NewApp, node_ip: Ipv4Addr, rng: &mut fastrand::Rng) -> Result<App, AddAppError> {
        let ip = match (new.ip, &new.name) {
            (Some(ip), _) => ip,
            (None, Some(_)) => self.make_up_ip(node_ip)?,
            (None, None) => node_ip,
        };
        let id = loop {
            let id = AppId(0xf000_0000 | (rng.u32(..) & 0x0fff_ffff));
            if !self.by_id.contains_key(&id) {
                break id;
            }
        };
        let app = App {
            id,
            uuid: ids::random_uuid(rng),
            name: new.name.map(|n| n.to_ascii_lowercase()),
            ip,
            labels: new.labels,
            pid: new.pid,
            driver: new.driver,
            expose: new.expose,
            socket_guard: new.socket_guard,
            host_sockets: new.host_sockets,
        };
        self.by_id.insert(id, app.clone());
        Ok(app)
    }

    /// Takes back apps an earlier daemon registered, as they were.
    pub(super) fn restore(&mut self, apps: Vec<App>) {
        self.by_id.extend(apps.into_iter().map(|a| (a.id, a)));
    }

    pub(super) fn remove(&mut self, id: AppId) -> Option<App> {
        self.by_id.remove(&id)
    }

    pub(super) fn get(&self, id: AppId) -> Option<&App> {
        self.by_id.get(&id)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &App> {
        self.by_id.values()
    }

    pub(super) fn has_ip(&self, ip: Ipv4Addr) -> bool {
        self.by_id.values().any(|a| a.ip == ip)
    }

    /// The addresses of the apps named `label` (names compare without case).
    pub(super) fn named<'a>(&'a self, label: &'a str) -> impl Iterator<Item = Ipv4Addr> + 'a {
        self.by_id.values().filter(|a| a.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(label))).map(|a| a.ip)
    }

    /// A free address from the made-up range: not the network's first or last of any
    /// /24, not the node's, and used by no app. The search goes on from the last one
    /// handed out, so an address just freed is the last to be reused.
    fn make_up_ip(&mut self, node_ip: Ipv4Addr) -> Result<Ipv4Addr, AddAppError> {
        let (range, cursor) = self.made_up.ok_or(AddAppError::NoMadeUpRange)?;
        let size = range.size() as u32;
        for step in 0..size {
            let i = cursor.wrapping_add(step) % size;
            let ip = range.nth(i);
            let last = ip.octets()[3];
            if last == 0 || last == 255 || ip == node_ip || self.has_ip(ip) {
                continue;
            }
            self.made_up = Some((range, i.wrapping_add(1) % size));
            return Ok(ip);
        }
        Err(AddAppError::MadeUpRangeFull(range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::testing::{named, table};
    use std::collections::HashSet;

    const NODE: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 5);

    fn add_named(apps: &mut Apps, rng: &mut fastrand::Rng, name: &str, ip: Option<&str>) -> Result<App, AddAppError> {
        let new = NewApp { name: Some(name.into()), ip: ip.map(|s| s.parse().unwrap()), ..NewApp::default() };
        apps.add(new, NODE, rng)
    }

    fn range(s: &str, prefix: u8) -> Subnet {
        Subnet::new(s.parse().unwrap(), prefix)
    }

    #[test]
    fn an_exhausted_range_says_so_and_a_freed_address_is_found_again() {
        let (mut apps, mut rng) = (Apps::default(), fastrand::Rng::with_seed(1));
        // 198.19.0.0/29: .0 ends its /24 and .5 is the node's, so six are usable.
        apps.set_made_up_range(range("198.19.0.0", 29));
        let got: Vec<App> = (0..6).map(|i| add_named(&mut apps, &mut rng, &format!("a{i}"), None).unwrap()).collect();
        let last: Vec<u8> = got.iter().map(|a| a.ip.octets()[3]).collect();
        assert_eq!(last, [1, 2, 3, 4, 6, 7]);
        let e = add_named(&mut apps, &mut rng, "full", None).unwrap_err();
        assert_eq!(e, AddAppError::MadeUpRangeFull(range("198.19.0.0", 29)));
        assert_eq!(e.to_string(), "every address of the made-up range 198.19.0.0/29 is in use: give --ip");
        // The failed attempt registered nothing.
        assert_eq!(apps.iter().count(), 6);
        // An app with --ip needs no made-up address, even with the range full.
        assert!(add_named(&mut apps, &mut rng, "given", Some("10.1.1.1")).is_ok());
        apps.remove(got[1].id);
        assert_eq!(add_named(&mut apps, &mut rng, "again", None).unwrap().ip, got[1].ip);
    }

    #[test]
    fn unnamed_apps_without_ip_take_the_nodes_and_ids_are_fresh() {
        let (mut apps, mut rng) = (Apps::default(), fastrand::Rng::with_seed(3));
        let ids: HashSet<AppId> = (0..200).map(|_| apps.add(NewApp::default(), NODE, &mut rng).unwrap().id).collect();
        assert_eq!(ids.len(), 200);
        assert!(apps.iter().all(|a| a.ip == NODE && a.id.0 >> 28 == 0xf));
        assert!(apps.has_ip(NODE));
        assert!(!apps.has_ip(Ipv4Addr::new(198, 19, 0, 1)));
    }

    #[test]
    fn named_apps_get_made_up_unique_addresses() {
        let mut t = table();
        assert!(named(&mut t, "web", None).unwrap_err().to_string().contains("give --ip"));
        t.set_made_up_range(Subnet::new("198.19.0.0".parse().unwrap(), 23));
        let a = named(&mut t, "web", None).unwrap();
        let b = named(&mut t, "Web", None).unwrap();
        let c = named(&mut t, "db", Some("198.19.0.3")).unwrap();
        assert_eq!(a.ip, "198.19.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(b.ip, "198.19.0.2".parse::<Ipv4Addr>().unwrap());
        // 198.19.0.3 is taken by --ip.
        assert_eq!(named(&mut t, "x", None).unwrap().ip, "198.19.0.4".parse::<Ipv4Addr>().unwrap());
        assert_eq!(t.addresses_named("WEB"), Some(vec![a.ip, b.ip]));
        assert_eq!(t.addresses_named("db"), Some(vec![c.ip]));
        assert_eq!(t.addresses_named("nope"), None);
        t.remove_app(c.id);
        assert_eq!(t.addresses_named("db"), None);
        let mut ips = HashSet::new();
        while let Ok(app) = named(&mut t, "many", None) {
            assert!(ips.insert(app.ip), "{} handed out twice", app.ip);
            let last = app.ip.octets()[3];
            assert!(last != 0 && last != 255);
        }
        // 512 addresses less four ends (two /24s), less the three apps still there.
        assert_eq!(ips.len(), 512 - 4 - 3);
    }
}
