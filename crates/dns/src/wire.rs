//! DNS messages (RFC 1035): parsing a query's header and question, and building the
//! answers ax gives itself. Forwarded messages are never parsed beyond their header.

use std::net::Ipv4Addr;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;

pub const RCODE_OK: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;

const HEADER: usize = 12;
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;

/// A query's question, and where it ends in the raw message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    /// Lowercase, dot-separated, without the root's trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    question_end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Not even a header: nothing can be answered.
    Short,
    /// A header but not a question we can read: answer FORMERR (or NOTIMP).
    Bad { id: u16, rcode: u8 },
}

/// The message's id, if it has a header.
pub fn id(b: &[u8]) -> Option<u16> {
    (b.len() >= HEADER).then(|| u16::from_be_bytes([b[0], b[1]]))
}

/// Reads a standard query with one question.
pub fn parse_query(b: &[u8]) -> Result<Query, WireError> {
    let id = id(b).ok_or(WireError::Short)?;
    let flags = u16::from_be_bytes([b[2], b[3]]);
    let bad = |rcode| WireError::Bad { id, rcode };
    if flags & FLAG_QR != 0 {
        return Err(bad(RCODE_FORMERR));
    }
    if (flags >> 11) & 0xf != 0 {
        return Err(bad(RCODE_NOTIMP));
    }
    if u16::from_be_bytes([b[4], b[5]]) != 1 {
        return Err(bad(RCODE_FORMERR));
    }
    let mut pos = HEADER;
    let mut labels: Vec<String> = Vec::new();
    let mut total = 0;
    loop {
        let len = *b.get(pos).ok_or(bad(RCODE_FORMERR))? as usize;
        pos += 1;
        if len == 0 {
            break;
        }
        // Compression pointers and extended label types have no place in a question.
        if len > 63 {
            return Err(bad(RCODE_FORMERR));
        }
        let label = b.get(pos..pos + len).ok_or(bad(RCODE_FORMERR))?;
        total += len + 1;
        if total > 255 {
            return Err(bad(RCODE_FORMERR));
        }
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    let tail = b.get(pos..pos + 4).ok_or(bad(RCODE_FORMERR))?;
    Ok(Query {
        id,
        flags,
        name: labels.join("."),
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        qclass: u16::from_be_bytes([tail[2], tail[3]]),
        question_end: pos + 4,
    })
}

/// An authoritative answer to `q` (whose raw form is `raw`) with `rcode` and one A
/// record per address.
pub fn answer(q: &Query, raw: &[u8], rcode: u8, addrs: &[Ipv4Addr], ttl: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.question_end + 16 * addrs.len());
    let flags = FLAG_QR | FLAG_AA | FLAG_RA | (q.flags & FLAG_RD) | rcode as u16;
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&raw[HEADER..q.question_end]);
    for ip in addrs {
        // The owner name points back at the question (offset 12).
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

/// A bare error answer (no question) for a message we could not read.
pub fn error(id: u16, rcode: u8) -> Vec<u8> {
    let flags = FLAG_QR | FLAG_RA | rcode as u16;
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// A name that is not one DNS label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--name '{0}' is not a valid DNS label: use 1-63 letters, digits and hyphens, not starting or ending with a hyphen"
)]
pub struct BadLabel(pub String);

/// Checks a name for `ax run --name`: one DNS label (letters, digits, hyphens; 1-63
/// characters; no hyphen at either end).
pub fn check_label(name: &str) -> Result<(), BadLabel> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(BadLabel(name.into()))
    }
}

#[cfg(test)]
pub(crate) fn query_bytes(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.').filter(|l| !l.is_empty()) {
        b.push(l.len() as u8);
        b.extend_from_slice(l.as_bytes());
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&CLASS_IN.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_a_query_and_answers_it() {
        let raw = query_bytes(0x1234, "Web.AppSwitch.Local", TYPE_A);
        let q = parse_query(&raw).unwrap();
        assert_eq!((q.id, q.name.as_str(), q.qtype, q.qclass), (0x1234, "web.appswitch.local", TYPE_A, CLASS_IN));
        let ips = [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)];
        let a = answer(&q, &raw, RCODE_OK, &ips, 5);
        assert_eq!(&a[0..2], &[0x12, 0x34]);
        assert_eq!(u16::from_be_bytes([a[2], a[3]]) & 0x8000, 0x8000);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 2);
        assert_eq!(&a[a.len() - 4..], &[198, 18, 0, 2]);
        let nx = answer(&q, &raw, RCODE_NXDOMAIN, &[], 5);
        assert_eq!(nx[3] & 0xf, RCODE_NXDOMAIN);
        assert_eq!(nx.len(), raw.len());
    }

    #[test]
    fn malformed_queries_are_named() {
        assert_eq!(parse_query(&[0; 5]), Err(WireError::Short));
        let mut raw = query_bytes(7, "a.b", TYPE_A);
        raw[12] = 0xc0;
        assert_eq!(parse_query(&raw), Err(WireError::Bad { id: 7, rcode: RCODE_FORMERR }));
        let mut raw = query_bytes(7, "a.b", TYPE_A);
        raw[2] |= 0x28;
        assert_eq!(parse_query(&raw), Err(WireError::Bad { id: 7, rcode: RCODE_NOTIMP }));
        let raw = query_bytes(7, "a.b", TYPE_A);
        assert!(parse_query(&raw[..raw.len() - 1]).is_err());
        assert_eq!(error(9, RCODE_FORMERR).len(), 12);
    }

    #[test]
    fn labels() {
        assert!(check_label("web").is_ok());
        assert!(check_label("web-1").is_ok());
        assert!(check_label(&"x".repeat(63)).is_ok());
        for bad in ["", "-web", "web-", "we b", "web.local", "wéb", &"x".repeat(64)] {
            assert_eq!(check_label(bad), Err(BadLabel(bad.into())), "{bad}");
        }
        assert_eq!(
            check_label("a_b").unwrap_err().to_string(),
            "--name 'a_b' is not a valid DNS label: use 1-63 letters, digits and hyphens, not starting or ending with a hyphen"
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(q) = parse_query(&b) {
                let a = answer(&q, &b, RCODE_OK, &[Ipv4Addr::LOCALHOST], 1);
                prop_assert_eq!(parse_query(&a).is_err(), true);
            }
        }

        #[test]
        fn roundtrips_names(labels in proptest::collection::vec("[a-z0-9-]{1,20}", 1..5), qtype in any::<u16>()) {
            let name = labels.join(".");
            let q = parse_query(&query_bytes(1, &name, qtype)).unwrap();
            prop_assert_eq!(q.name, name);
            prop_assert_eq!(q.qtype, qtype);
        }
    }
}
