//! The node's handler of the work protocol: each inbound request goes to the blob store, the
//! provider or the referee, on a task of its own so that a slow one (a run fetching its inputs)
//! never holds up the others. The shell bounds the queue ([`leam_net::work::WORK_INBOUND_QUEUE_MAX`]).

use leam_net::work::{self, Inbound, WorkRequest, WorkResponse, BLOB_CHUNK_BYTES_MAX};
use tokio::sync::mpsc;

use crate::blobs::Blobs;
use crate::link::Link;
use crate::provider::Provider;
use crate::referee::Referee;

/// Serve inbound work requests until the channel closes (the node stopped).
pub async fn serve(
    mut inbound: mpsc::Receiver<Inbound>,
    link: Link,
    blobs: Blobs,
    provider: Provider,
    referee: Referee,
) {
    while let Some(Inbound {
        from,
        request,
        reply,
    }) = inbound.recv().await
    {
        match request {
            WorkRequest::Blob { hash, offset } => {
                let r = match blobs.chunk(&hash, offset, BLOB_CHUNK_BYTES_MAX) {
                    Ok(Some((total, bytes))) => WorkResponse::Blob { total, bytes },
                    Ok(None) => work::refused(format!("no blob {}", hex::encode(hash))),
                    Err(e) => work::refused(e.to_string()),
                };
                let _ = reply.send(r);
            }
            WorkRequest::Poll { spec_id } => {
                let _ = reply.send(provider.on_poll(&spec_id));
            }
            WorkRequest::StepHash { spec_id, step } => {
                let _ = reply.send(provider.on_step_hash(&spec_id, step));
            }
            WorkRequest::Run {
                job_id,
                shard,
                spec,
                start_params,
            } => {
                let (provider, link) = (provider.clone(), link.clone());
                tokio::spawn(async move {
                    let start_params = start_params.map(serde_bytes::ByteArray::into_array);
                    let r = provider
                        .on_run(&link, from, job_id, shard, &spec, start_params)
                        .await;
                    let _ = reply.send(r);
                });
            }
            WorkRequest::Judge {
                job_id,
                shard,
                spec,
                claims,
            } => {
                let (referee, link) = (referee.clone(), link.clone());
                tokio::spawn(async move {
                    let r = referee
                        .on_judge(&link, from, job_id, shard, spec, claims)
                        .await;
                    let _ = reply.send(r);
                });
            }
        }
    }
}
