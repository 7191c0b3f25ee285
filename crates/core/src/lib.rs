//! The decisions of ax's virtual network, as plain functions over plain data: how an
//! app's sockaddr bytes read, which host port a virtual bind gets, whether two apps
//! share a label, which backend a connect goes to, and what getsockname answers.
//!
//! Nothing here performs I/O; the trap engine and the daemon are adapters around it,
//! and everything here is tested without root.

pub mod addr;
pub mod clientid;
pub mod conflict;
pub mod hostnet;
pub mod icmp;
pub mod ids;
pub mod kmap;
pub mod labels;
pub mod limits;
pub mod plan;
pub mod ports;
pub mod table;
pub mod tunnel;
pub mod vservice;

pub use addr::{Family, SockAddr};
pub use ids::AppId;
pub use labels::Labels;
pub use ports::{PortPool, PortRanges};
pub use table::{
    AddAppError, App, BadDriver, BindPlan, Binding, BoundSocket, DaemonPorts, Driver, Echo, Federated, KernelView,
    NewApp, NodeInfo, Origin, PrivateBind, Proto, Refusal, Remote, RemoteApp, RemoteRow, RemoteService, Reserved,
    Route, Snapshot, Table, Target, VserviceError, BROKER_PORT, DNS_PORT, EGRESS_PORT, ROUTES_PER_APP,
};

/// An errno value to hand back to an app (positive, as in `errno`).
pub type Errno = i32;
