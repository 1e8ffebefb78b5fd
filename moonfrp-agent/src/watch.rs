//! The watch table: which (port, protocol) pairs the kernel counts, and in which counter slot.
//!
//! Changing the set of tunnels only rewrites map entries: programs are never reloaded or
//! detached. A new pair gets a slot whose counters are zeroed first, then its watch entry; a
//! removed pair loses its watch entry first, then its slot goes back to the free list.
//!
//! An agent that takes over pinned maps ([`crate::ebpf::pins`]) first [`WatchTable::restore`]s
//! the table from the kernel's: a pair the new agent wants too keeps its slot and counters; the
//! others are kept until [`WatchTable::end_restore`] (after the first collection, when FRP's
//! tunnels are known), then removed.
use std::collections::{BTreeMap, HashMap};

use aya::maps::MapError;
use moonfrp_common::{Proto, WatchEntry};

use crate::tunnel::TunnelSpec;

/// The kernel side of the table (the real maps, or a fake in tests).
pub trait WatchBackend {
    /// Writes the watch entry of a local port.
    fn set_entry(&mut self, port: u16, entry: WatchEntry) -> Result<(), MapError>;
    /// Zeroes every counter of a slot on every CPU.
    fn reset_slot(&mut self, slot: u32) -> Result<(), MapError>;
    /// TCP connections (opened, closed) counted in a slot so far (a backend without counters
    /// has none).
    fn opened_closed(&self, _slot: u32) -> (u64, u64) {
        (0, 0)
    }
}

/// A watched (port, protocol) and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    pub spec: TunnelSpec,
    pub slot: u32,
    /// Connections already open when the port was added (from the socket table).
    pub seed_active: u64,
    /// Found in the kernel's table at start and not claimed by a tunnel yet.
    restored: bool,
}

/// What one [`WatchTable::apply`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<TunnelSpec>,
    pub removed: Vec<TunnelSpec>,
    pub renamed: Vec<TunnelSpec>,
    /// Pairs a previous agent watched: their counters go on.
    pub continued: Vec<TunnelSpec>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.renamed.is_empty()
            && self.continued.is_empty()
    }
}

/// Why the table could not take a change.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "no free counter slot for tunnel {0} (all {1} in use); raise `kernel.slots` in the config and restart"
    )]
    Full(String, u32),
    #[error("cannot update the kernel watch table for port {port}: {source}")]
    Map { port: u16, source: MapError },
}

/// Userspace mirror of the kernel watch table.
#[derive(Debug)]
pub struct WatchTable {
    entries: BTreeMap<(u16, Proto), Watched>,
    /// Free slots, highest first so that `pop` hands out the lowest.
    free: Vec<u32>,
    capacity: u32,
    /// Restored pairs nobody claimed are kept until [`Self::end_restore`].
    restoring: bool,
}

impl WatchTable {
    /// An empty table with `capacity` slots.
    pub fn new(capacity: u32) -> Self {
        Self {
            entries: BTreeMap::new(),
            free: (0..capacity).rev().collect(),
            capacity,
            restoring: false,
        }
    }

    /// Takes the kernel's table as it is (a previous agent's, from pinned maps): every (port,
    /// protocol) with a slot, its counters untouched.
    pub fn restore(&mut self, kernel: &[(u16, WatchEntry)]) {
        for &(port, entry) in kernel {
            for proto in [Proto::Tcp, Proto::Udp] {
                let Some(slot) = entry.slot(proto).filter(|s| *s < self.capacity) else {
                    continue;
                };
                let Some(i) = self.free.iter().position(|s| *s == slot) else {
                    continue;
                };
                self.free.remove(i);
                self.entries.insert(
                    (port, proto),
                    Watched {
                        spec: TunnelSpec {
                            name: format!("restored:{port}/{}", proto.as_str()),
                            port,
                            proto,
                            source: crate::tunnel::TunnelSource::Inspect,
                        },
                        slot,
                        seed_active: 0,
                        restored: true,
                    },
                );
            }
        }
        self.restoring = true;
    }

    /// True until [`Self::end_restore`] after a [`Self::restore`].
    pub fn restoring(&self) -> bool {
        self.restoring
    }

    /// From now on, restored pairs no tunnel claimed are removed by the next [`Self::apply`].
    pub fn end_restore(&mut self) {
        self.restoring = false;
    }

    /// Watched pairs, ordered by (port, proto); restored pairs not claimed yet are left out.
    pub fn iter(&self) -> impl Iterator<Item = &Watched> {
        self.entries.values().filter(|w| !w.restored)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    fn entry_of(&self, port: u16) -> WatchEntry {
        [Proto::Tcp, Proto::Udp]
            .into_iter()
            .fold(WatchEntry::default(), |e, proto| {
                e.with_slot(proto, self.entries.get(&(port, proto)).map(|w| w.slot))
            })
    }

    /// Makes the table watch exactly `desired`. `seed` is asked, after the new TCP ports are in the
    /// kernel table, how many connections each of them already has open.
    pub fn apply<B: WatchBackend>(
        &mut self,
        backend: &mut B,
        desired: &[TunnelSpec],
        seed: impl FnOnce(&[u16]) -> HashMap<u16, u64>,
    ) -> Result<Changes, WatchError> {
        let want: BTreeMap<(u16, Proto), &TunnelSpec> =
            desired.iter().map(|t| ((t.port, t.proto), t)).collect();
        let mut changes = Changes::default();

        let gone: Vec<(u16, Proto)> = self
            .entries
            .iter()
            .filter(|(k, w)| !(want.contains_key(k) || w.restored && self.restoring))
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            let w = self
                .entries
                .remove(&key)
                .expect("key listed from the table");
            let port = key.0;
            backend
                .set_entry(port, self.entry_of(port))
                .map_err(|source| WatchError::Map { port, source })?;
            self.free.push(w.slot);
            changes.removed.push(w.spec);
        }
        // Keep handing out the lowest free slot first.
        self.free.sort_unstable_by(|a, b| b.cmp(a));

        let mut new_tcp = Vec::new();
        let mut continued_tcp = Vec::new();
        for (key, spec) in want {
            if let Some(w) = self.entries.get_mut(&key) {
                if w.restored {
                    w.restored = false;
                    w.spec = spec.clone();
                    changes.continued.push(spec.clone());
                    if key.1 == Proto::Tcp {
                        continued_tcp.push((key.0, w.slot));
                    }
                } else if w.spec != *spec {
                    w.spec = spec.clone();
                    changes.renamed.push(spec.clone());
                }
                continue;
            }
            let slot = self
                .free
                .pop()
                .ok_or_else(|| WatchError::Full(spec.to_string(), self.capacity))?;
            let port = key.0;
            let installed = backend.reset_slot(slot).and_then(|()| {
                let entry = self.entry_of(port).with_slot(key.1, Some(slot));
                backend.set_entry(port, entry)
            });
            if let Err(source) = installed {
                self.free.push(slot);
                return Err(WatchError::Map { port, source });
            }
            self.entries.insert(
                key,
                Watched {
                    spec: spec.clone(),
                    slot,
                    seed_active: 0,
                    restored: false,
                },
            );
            if key.1 == Proto::Tcp {
                new_tcp.push(port);
            }
            changes.added.push(spec.clone());
        }

        if !new_tcp.is_empty() || !continued_tcp.is_empty() {
            let ports: Vec<u16> = new_tcp
                .iter()
                .copied()
                .chain(continued_tcp.iter().map(|(p, _)| *p))
                .collect();
            let seeds = seed(&ports);
            for port in new_tcp {
                if let Some(w) = self.entries.get_mut(&(port, Proto::Tcp)) {
                    w.seed_active = seeds.get(&port).copied().unwrap_or(0);
                }
            }
            // A continued port's counters span the previous agent's life: its seed is what is
            // open now beyond what they account for.
            for (port, slot) in continued_tcp {
                let (opened, closed) = backend.opened_closed(slot);
                let open_now = seeds.get(&port).copied().unwrap_or(0);
                let seed = i128::from(open_now) - i128::from(opened) + i128::from(closed);
                if let Some(w) = self.entries.get_mut(&(port, Proto::Tcp)) {
                    w.seed_active = u64::try_from(seed.max(0)).unwrap_or(0);
                }
            }
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::TunnelSource;

    #[derive(Default)]
    struct FakeKernel {
        watch: HashMap<u16, u32>,
        resets: Vec<u32>,
        fail_port: Option<u16>,
    }

    impl WatchBackend for FakeKernel {
        fn set_entry(&mut self, port: u16, entry: WatchEntry) -> Result<(), MapError> {
            if self.fail_port == Some(port) {
                return Err(MapError::KeyNotFound);
            }
            if entry.0 == 0 {
                self.watch.remove(&port);
            } else {
                self.watch.insert(port, entry.0);
            }
            Ok(())
        }

        fn reset_slot(&mut self, slot: u32) -> Result<(), MapError> {
            self.resets.push(slot);
            Ok(())
        }

        fn opened_closed(&self, slot: u32) -> (u64, u64) {
            (u64::from(slot) * 10 + 5, 3)
        }
    }

    fn spec(name: &str, port: u16, proto: Proto) -> TunnelSpec {
        TunnelSpec {
            name: name.into(),
            port,
            proto,
            source: TunnelSource::Cli,
        }
    }

    #[test]
    fn add_remove_and_reuse_slots() {
        let mut k = FakeKernel::default();
        let mut t = WatchTable::new(4);
        let both = [
            spec("a", 6000, Proto::Tcp),
            spec("a-udp", 6000, Proto::Udp),
            spec("b", 7000, Proto::Tcp),
        ];
        let ch = t
            .apply(&mut k, &both, |ports| {
                ports.iter().map(|p| (*p, u64::from(*p) / 1000)).collect()
            })
            .unwrap();
        assert_eq!(ch.added.len(), 3);
        assert_eq!(WatchEntry(k.watch[&6000]).slot(Proto::Tcp), Some(0));
        assert_eq!(WatchEntry(k.watch[&6000]).slot(Proto::Udp), Some(1));
        assert_eq!(WatchEntry(k.watch[&7000]).slot(Proto::Tcp), Some(2));
        assert_eq!(k.resets, [0, 1, 2]);
        let seeds: Vec<u64> = t.iter().map(|w| w.seed_active).collect();
        assert_eq!(seeds, [6, 0, 7]);

        // Drop the TCP side of 6000: its UDP side stays in the same entry.
        let ch = t.apply(&mut k, &both[1..], |_| HashMap::new()).unwrap();
        assert_eq!(ch.removed, [both[0].clone()]);
        assert_eq!(WatchEntry(k.watch[&6000]).slot(Proto::Tcp), None);
        assert_eq!(WatchEntry(k.watch[&6000]).slot(Proto::Udp), Some(1));

        // A new port reuses the lowest free slot, zeroed first.
        let mut next = both[1..].to_vec();
        next.push(spec("c", 8000, Proto::Tcp));
        t.apply(&mut k, &next, |_| HashMap::new()).unwrap();
        assert_eq!(WatchEntry(k.watch[&8000]).slot(Proto::Tcp), Some(0));
        assert_eq!(k.resets, [0, 1, 2, 0]);

        t.apply(&mut k, &[], |_| HashMap::new()).unwrap();
        assert!(k.watch.is_empty() && t.is_empty());
    }

    #[test]
    fn rename_keeps_slot_and_counters() {
        let mut k = FakeKernel::default();
        let mut t = WatchTable::new(2);
        t.apply(&mut k, &[spec("old", 6000, Proto::Tcp)], |_| HashMap::new())
            .unwrap();
        let ch = t
            .apply(&mut k, &[spec("new", 6000, Proto::Tcp)], |_| HashMap::new())
            .unwrap();
        assert_eq!(ch.renamed.len(), 1);
        assert!(ch.added.is_empty() && ch.removed.is_empty());
        assert_eq!(k.resets, [0]);
        assert_eq!(t.iter().next().unwrap().spec.name, "new");
    }

    #[test]
    fn full_table_and_map_failures_are_reported_and_leave_no_leak() {
        let mut k = FakeKernel::default();
        let mut t = WatchTable::new(1);
        let err = t
            .apply(
                &mut k,
                &[spec("a", 1, Proto::Tcp), spec("b", 2, Proto::Tcp)],
                |_| HashMap::new(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("kernel.slots"), "{err}");
        assert_eq!(t.len(), 1);

        let mut k = FakeKernel {
            fail_port: Some(9),
            ..FakeKernel::default()
        };
        let mut t = WatchTable::new(1);
        assert!(
            t.apply(&mut k, &[spec("x", 9, Proto::Tcp)], |_| HashMap::new())
                .is_err()
        );
        assert!(t.is_empty());
        t.apply(&mut k, &[spec("y", 10, Proto::Tcp)], |_| HashMap::new())
            .unwrap();
        assert_eq!(t.iter().next().unwrap().slot, 0);
    }

    #[test]
    fn restored_pairs_keep_slots_and_counters_until_claimed_or_restore_ends() {
        let mut k = FakeKernel::default();
        let mut t = WatchTable::new(4);
        // A previous agent watched 6000/tcp in slot 2 and 7000/udp in slot 0.
        let kernel = [
            (6000, WatchEntry::default().with_slot(Proto::Tcp, Some(2))),
            (7000, WatchEntry::default().with_slot(Proto::Udp, Some(0))),
        ];
        t.restore(&kernel);
        assert!(t.restoring() && t.iter().next().is_none());
        // The config has 6000/tcp and a new 8000/tcp; 7000/udp is not known yet.
        let want = [spec("ssh", 6000, Proto::Tcp), spec("web", 8000, Proto::Tcp)];
        let ch = t
            .apply(&mut k, &want, |ports| {
                ports.iter().map(|p| (*p, 30)).collect()
            })
            .unwrap();
        assert_eq!(ch.continued, [want[0].clone()]);
        assert_eq!(ch.added, [want[1].clone()]);
        assert!(ch.removed.is_empty());
        // 6000 kept slot 2 untouched; 8000 got the lowest free slot (1), zeroed.
        assert_eq!(k.resets, [1]);
        let slots: Vec<(u16, u32, u64)> = t
            .iter()
            .map(|w| (w.spec.port, w.slot, w.seed_active))
            .collect();
        // Seed of a continued port: open now (30) minus what its counters account for (25 − 3).
        assert_eq!(slots, [(6000, 2, 8), (8000, 1, 30)]);
        assert_eq!(t.len(), 3);
        // Restoring ends: the unclaimed 7000/udp goes, its slot is free again.
        t.end_restore();
        let ch = t.apply(&mut k, &want, |_| HashMap::new()).unwrap();
        assert_eq!(ch.removed.len(), 1);
        assert_eq!(ch.removed[0].port, 7000);
        assert_eq!(t.len(), 2);
    }
}
