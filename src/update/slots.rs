//! The one record of liveroll's children: which of the two slots holds which
//! child, in what state, since when, and which child is current.
//!
//! The engine owns it and changes it; every change is published as a
//! [`ChildView`] list that `/status`, `/ready` and the last-resort cleanup at
//! exit read. Nothing else keeps its own list of children.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use crate::process::tree::Tree;
use crate::serve::backends::Backend;

/// What identifies a child in logs and events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildInfo {
    /// 0 or 1; shown as 1 or 2.
    pub slot: usize,
    pub port: u16,
    /// The `sh -c` leader, also the process group id.
    pub pid: i32,
    pub id: String,
    /// Unique per child, never reused.
    pub generation: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Started, waiting for its health check.
    Starting,
    /// Published to the proxy.
    Serving,
    /// The previous child during a bake window: out of rotation but still
    /// running, so a rollback to it needs no cold start.
    Warm,
    /// Out of the proxy, finishing its requests before it is stopped.
    Draining,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Serving => "serving",
            State::Warm => "warm",
            State::Draining => "draining",
        }
    }
}

/// A child as others may see it.
#[derive(Clone, Debug)]
pub struct ChildView {
    pub info: ChildInfo,
    /// Its processes, for a last SIGKILL at exit.
    pub tree: Tree,
    pub state: State,
    /// When it entered `state`.
    pub since: SystemTime,
    /// Its entry in the proxy's set, once published.
    pub backend: Option<Arc<Backend>>,
}

impl ChildView {
    /// Published and passing its health checks.
    pub fn is_serving(&self) -> bool {
        self.state == State::Serving && self.backend.as_ref().is_some_and(|b| b.is_serving())
    }
}

/// The current child: the newest one that serves. Its ID is the current ID;
/// with none, any update goes ahead.
pub fn current<'a>(children: impl IntoIterator<Item = &'a ChildView>) -> Option<&'a ChildView> {
    children
        .into_iter()
        .filter(|c| c.is_serving())
        .max_by_key(|c| c.info.generation)
}

/// A slot's occupant: the process handle `P` and what is known of it.
pub struct Occupant<P> {
    pub process: P,
    pub view: ChildView,
}

pub struct Slots<P> {
    ports: [u16; 2],
    slots: [Option<Occupant<P>>; 2],
    views: watch::Sender<Arc<[ChildView]>>,
}

impl<P> Slots<P> {
    pub fn new(ports: [u16; 2]) -> Self {
        Slots {
            ports,
            slots: [None, None],
            views: watch::Sender::new(Arc::from([])),
        }
    }

    /// The published list of children, updated on every change.
    pub fn watch(&self) -> watch::Receiver<Arc<[ChildView]>> {
        self.views.subscribe()
    }

    pub fn port(&self, slot: usize) -> u16 {
        self.ports[slot]
    }

    /// An empty slot whose port nobody else holds (`port_is_free` asks the
    /// system). Every update retires all other children, so at most one
    /// slot is ever taken here; the seed's "retire the non-current one when
    /// both are busy" cannot arise. Without one, the ports found held.
    pub fn free(&self, port_is_free: impl Fn(u16) -> bool) -> Result<usize, Vec<u16>> {
        let mut held = Vec::new();
        for slot in (0..2).filter(|&s| self.slots[s].is_none()) {
            if port_is_free(self.ports[slot]) {
                return Ok(slot);
            }
            held.push(self.ports[slot]);
        }
        Err(held)
    }

    /// Puts a new child into an empty slot, as starting.
    pub fn start(&mut self, slot: usize, process: P, info: ChildInfo, tree: Tree) {
        debug_assert!(self.slots[slot].is_none());
        self.slots[slot] = Some(Occupant {
            process,
            view: ChildView {
                info,
                tree,
                state: State::Starting,
                since: SystemTime::now(),
                backend: None,
            },
        });
        self.publish();
    }

    /// Moves a slot's child to `state`; `backend` once it is published.
    pub fn set_state(&mut self, slot: usize, state: State, backend: Option<Arc<Backend>>) {
        if let Some(occupant) = &mut self.slots[slot] {
            occupant.view.state = state;
            occupant.view.since = SystemTime::now();
            if backend.is_some() {
                occupant.view.backend = backend;
            }
            self.publish();
        }
    }

    /// Empties a slot; the child is no longer liveroll's.
    pub fn clear(&mut self, slot: usize) -> Option<Occupant<P>> {
        let occupant = self.slots[slot].take();
        self.publish();
        occupant
    }

    pub fn get(&self, slot: usize) -> Option<&Occupant<P>> {
        self.slots[slot].as_ref()
    }

    /// The slot of the child of `generation`, if it is still in one.
    pub fn find(&self, generation: u64) -> Option<usize> {
        (0..2).find(|&s| {
            self.slots[s]
                .as_ref()
                .is_some_and(|o| o.view.info.generation == generation)
        })
    }

    /// Occupied slots other than `slot`: what an update retires.
    pub fn others(&self, slot: usize) -> Vec<usize> {
        (0..2)
            .filter(|&s| s != slot && self.slots[s].is_some())
            .collect()
    }

    pub fn current(&self) -> Option<&ChildInfo> {
        current(self.slots.iter().flatten().map(|o| &o.view)).map(|v| &v.info)
    }

    fn publish(&self) {
        let views: Vec<ChildView> = self
            .slots
            .iter()
            .flatten()
            .map(|o| o.view.clone())
            .collect();
        self.views.send_replace(Arc::from(views));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn info(slot: usize, generation: u64) -> ChildInfo {
        ChildInfo {
            slot,
            port: 9101 + slot as u16,
            pid: 100 + generation as i32,
            id: format!("v{generation}"),
            generation,
        }
    }

    fn backend(generation: u64) -> Arc<Backend> {
        Backend::new(SocketAddr::from(([127, 0, 0, 1], 1)), generation)
    }

    #[test]
    fn a_free_slot_is_empty_and_its_port_unheld() {
        let mut slots: Slots<()> = Slots::new([9101, 9102]);
        assert_eq!(slots.free(|_| true), Ok(0));
        assert_eq!(slots.free(|p| p != 9101), Ok(1));
        assert_eq!(slots.free(|_| false), Err(vec![9101, 9102]));
        slots.start(0, (), info(0, 1), Tree::marked("t"));
        assert_eq!(slots.free(|_| true), Ok(1));
        assert_eq!(slots.free(|_| false), Err(vec![9102]));
        slots.start(1, (), info(1, 2), Tree::marked("t"));
        assert_eq!(slots.free(|_| true), Err(vec![]));
    }

    #[test]
    fn the_current_child_is_the_newest_that_serves() {
        let mut slots: Slots<()> = Slots::new([9101, 9102]);
        let views = slots.watch();
        slots.start(0, (), info(0, 1), Tree::marked("t"));
        assert_eq!(slots.current(), None, "starting is not serving");
        let old = backend(1);
        slots.set_state(0, State::Serving, Some(old.clone()));
        assert_eq!(slots.current().map(|c| c.generation), Some(1));
        slots.start(1, (), info(1, 2), Tree::marked("t"));
        slots.set_state(1, State::Serving, Some(backend(2)));
        assert_eq!(slots.current().map(|c| c.generation), Some(2));
        // What the others see is the same record.
        assert_eq!(
            current(views.borrow().iter()).map(|c| c.info.generation),
            Some(2)
        );
        slots.set_state(1, State::Draining, None);
        assert_eq!(slots.current().map(|c| c.generation), Some(1));
        // Failing its health checks, the older one does not count either.
        crate::serve::backends::BackendSet::new().set_unhealthy(&old, true);
        assert_eq!(slots.current(), None);
    }

    #[test]
    fn retirement_takes_every_other_occupied_slot() {
        let mut slots: Slots<()> = Slots::new([9101, 9102]);
        assert!(slots.others(0).is_empty());
        slots.start(1, (), info(1, 1), Tree::marked("t"));
        assert_eq!(slots.others(0), vec![1]);
        assert!(slots.others(1).is_empty());
        slots.start(0, (), info(0, 2), Tree::marked("t"));
        assert_eq!(slots.find(2), Some(0));
        assert_eq!(slots.others(1), vec![0]);
        assert_eq!(slots.clear(1).map(|o| o.view.info.generation), Some(1));
        assert_eq!(slots.find(1), None);
        assert_eq!(slots.watch().borrow().len(), 1);
    }
}
