//! The running node as the job code sees it: its command channel (`leam_net::shell::Command`).
//! Every network exchange and every append goes through it, so jobs use exactly the node's
//! signing, countersigning and replication paths.

use std::collections::BTreeMap;
use std::time::Duration;

use leam_ledger::entry::{Body, Digest32, Entry, PublicKey};
use leam_net::core::Fact;
use leam_net::shell::Command;
use leam_net::work::{WorkRequest, WorkResponse};
use tokio::sync::{mpsc, oneshot};

use crate::blobs::{self, Blobs, BLOB_BYTES_MAX};

/// Longest wait for a countersignature.
pub const PROPOSE_TIMEOUT_MS: u64 = 15_000;

/// The node's command channel.
#[derive(Debug, Clone)]
pub struct Link {
    commands: mpsc::Sender<Command>,
}

/// Errors of talking to the node or through it to another member.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The node stopped.
    #[error("the node stopped")]
    Stopped,
    /// The node refused, or no answer came.
    #[error("{0}")]
    Refused(String),
    /// The other member answered with a refusal.
    #[error("{member} refused: {reason}")]
    Declined {
        /// Member key (first 8 bytes, hex).
        member: String,
        /// Its reason.
        reason: String,
    },
    /// The other member answered something that does not fit the request.
    #[error("unexpected answer from {member}: {detail}")]
    Unexpected {
        /// Member key (hex).
        member: String,
        /// What came.
        detail: String,
    },
    /// A fetched blob is wrong or cannot be stored.
    #[error(transparent)]
    Blob(#[from] blobs::BlobError),
}

impl Link {
    /// A link over the node's command channel.
    pub fn new(commands: mpsc::Sender<Command>) -> Self {
        Self { commands }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, LinkError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| LinkError::Stopped)?;
        rx.await.map_err(|_| LinkError::Stopped)
    }

    /// Send a work request to `to`; a refusal becomes `LinkError::Refused`.
    pub async fn work(
        &self,
        to: PublicKey,
        request: WorkRequest,
    ) -> Result<WorkResponse, LinkError> {
        let r = self
            .ask(|reply| Command::Work {
                to,
                request: Box::new(request),
                reply,
            })
            .await?
            .map_err(LinkError::Refused)?;
        match r {
            WorkResponse::Refused { reason } => Err(LinkError::Declined {
                member: short(&to),
                reason,
            }),
            r => Ok(r),
        }
    }

    /// Every log the node holds, decoded.
    pub async fn logs(&self) -> Result<BTreeMap<PublicKey, Vec<Entry>>, LinkError> {
        self.ask(Command::Logs).await?.map_err(LinkError::Refused)
    }

    /// Append a body to the node's own log (signed by the node); its index.
    pub async fn append(&self, body: Body) -> Result<u64, LinkError> {
        self.ask(|reply| Command::Append {
            body: Box::new(body),
            reply,
        })
        .await?
        .map_err(LinkError::Refused)
    }

    /// Propose a co-signed fact to its other party; this node's entry index of its copy.
    pub async fn propose(&self, fact: Fact) -> Result<u64, LinkError> {
        match tokio::time::timeout(
            Duration::from_millis(PROPOSE_TIMEOUT_MS),
            self.ask(|reply| Command::Propose {
                fact: Box::new(fact),
                reply,
            }),
        )
        .await
        {
            Ok(r) => r?.map_err(LinkError::Refused),
            Err(_) => Err(LinkError::Refused(format!(
                "no countersignature within {PROPOSE_TIMEOUT_MS} ms"
            ))),
        }
    }

    /// The blob `hash`, from the local store or fetched from `from` in chunks, checked against
    /// the hash and stored. Returns the bytes and how many were fetched over the network.
    pub async fn blob(
        &self,
        blobs: &Blobs,
        from: PublicKey,
        hash: Digest32,
    ) -> Result<(Vec<u8>, u64), LinkError> {
        if let Some(b) = blobs.get(&hash)? {
            return Ok((b, 0));
        }
        let mut out: Vec<u8> = Vec::new();
        loop {
            let r = self
                .work(
                    from,
                    WorkRequest::Blob {
                        hash,
                        offset: out.len() as u64,
                    },
                )
                .await?;
            let WorkResponse::Blob { total, bytes } = r else {
                return Err(LinkError::Unexpected {
                    member: hex::encode(from),
                    detail: format!("{r:?} to a blob request"),
                });
            };
            if total > BLOB_BYTES_MAX {
                return Err(blobs::BlobError::TooLarge { found: total }.into());
            }
            if bytes.is_empty() && (out.len() as u64) < total {
                return Err(LinkError::Unexpected {
                    member: hex::encode(from),
                    detail: format!("an empty chunk at {} of {total}", out.len()),
                });
            }
            out.extend_from_slice(&bytes);
            if out.len() as u64 >= total {
                break;
            }
        }
        blobs::check(&hash, &out)?;
        blobs.put(&out)?;
        let n = out.len() as u64;
        Ok((out, n))
    }
}

/// The first 8 bytes of a key or hash in hex, for messages.
pub fn short(h: &[u8]) -> String {
    hex::encode(&h[..h.len().min(8)])
}
