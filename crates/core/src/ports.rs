//! The host port pool (`--ports 4000,6000-8000`): where apps' virtual binds really
//! land. Allocation is next-fit, so a port just given back is the last to be handed out
//! again and a stale row can never send a client to a newcomer on the same port.

use std::fmt;
use std::ops::RangeInclusive;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortsError {
    #[error("port list is empty")]
    Empty,
    #[error("'{0}' is not a port or a range of ports (like 4000 or 6000-8000)")]
    Malformed(String),
    #[error("port {0} is out of range (1-65535)")]
    OutOfRange(String),
    #[error("range '{0}' ends before it starts")]
    Backwards(String),
}

/// A parsed `--ports` value: sorted, merged ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRanges(Vec<RangeInclusive<u16>>);

impl PortRanges {
    pub fn parse(csv: &str) -> Result<PortRanges, PortsError> {
        let port = |s: &str| -> Result<u16, PortsError> {
            let s = s.trim();
            let n: u32 = s.parse().map_err(|_| PortsError::Malformed(s.into()))?;
            if n == 0 || n > 65535 {
                return Err(PortsError::OutOfRange(s.into()));
            }
            Ok(n as u16)
        };
        let mut ranges = Vec::new();
        for item in csv.split(',').map(str::trim) {
            if item.is_empty() {
                if csv.trim().is_empty() {
                    return Err(PortsError::Empty);
                }
                return Err(PortsError::Malformed(csv.into()));
            }
            let r = match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (port(a).map_err(|_| PortsError::Malformed(item.into()))?, port(b)?);
                    if a > b {
                        return Err(PortsError::Backwards(item.into()));
                    }
                    a..=b
                }
                None => {
                    let p = port(item)?;
                    p..=p
                }
            };
            ranges.push(r);
        }
        ranges.sort_by_key(|r| *r.start());
        let mut merged: Vec<RangeInclusive<u16>> = Vec::new();
        for r in ranges {
            match merged.last_mut() {
                Some(last) if *r.start() as u32 <= *last.end() as u32 + 1 => {
                    *last = *last.start()..=(*last.end()).max(*r.end());
                }
                _ => merged.push(r),
            }
        }
        Ok(PortRanges(merged))
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|r| (*r.end() - *r.start()) as usize + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges, ascending, none touching another.
    pub fn ranges(&self) -> impl Iterator<Item = &RangeInclusive<u16>> {
        self.0.iter()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }

    /// The widest run of ports of `within` that holds none of these (the first of
    /// equals), if any: where a socket's automatic port may come from without taking
    /// one of the pool's.
    pub fn widest_gap(&self, within: RangeInclusive<u16>) -> Option<RangeInclusive<u16>> {
        let (lo, hi) = (u32::from(*within.start()), u32::from(*within.end()));
        let mut gaps = Vec::new();
        let mut next = lo;
        for r in &self.0 {
            let (start, end) = (u32::from(*r.start()), u32::from(*r.end()));
            if start > next && next <= hi {
                gaps.push(next..=(start - 1).min(hi));
            }
            next = next.max(end + 1);
        }
        if next <= hi {
            gaps.push(next..=hi);
        }
        let widest = gaps.into_iter().rev().max_by_key(|g| g.end() - g.start())?;
        Some(*widest.start() as u16..=*widest.end() as u16)
    }

    /// The `i`-th port of the pool in ascending order.
    fn nth(&self, mut i: usize) -> u16 {
        for r in &self.0 {
            let n = (*r.end() - *r.start()) as usize + 1;
            if i < n {
                return *r.start() + i as u16;
            }
            i -= n;
        }
        unreachable!("index within the pool")
    }

    fn index_of(&self, port: u16) -> Option<usize> {
        let mut base = 0;
        for r in &self.0 {
            if r.contains(&port) {
                return Some(base + (port - *r.start()) as usize);
            }
            base += (*r.end() - *r.start()) as usize + 1;
        }
        None
    }
}

impl fmt::Display for PortRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| if r.start() == r.end() { r.start().to_string() } else { format!("{}-{}", r.start(), r.end()) })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Which pool ports are handed out.
#[derive(Debug, Clone)]
pub struct PortPool {
    ranges: PortRanges,
    used: Vec<bool>,
    in_use: usize,
    cursor: usize,
}

impl PortPool {
    pub fn new(ranges: PortRanges) -> PortPool {
        let n = ranges.len();
        PortPool { ranges, used: vec![false; n], in_use: 0, cursor: 0 }
    }

    pub fn ranges(&self) -> &PortRanges {
        &self.ranges
    }

    /// Hands out the next free port after the last one handed out, or None when every
    /// port is taken.
    pub fn take(&mut self) -> Option<u16> {
        let n = self.used.len();
        for step in 0..n {
            let i = (self.cursor + step) % n;
            if !self.used[i] {
                self.used[i] = true;
                self.in_use += 1;
                self.cursor = (i + 1) % n;
                return Some(self.ranges.nth(i));
            }
        }
        None
    }

    /// Marks a pool port as taken (one a restored socket holds); other ports are
    /// ignored.
    pub fn reserve(&mut self, port: u16) {
        if let Some(i) = self.ranges.index_of(port) {
            if !self.used[i] {
                self.used[i] = true;
                self.in_use += 1;
            }
        }
    }

    pub fn give_back(&mut self, port: u16) {
        if let Some(i) = self.ranges.index_of(port) {
            if self.used[i] {
                self.used[i] = false;
                self.in_use -= 1;
            }
        }
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    pub fn capacity(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_manuals_examples() {
        let r = PortRanges::parse("4000,6000-8000").unwrap();
        assert_eq!(r.len(), 2002);
        assert!(r.contains(4000) && r.contains(7000) && !r.contains(5000));
        assert_eq!(r.to_string(), "4000,6000-8000");
        assert_eq!(PortRanges::parse("40000-60000").unwrap().len(), 20001);
        assert_eq!(PortRanges::parse("10-20, 15-30,31").unwrap().to_string(), "10-31");
    }

    #[test]
    fn malformed_is_named() {
        assert_eq!(PortRanges::parse(""), Err(PortsError::Empty));
        assert_eq!(PortRanges::parse("abc"), Err(PortsError::Malformed("abc".into())));
        assert_eq!(PortRanges::parse("0"), Err(PortsError::OutOfRange("0".into())));
        assert_eq!(PortRanges::parse("70000"), Err(PortsError::OutOfRange("70000".into())));
        assert_eq!(PortRanges::parse("9-5"), Err(PortsError::Backwards("9-5".into())));
        assert!(PortRanges::parse("1,,2").is_err());
        assert!(PortRanges::parse("1-2-3").is_err());
    }

    #[test]
    fn next_fit_reuses_a_given_back_port_last() {
        let mut p = PortPool::new(PortRanges::parse("100-102").unwrap());
        assert_eq!(p.take(), Some(100));
        assert_eq!(p.take(), Some(101));
        p.give_back(100);
        assert_eq!(p.take(), Some(102));
        assert_eq!(p.take(), Some(100));
        assert_eq!(p.take(), None);
        assert_eq!(p.in_use(), 3);
    }

    proptest! {
        #[test]
        fn never_hands_out_a_port_twice(ops in proptest::collection::vec(any::<Option<u8>>(), 1..300)) {
            let mut p = PortPool::new(PortRanges::parse("1000-1009,2000,3000-3004").unwrap());
            let mut held: Vec<u16> = Vec::new();
            for op in ops {
                match op {
                    None => match p.take() {
                        Some(port) => {
                            prop_assert!(p.ranges().contains(port));
                            prop_assert!(!held.contains(&port));
                            held.push(port);
                        }
                        None => prop_assert_eq!(held.len(), p.capacity()),
                    },
                    Some(i) if !held.is_empty() => {
                        let port = held.swap_remove(i as usize % held.len());
                        p.give_back(port);
                    }
                    Some(_) => {}
                }
                prop_assert_eq!(p.in_use(), held.len());
            }
        }
    }

    #[test]
    fn the_widest_gap_of_a_range_holds_no_pool_port() {
        let pool = PortRanges::parse("40000-60000").unwrap();
        assert_eq!(pool.widest_gap(32768..=60999), Some(32768..=39999));
        assert_eq!(pool.widest_gap(50000..=65535), Some(60001..=65535));
        assert_eq!(pool.widest_gap(41000..=59000), None);
        let split = PortRanges::parse("100-199,300-399").unwrap();
        assert_eq!(split.widest_gap(100..=500), Some(400..=500));
        assert_eq!(split.widest_gap(150..=350), Some(200..=299));
        assert_eq!(split.widest_gap(1..=65535), Some(400..=65535));
        // Equals: the first.
        assert_eq!(PortRanges::parse("5").unwrap().widest_gap(3..=7), Some(3..=4));
    }
}
