//! InitProducerId (key 22), v0-5: producer ids for idempotent producers,
//! handed out from blocks the active controller allocates in the metadata
//! log, so no id is given twice anywhere in the cluster. A producer that
//! passes its current id and epoch (KIP-360) gets the epoch bumped.
//! Transactions are not supported: a transactional id is refused with the
//! non-retriable UNSUPPORTED_VERSION, as FindCoordinator refuses a
//! transaction coordinator lookup (see `groups::NO_TRANSACTIONS` for why
//! that code and what each client makes of it). Transactional producers
//! look their coordinator up first, so most never get here.

use std::rc::Rc;

use kafka_protocol::messages::init_producer_id_request::InitProducerIdRequest;
use kafka_protocol::messages::init_producer_id_response::InitProducerIdResponse;
use kafka_protocol::messages::ProducerId;

use crate::shard::Shard;

pub async fn handle(
    shard: &Rc<Shard>,
    req: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req.transactional_id.is_some() {
        return response.with_error_code(super::groups::NO_TRANSACTIONS.0.code());
    }
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        return response
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    match shard.allocate_producer_id().await {
        Ok(id) => response
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => response.with_error_code(super::controller_error_code(&e).code()),
    }
}
