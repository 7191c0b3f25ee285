//! What a gossip message may carry, checked on its bytes before chitchat reads it.
//!
//! chitchat 0.11 believes what it reads, and some of it does harm beyond lying:
//!
//! - a delta about the reader's own node rewrites the reader's own state (then its next
//!   write overflows the version, or its own key-values are someone else's);
//! - a node delta whose max version is below the versions of its own key-values trips
//!   an assertion, and the panic ends the gossip task;
//! - a delta is a stream of compressed blocks, each inflating to 64 KiB, with no bound on
//!   their number: a 64 KiB message can become hundreds of megabytes.
//!
//! Both transports read every message here first and drop one that does any of this.
//! The format is chitchat 0.11.2's (pinned): a magic number and version, a message type,
//! digests (node ids with three counters) and deltas (zstd or raw blocks of operations:
//! a node, a key-value, a max version), integers little-endian, strings with a u16
//! length.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use chitchat::ChitchatId;

/// The largest delta taken, inflated. A delta fills at most one message (64 KiB
/// compressed, of JSON records that compress a few times over).
pub const MAX_INFLATED: usize = 1 << 20;
const MAGIC: u16 = 45_139;
/// A block inflates to at most this (as chitchat reads it).
const BLOCK: usize = u16::MAX as usize;

/// This node's chitchat id, once known (deltas about it are refused); shared between a
/// transport and the gossip that runs on it.
pub type SelfId = Arc<OnceLock<ChitchatId>>;

/// Why a message is dropped unread.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("it is not a chitchat 0.11 message")]
    Format,
    #[error("its delta inflates past {} KiB", MAX_INFLATED >> 10)]
    Inflated,
    #[error("it carries a delta about this node itself")]
    AboutMe,
    #[error("a node delta's max version {max} is below the version {key} of one of its key-values")]
    Versions { max: u64, key: u64 },
}

/// Reads `bytes` as chitchat would, without keeping anything: whether chitchat may take
/// it (`me`: this node, if known).
pub fn check(bytes: &[u8], me: Option<&ChitchatId>) -> Result<(), Refused> {
    let mut r = Reader(bytes);
    if r.u16()? != MAGIC || r.u8()? != 0 {
        return Err(Refused::Format);
    }
    match r.u8()? {
        // Syn: a digest and the cluster id.
        0 => {
            digest(&mut r)?;
            r.str()?;
        }
        // SynAck: a digest and a delta.
        1 => {
            digest(&mut r)?;
            delta(&mut r, me)?;
        }
        // Ack: a delta.
        2 => delta(&mut r, me)?,
        // BadCluster.
        3 => {}
        _ => return Err(Refused::Format),
    }
    Ok(())
}

fn digest(r: &mut Reader<'_>) -> Result<(), Refused> {
    for _ in 0..r.u16()? {
        r.id()?;
        // Heartbeat, last GC version, max version.
        r.take(24)?;
    }
    Ok(())
}

/// The blocks, inflated (bounded), then the operations.
fn delta(r: &mut Reader<'_>, me: Option<&ChitchatId>) -> Result<(), Refused> {
    let mut ops = Vec::new();
    let mut block = vec![0u8; BLOCK];
    loop {
        match r.u8()? {
            0 => break,
            1 => {
                let len = r.u16()? as usize;
                let n = zstd::bulk::decompress_to_buffer(r.take(len)?, &mut block[..]).map_err(|_| Refused::Format)?;
                ops.extend_from_slice(&block[..n]);
            }
            2 => {
                let len = r.u16()? as usize;
                ops.extend_from_slice(r.take(len)?);
            }
            _ => return Err(Refused::Format),
        }
        if ops.len() > MAX_INFLATED {
            return Err(Refused::Inflated);
        }
    }
    operations(&mut Reader(&ops), me)
}

/// A node's operations: its key-values' versions, and its max version last.
#[derive(Default)]
struct Node {
    key: u64,
    max: u64,
}

impl Node {
    /// chitchat takes the delta's max version as the node's after setting its
    /// key-values: below one of them, it asserts.
    fn end(&self) -> Result<(), Refused> {
        if self.max < self.key {
            return Err(Refused::Versions { max: self.max, key: self.key });
        }
        Ok(())
    }
}

fn operations(r: &mut Reader<'_>, me: Option<&ChitchatId>) -> Result<(), Refused> {
    let mut node: Option<Node> = None;
    while !r.0.is_empty() {
        match r.u8()? {
            0 => {
                if let Some(n) = &node {
                    n.end()?;
                }
                let id = r.id()?;
                if me.is_some_and(|me| *me == id) {
                    return Err(Refused::AboutMe);
                }
                // Last GC version, and the version the delta starts after.
                r.take(16)?;
                node = Some(Node::default());
            }
            1 => {
                let n = node.as_mut().ok_or(Refused::Format)?;
                r.str()?;
                r.str()?;
                let version = r.u64()?;
                if r.u8()? > 2 {
                    return Err(Refused::Format);
                }
                (n.key, n.max) = (n.key.max(version), version);
            }
            2 => node.as_mut().ok_or(Refused::Format)?.max = r.u64()?,
            _ => return Err(Refused::Format),
        }
    }
    node.map_or(Ok(()), |n| n.end())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Refused> {
        if self.0.len() < n {
            return Err(Refused::Format);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Refused> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Refused> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("two bytes")))
    }

    fn u64(&mut self) -> Result<u64, Refused> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("eight bytes")))
    }

    fn str(&mut self) -> Result<&'a str, Refused> {
        let len = self.u16()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| Refused::Format)
    }

    fn id(&mut self) -> Result<ChitchatId, Refused> {
        let name = self.str()?.to_string();
        let generation = self.u64()?;
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(self.take(4)?).expect("four bytes"))),
            6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(self.take(16)?).expect("sixteen bytes"))),
            _ => return Err(Refused::Format),
        };
        let port = self.u16()?;
        Ok(ChitchatId::new(name, generation, SocketAddr::new(ip, port)))
    }
}

/// Messages made by hand, as chitchat writes them: what an attacker sends.
#[cfg(test)]
pub(crate) mod craft {
    use std::net::SocketAddr;

    use chitchat::ChitchatId;

    use super::MAGIC;

    pub(crate) enum Op<'a> {
        Node(&'a ChitchatId),
        Kv(&'a str, u64),
        Max(u64),
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u16).to_le_bytes());
        out.extend(s.as_bytes());
    }

    /// Operations as chitchat writes them.
    pub(crate) fn ops(ops: &[Op<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for op in ops {
            match op {
                Op::Node(id) => {
                    out.push(0);
                    put_str(&mut out, &id.node_id);
                    out.extend(id.generation_id.to_le_bytes());
                    let SocketAddr::V4(a) = id.gossip_advertise_addr else { unreachable!() };
                    out.push(4);
                    out.extend(a.ip().octets());
                    out.extend(a.port().to_le_bytes());
                    out.extend([0u8; 16]);
                }
                Op::Kv(key, version) => {
                    out.push(1);
                    put_str(&mut out, key);
                    put_str(&mut out, "{}");
                    out.extend(version.to_le_bytes());
                    out.push(0);
                }
                Op::Max(v) => {
                    out.push(2);
                    out.extend(v.to_le_bytes());
                }
            }
        }
        out
    }

    /// An Ack whose delta is `blocks` (type, bytes).
    pub(crate) fn ack(blocks: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut out = MAGIC.to_le_bytes().to_vec();
        out.extend([0, 2]);
        for (kind, bytes) in blocks {
            out.push(*kind);
            out.extend((bytes.len() as u16).to_le_bytes());
            out.extend(bytes);
        }
        out.push(0);
        out
    }
}

#[cfg(test)]
mod tests {
    use chitchat::{ChitchatMessage, Deserializable, Serializable};

    use super::craft::{ack, ops, Op};
    use super::*;

    fn id(name: &str) -> ChitchatId {
        ChitchatId::new(name.to_string(), 7, SocketAddr::from(([10, 0, 0, 1], 7946)))
    }

    #[test]
    fn what_chitchat_writes_passes_and_reads_back() {
        let syn = ChitchatMessage::Syn { cluster_id: "c".into(), digest: Default::default() }.serialize_to_vec();
        assert_eq!(check(&syn, Some(&id("a"))), Ok(()));
        let b = id("b");
        let raw = ops(&[Op::Node(&b), Op::Kv("node", 1), Op::Kv("row/tcp/x", 2), Op::Node(&id("c")), Op::Max(9)]);
        for block in [(2, raw.clone()), (1, zstd::bulk::compress(&raw, 3).unwrap())] {
            let msg = ack(&[block]);
            assert_eq!(check(&msg, Some(&id("a"))), Ok(()));
            assert!(ChitchatMessage::deserialize(&mut &msg[..]).is_ok(), "the test's encoding is chitchat's");
        }
        for bad in [&b"\x53\xb0\x00"[..], b"hello", &syn[..syn.len() - 1], &[]] {
            assert_eq!(check(bad, None), Err(Refused::Format), "{bad:?}");
        }
    }

    #[test]
    fn a_delta_about_this_node_is_refused() {
        let me = id("a");
        let msg = ack(&[(2, ops(&[Op::Node(&id("b")), Op::Kv("node", 1), Op::Node(&me), Op::Kv("node", 9)]))]);
        assert_eq!(check(&msg, Some(&me)), Err(Refused::AboutMe));
        let earlier = ChitchatId::new("a".to_string(), 6, me.gossip_advertise_addr);
        assert_eq!(check(&msg, Some(&earlier)), Ok(()), "another generation is another node");
        assert_eq!(check(&msg, None), Ok(()));
    }

    #[test]
    fn a_max_version_below_a_key_version_is_refused() {
        let b = id("b");
        let msg = ack(&[(2, ops(&[Op::Node(&b), Op::Kv("node", 1000), Op::Max(5)]))]);
        assert_eq!(check(&msg, None), Err(Refused::Versions { max: 5, key: 1000 }));
        let msg = ack(&[(2, ops(&[Op::Node(&b), Op::Kv("node", 1000), Op::Max(5), Op::Node(&id("c"))]))]);
        assert_eq!(check(&msg, None), Err(Refused::Versions { max: 5, key: 1000 }), "checked at the next node");
        let msg = ack(&[(2, ops(&[Op::Node(&b), Op::Kv("node", 10), Op::Max(12)]))]);
        assert_eq!(check(&msg, None), Ok(()));
    }

    #[test]
    fn blocks_inflating_past_the_bound_are_refused() {
        let padding = zstd::bulk::compress(&[0u8; BLOCK], 19).unwrap();
        let blocks: Vec<(u8, Vec<u8>)> = std::iter::repeat_n((1, padding), MAX_INFLATED / BLOCK + 2).collect();
        let msg = ack(&blocks);
        assert!(msg.len() < 4096, "{} bytes", msg.len());
        assert_eq!(check(&msg, None), Err(Refused::Inflated));
    }
}
