//! A map by connection id, sized for the one or two connections a supervisor holds.

use entraid_token_manager::ConnectionId;

/// A map by connection id for the one or two entries a supervisor holds: a `Vec`, sized
/// exactly, costs less beside every connection than a hash map.
pub(crate) struct IdMap<V>(Vec<(ConnectionId, V)>);

impl<V> IdMap<V> {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        IdMap(Vec::with_capacity(capacity))
    }

    pub(crate) fn insert(&mut self, id: ConnectionId, value: V) {
        self.remove(&id);
        self.0.push((id, value));
    }

    pub(crate) fn remove(&mut self, id: &ConnectionId) -> Option<V> {
        let at = self.0.iter().position(|(i, _)| i == id)?;
        Some(self.0.swap_remove(at).1)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn get(&self, id: &ConnectionId) -> Option<&V> {
        self.0.iter().find(|(i, _)| i == id).map(|(_, v)| v)
    }

    pub(crate) fn get_mut(&mut self, id: &ConnectionId) -> Option<&mut V> {
        self.0.iter_mut().find(|(i, _)| i == id).map(|(_, v)| v)
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = ConnectionId> + '_ {
        self.0.iter().map(|(id, _)| *id)
    }
}
