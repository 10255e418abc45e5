use std::{
    marker::PhantomData,
    sync::{Arc, Mutex},
    vec,
};

use burn_communication::{CommunicationChannel, Message, Protocol, ProtocolClient};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, RwLock};

use crate::{NodeId, global::shared::GlobalCollectiveError, node::base::NodeState};

/// Handles the status of sync requests from other nodes
pub(crate) struct SyncService<P: Protocol> {
    /// Current node's state, shared with the thread that does aggregations
    node_state: Arc<RwLock<Option<NodeState>>>,
    /// The number of peers that have requested to sync with us since the last successful sync.
    syncing_peers: Mutex<Vec<NodeId>>,
    /// Notification on each incoming sync request
    sync_notif: Notify,
    /// diffrec patch: a peer's sync connection broke (the peer stopped while syncing): its
    /// request can never come, so the waiting sync fails instead of waiting forever.
    broken: std::sync::atomic::AtomicBool,

    _p: PhantomData<P>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SyncRequest(NodeId);

impl<P: Protocol> SyncService<P> {
    pub fn new(node_state: Arc<RwLock<Option<NodeState>>>) -> Self {
        Self {
            node_state,
            syncing_peers: Mutex::new(vec![]),
            sync_notif: Notify::new(),
            broken: std::sync::atomic::AtomicBool::new(false),
            _p: PhantomData,
        }
    }

    fn add_syncing_peer(&self, peer: NodeId) {
        let mut syncing_peers = self.syncing_peers.lock().unwrap();
        syncing_peers.push(peer);
    }

    /// Sync with all peers. diffrec patch: a peer that cannot be reached, or whose sync
    /// connection broke, is an error (`PeerLost`, `PeerSyncLost`) rather than a panic or a wait
    /// that never ends.
    pub async fn sync(&self) -> Result<(), GlobalCollectiveError> {
        // we can't sync while we register
        let node_state = self.node_state.read().await;
        let node_state = node_state
            .as_ref()
            .expect("Trying to sync a node before having registered to the orchestrator");

        // this peer is syncing
        self.add_syncing_peer(node_state.node_id);
        for (id, addr) in &node_state.nodes {
            if *id == node_state.node_id {
                continue;
            }

            let Some(mut connection) = P::Client::connect(addr.clone(), "sync").await else {
                return Err(GlobalCollectiveError::PeerLost(*id));
            };
            let msg = SyncRequest(node_state.node_id);
            let sync_bytes = rmp_serde::to_vec(&msg).unwrap();
            if connection
                .send(Message::new(sync_bytes.into()))
                .await
                .is_err()
            {
                return Err(GlobalCollectiveError::PeerLost(*id));
            }
        }
        // diffrec patch: the published 0.21.0 compared a *copy* of `syncing_peers` and cleared
        // that copy, so the shared list kept every earlier round's ids and the second sync (the
        // second global all-reduce) never completed. It also registered for the notification
        // only after checking, so a request arriving in between was missed. Here one round's
        // ids (one per node) are taken out of the shared list, leaving any early arrivals of the
        // next round in place, and the notification is armed before the check.
        let all_node_ids = node_state.nodes.keys().cloned().collect::<Vec<_>>();
        loop {
            let notified = self.sync_notif.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(GlobalCollectiveError::PeerSyncLost);
            }
            {
                let mut syncing_peers = self.syncing_peers.lock().unwrap();
                if all_node_ids.iter().all(|id| syncing_peers.contains(id)) {
                    // all nodes have synced: this round is done
                    for id in &all_node_ids {
                        if let Some(i) = syncing_peers.iter().position(|p| p == id) {
                            syncing_peers.remove(i);
                        }
                    }
                    return Ok(());
                }
            }
            // Wait for the next sync to come in
            notified.await
        }
    }

    pub async fn handle_sync_connection<C: CommunicationChannel>(&self, mut channel: C) {
        // diffrec patch: a connection reset before the request arrived (the peer stopped) is
        // no panic: it fails the waiting sync (`broken`).
        let msg = match channel.recv().await {
            Ok(msg) => msg,
            Err(e) => {
                log::warn!("A peer's sync connection broke: {e:?}");
                self.broken.store(true, std::sync::atomic::Ordering::SeqCst);
                self.sync_notif.notify_waiters();
                return;
            }
        };
        let Some(msg) = msg else {
            return;
        };

        let msg = rmp_serde::from_slice::<SyncRequest>(&msg.data).unwrap();

        self.add_syncing_peer(msg.0);

        self.sync_notif.notify_waiters();
    }
}
