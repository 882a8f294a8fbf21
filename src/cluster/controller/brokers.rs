//! Broker lifecycle decisions: registration, heartbeats (unfencing once a
//! broker has caught up with the metadata log), controlled shutdown.

use super::{partitions, Controller, ControllerError, Decision, Reply, Session};
use crate::cluster::image::MetadataImage;
use crate::cluster::records::{BrokerRegistration, MetadataRecord, NodeId};

impl Controller {
    /// A broker registers at start. A new incarnation of a registered broker
    /// (it restarted) replaces the old one, whose leaderships and ISR places
    /// are given up first: its in-memory state died with the process.
    pub(super) fn register(
        &mut self,
        image: &MetadataImage,
        reg: BrokerRegistration,
        now_ms: u64,
    ) -> Decision {
        let node = reg.node_id;
        let mut records = Vec::new();
        if let Some(old) = image.broker(node) {
            if old.registration.incarnation_id == reg.incarnation_id {
                return Decision {
                    records,
                    reply: Reply::Registered(node),
                };
            }
            if !old.fenced {
                records.push(MetadataRecord::FenceBroker {
                    node_id: node,
                    broker_epoch: old.broker_epoch,
                });
            }
            records.extend(partitions::moves_without(image, &[node]));
        }
        records.push(MetadataRecord::RegisterBroker(reg));
        self.sessions.insert(
            node,
            Session::new(0, now_ms, self.config.session_timeout_ms),
        );
        Decision {
            records,
            reply: Reply::Registered(node),
        }
    }

    pub(super) fn heartbeat(
        &mut self,
        image: &MetadataImage,
        node: NodeId,
        broker_epoch: u64,
        metadata_offset: u64,
        want_shutdown: bool,
        now_ms: u64,
    ) -> Decision {
        let Some(b) = image.broker(node) else {
            return Decision::refuse(ControllerError::UnknownBroker(node));
        };
        if b.broker_epoch != broker_epoch {
            return Decision::refuse(ControllerError::StaleBrokerEpoch(node));
        }
        self.sessions.insert(
            node,
            Session::new(broker_epoch, now_ms, self.config.session_timeout_ms),
        );
        let mut records = Vec::new();
        if want_shutdown && !b.shutting_down {
            tracing::info!(
                broker = node,
                "controlled shutdown: moving leaderships away"
            );
            records.push(MetadataRecord::BrokerShuttingDown {
                node_id: node,
                broker_epoch,
            });
            records.extend(partitions::moves_without(image, &[node]));
        } else if !want_shutdown && b.fenced && metadata_offset >= b.broker_epoch {
            tracing::info!(broker = node, "broker caught up; unfencing it");
            records.push(MetadataRecord::UnfenceBroker {
                node_id: node,
                broker_epoch,
            });
            records.extend(partitions::revive_offline(image, &[node]));
        }
        Decision {
            records,
            reply: Reply::Heartbeat(node),
        }
    }
}
