//! The `ax` command line: every command and flag of the manual (`args`), the API
//! client the commands use (`client`), and the tables they print (`table`).

pub mod args;
pub mod client;
pub mod table;

use anyhow::Result;
use ax_api::{path, AppView, ServerView, SocketView};
use serde::de::DeserializeOwned;
use serde::Serialize;

use args::{Output, Resource};

/// `ax get RESOURCE`: fetches the rows from the daemon and prints them.
pub fn get(resource: Resource, output: Output) -> Result<String> {
    match resource {
        Resource::Apps => render::<AppView>(path::APPS, output),
        Resource::Servers => render::<ServerView>(path::SERVERS, output),
        Resource::Sockets => render::<SocketView>(path::SOCKETS, output),
        other => Err(args::not_supported(&format!("ax get {}", other.name()), "its feature")),
    }
}

fn render<T: DeserializeOwned + Serialize + table::Row>(path: &str, output: Output) -> Result<String> {
    let rows: Vec<T> = client::get(path)?;
    Ok(match output {
        Output::Table => table::rows(&rows),
        Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
    })
}
