//! The watch table: which (port, protocol) pairs the kernel counts, and in which counter slot.
//!
//! Changing the set of tunnels only rewrites map entries: programs are never reloaded or
//! detached. A new pair gets a slot whose counters are zeroed first, then its watch entry; a
//! removed pair loses its watch entry first, then its slot goes back to the free list.
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
}

/// A watched (port, protocol) and its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    pub spec: TunnelSpec,
    pub slot: u32,
    /// Connections already open when the port was added (from the socket table).
    pub seed_active: u64,
}

/// What one [`WatchTable::apply`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<TunnelSpec>,
    pub removed: Vec<TunnelSpec>,
    pub renamed: Vec<TunnelSpec>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.renamed.is_empty()
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
}

impl WatchTable {
    /// An empty table with `capacity` slots.
    pub fn new(capacity: u32) -> Self {
        Self {
            entries: BTreeMap::new(),
            free: (0..capacity).rev().collect(),
            capacity,
        }
    }

    /// Watched pairs, ordered by (port, proto).
    pub fn iter(&self) -> impl Iterator<Item = &Watched> {
        self.entries.values()
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
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
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
        for (key, spec) in want {
            if let Some(w) = self.entries.get_mut(&key) {
                if w.spec != *spec {
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
                },
            );
            if key.1 == Proto::Tcp {
                new_tcp.push(port);
            }
            changes.added.push(spec.clone());
        }

        if !new_tcp.is_empty() {
            let seeds = seed(&new_tcp);
            for port in new_tcp {
                if let Some(w) = self.entries.get_mut(&(port, Proto::Tcp)) {
                    w.seed_active = seeds.get(&port).copied().unwrap_or(0);
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
}
