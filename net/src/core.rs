//! The node core: a state machine over the node's own log, its replicas of every member's log
//! and its witness state. Inputs are decoded messages, the time and membership events; outputs
//! are [`Action`]s (gossip to publish, requests to send, peers to allow or block) and ledger
//! appends. It knows nothing of libp2p or tokio, so the same code runs in real processes and in
//! the in-process simulation (`crate::shell` drives it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use leam_ledger::account::Membership;
use leam_ledger::checkpoint::{Checkpoint, Cosigner};
use leam_ledger::entry::{
    decode_terms, encode_terms, Admission, Body, Entry, Evidence, EvidenceKind, Kind, LeaseTerms,
    PublicKey, ReceiptTerms, SettlementTerms, Terms, SIGNATURE_BYTES,
};
use leam_ledger::evidence::Equivocation;
use leam_ledger::genesis::{self, Genesis};
use leam_ledger::identity::{key_of_origin, log_verifier, verifier_key_of};
use leam_ledger::log::{Log, LogError};
use leam_ledger::note::{Algorithm, Verifier};
use leam_ledger::replica::{Classified, Replica, ReplicaError};
use leam_ledger::witness::{FileState, Witness, WitnessState as _};
use serde::Serialize;

use crate::wire::{
    refused, Gossip, Request, Response, ENTRIES_PER_REQUEST_MAX, RESPONSE_ENTRY_BYTES_MAX,
};

/// Folder of the replicas inside a node directory (one folder per log, named by its key hex).
pub const REPLICAS_DIR_NAME: &str = "replicas";
/// Folder of the witness state inside a node directory.
pub const WITNESS_DIR_NAME: &str = "witness";
/// How long a node waits before publishing its checkpoint again when the last publish reached
/// no peer.
pub const REPUBLISH_MS: u64 = 5_000;
/// A sync that has not progressed for this long is abandoned and restarted from another peer.
pub const SYNC_STALL_MS: u64 = 15_000;
/// Entry bytes one sync may hold in memory before it is verified against its checkpoint.
pub const SYNC_PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Checkpoints of logs ahead of their replica remembered for later syncing (one per member).
pub const MEMBERS_MAX: usize = genesis::GENESIS_MEMBERS_MAX;

/// Errors of the core (opening a directory, appending to the own log).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The own log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A replica.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// The witness state.
    #[error("witness state in {dir}: {reason}")]
    Witness {
        /// Folder.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// A request of the operator that cannot be carried out.
    #[error("{0}")]
    Refused(String),
}

impl CoreError {
    /// Whether the node's own store is held by another process (a running node).
    pub fn is_locked(&self) -> bool {
        matches!(
            self,
            CoreError::Log(LogError::Store(
                leam_ledger::store::StoreError::Locked { .. }
            ))
        )
    }

    /// Whether the append was refused because the same co-signed fact is already in the log.
    pub fn is_duplicate_fact(&self) -> bool {
        matches!(
            self,
            CoreError::Log(LogError::Rule {
                source: leam_ledger::account::RuleError::DuplicateFact { .. },
                ..
            })
        )
    }
}

/// What to do with a gossip message (maps to gossipsub's `MessageAcceptance`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acceptance {
    /// Valid and new: forward it.
    Accept,
    /// Invalid (lowers the sender's score); the reason is counted.
    Reject(&'static str),
    /// Valid but not worth forwarding (old, duplicate); the reason is counted.
    Ignore(&'static str),
}

/// An output of the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish an encoded [`Gossip`] message on the federation topic.
    Publish(Vec<u8>),
    /// Send a request to a member (dialling it if needed).
    Send {
        /// Member key.
        to: PublicKey,
        /// Request.
        request: Request,
    },
    /// Allow connections from this key (it became a member).
    Allow(PublicKey),
    /// Refuse and drop connections with this key, for the reason given.
    Block {
        /// Key.
        peer: PublicKey,
        /// Why.
        reason: String,
    },
}

/// Counters of what the core did, by reason (exported by the control API and the simulation).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Gossip messages accepted.
    pub gossip_accepted: u64,
    /// Gossip messages rejected, by reason.
    pub gossip_rejected: BTreeMap<String, u64>,
    /// Gossip messages ignored, by reason.
    pub gossip_ignored: BTreeMap<String, u64>,
    /// Entries verified and stored in replicas.
    pub entries_replicated: u64,
    /// Replica updates refused (entries or checkpoints that did not verify), by reason.
    pub replica_refused: BTreeMap<String, u64>,
    /// Cosignatures this node gave as a witness.
    pub cosignatures_given: u64,
    /// Witness cosignatures stored on this node's own checkpoints.
    pub cosignatures_received: u64,
    /// Equivocation evidence entries appended to this node's log.
    pub evidence_recorded: u64,
    /// Requests served.
    pub requests_served: u64,
    /// Requests refused, by reason.
    pub requests_refused: BTreeMap<String, u64>,
}

fn bump(map: &mut BTreeMap<String, u64>, reason: &str) {
    *map.entry(reason.to_string()).or_insert(0) += 1;
}

/// An entry fetch in progress for one log.
#[derive(Debug)]
struct Sync {
    note: Vec<u8>,
    target: u64,
    entries: Vec<Vec<u8>>,
    bytes: usize,
    peer: PublicKey,
    progressed_ms: u64,
}

/// A member's log as this node holds it (for the control API).
#[derive(Debug, Clone, Serialize)]
pub struct LogStatus {
    /// Owner key, hex.
    pub key: String,
    /// Organisation (from the membership).
    pub organisation: String,
    /// Entries held.
    pub size: u64,
    /// Witness cosignatures on the held checkpoint.
    pub cosignatures: usize,
    /// Whether this is the node's own log.
    pub own: bool,
}

/// The name under which a member cosigns checkpoints as a witness.
pub fn witness_name(key: &PublicKey) -> String {
    format!("leam.witness/{}", hex::encode(&key[..8]))
}

/// The witness verifier (cosignature/v1) of a member.
pub fn witness_verifier(key: &PublicKey) -> Option<Verifier> {
    let vk = ed25519_dalek::VerifyingKey::from_bytes(key).ok()?;
    Verifier::new(&witness_name(key), Algorithm::CosignatureV1, vk).ok()
}

/// A fact two members record in both their logs, each copy co-signed by the other party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// A lease.
    Lease(LeaseTerms),
    /// A receipt.
    Receipt(ReceiptTerms),
    /// A settlement.
    Settlement(SettlementTerms),
}

impl Fact {
    /// The entry kind.
    pub fn kind(&self) -> Kind {
        match self {
            Fact::Lease(_) => LeaseTerms::KIND,
            Fact::Receipt(_) => ReceiptTerms::KIND,
            Fact::Settlement(_) => SettlementTerms::KIND,
        }
    }
    /// The two parties.
    pub fn parties(&self) -> (PublicKey, PublicKey) {
        match self {
            Fact::Lease(t) => t.parties(),
            Fact::Receipt(t) => t.parties(),
            Fact::Settlement(t) => t.parties(),
        }
    }
    /// The terms' canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Fact::Lease(t) => encode_terms(t),
            Fact::Receipt(t) => encode_terms(t),
            Fact::Settlement(t) => encode_terms(t),
        }
    }
    /// Decode terms of entry kind `kind`.
    pub fn decode(kind: u8, bytes: &[u8]) -> Result<Fact, String> {
        let e = |e: leam_ledger::entry::DecodeError| format!("terms: {e}");
        match kind {
            k if k == LeaseTerms::KIND as u8 => decode_terms(bytes).map(Fact::Lease).map_err(e),
            k if k == ReceiptTerms::KIND as u8 => decode_terms(bytes).map(Fact::Receipt).map_err(e),
            k if k == SettlementTerms::KIND as u8 => {
                decode_terms(bytes).map(Fact::Settlement).map_err(e)
            }
            k => Err(format!(
                "kind {k} is not a co-signed fact (expected 5 lease, 6 receipt or 8 settlement)"
            )),
        }
    }
    /// This party's signature over the terms' cosigning message.
    pub fn cosignature(&self, key: &ed25519_dalek::SigningKey) -> [u8; SIGNATURE_BYTES] {
        match self {
            Fact::Lease(t) => t.cosignature(key),
            Fact::Receipt(t) => t.cosignature(key),
            Fact::Settlement(t) => t.cosignature(key),
        }
    }
    /// The entry body of this party's copy, co-signed by `counterparty` with `sig` (verified).
    pub fn body(
        self,
        counterparty: &PublicKey,
        sig: [u8; SIGNATURE_BYTES],
    ) -> Result<Body, leam_ledger::entry::VerifyError> {
        Ok(match self {
            Fact::Lease(t) => Body::Lease(t.with_cosignature(counterparty, sig)?),
            Fact::Receipt(t) => Body::Receipt(t.with_cosignature(counterparty, sig)?),
            Fact::Settlement(t) => Body::Settlement(t.with_cosignature(counterparty, sig)?),
        })
    }
}

/// Decides whether this node agrees to a fact a member proposes to it (the market's rule plugs
/// in here, reading the logs this node holds through [`Core::decoded_logs`]); `Err` says why not.
/// Without a policy a node agrees to nothing.
pub type Policy = Box<dyn Fn(&Fact, &Core) -> Result<(), String> + Send>;

/// The node core.
#[derive(Debug)]
pub struct Core {
    dir: PathBuf,
    genesis: Genesis,
    federation_id: [u8; 32],
    log: Log,
    key: PublicKey,
    replicas: BTreeMap<PublicKey, Replica>,
    witness: Witness<FileState>,
    votes: Vec<Entry>,
    members: BTreeMap<PublicKey, Membership>,
    connected: BTreeSet<PublicKey>,
    syncs: BTreeMap<PublicKey, Sync>,
    ahead: BTreeMap<PublicKey, (Vec<u8>, PublicKey)>,
    accused: BTreeSet<PublicKey>,
    last_publish_ms: Option<u64>,
    republish: bool,
    pull_cursor: PublicKey,
    policy: PolicySlot,
    stats: Stats,
}

/// The policy, if set (a closure has no `Debug`).
struct PolicySlot(Option<Policy>);

impl std::fmt::Debug for PolicySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Policy(set)"
        } else {
            "Policy(none)"
        })
    }
}

impl Core {
    /// Open the node directory `dir` (created by `leam init`) for the federation `genesis`
    /// (already verified complete by the caller): the own log, every replica in
    /// `DIR/replicas/`, the witness state. A node that is not a member yet may run: members
    /// refuse its connections until enough of them admit it ([`Core::is_member`]).
    pub fn open(dir: &Path, genesis: Genesis) -> Result<Core, CoreError> {
        let log = Log::open(dir)?;
        let key = log.identity().public_key();
        let cosigner = Cosigner::new(&witness_name(&key), log.identity().signing_key().clone())
            .map_err(|e| CoreError::Witness {
                dir: dir.join(WITNESS_DIR_NAME),
                reason: e.to_string(),
            })?;
        let state =
            FileState::open(&dir.join(WITNESS_DIR_NAME)).map_err(|e| CoreError::Witness {
                dir: dir.join(WITNESS_DIR_NAME),
                reason: e.to_string(),
            })?;
        let mut replicas = BTreeMap::new();
        let rdir = dir.join(REPLICAS_DIR_NAME);
        if let Ok(read) = std::fs::read_dir(&rdir) {
            let mut names: Vec<_> = read.flatten().map(|e| e.file_name()).collect();
            names.sort();
            for name in names {
                let Some(owner) = name
                    .to_str()
                    .and_then(|s| hex::decode(s).ok())
                    .and_then(|b| <PublicKey>::try_from(b.as_slice()).ok())
                else {
                    continue;
                };
                let path = rdir.join(&name);
                match Replica::open_or_create(&path, owner) {
                    Ok(r) => {
                        replicas.insert(owner, r);
                    }
                    Err(e) => {
                        // A replica is a verified copy that can be fetched again: one that does
                        // not open (a crash during its very first write leaves a store without
                        // its checkpoint file) is set aside, not trusted and not fatal.
                        let aside = rdir.join(format!("{}.unreadable", hex::encode(owner)));
                        let _ = std::fs::remove_dir_all(&aside);
                        tracing::warn!(log = %hex::encode(owner), error = %e, aside = %aside.display(), "replica does not open; set aside, fetching it again");
                        std::fs::rename(&path, &aside).map_err(|io| CoreError::Witness {
                            dir: path.clone(),
                            reason: format!("cannot set aside an unreadable replica: {io}"),
                        })?;
                    }
                }
            }
        }
        let federation_id = genesis.id();
        let mut core = Core {
            dir: dir.to_owned(),
            genesis,
            federation_id,
            log,
            key,
            replicas,
            witness: Witness::new(cosigner, state),
            votes: Vec::new(),
            members: BTreeMap::new(),
            connected: BTreeSet::new(),
            syncs: BTreeMap::new(),
            ahead: BTreeMap::new(),
            accused: BTreeSet::new(),
            last_publish_ms: None,
            republish: false,
            pull_cursor: [0; 32],
            policy: PolicySlot(None),
            stats: Stats::default(),
        };
        let own = core.own_entries()?;
        core.collect_votes(&own);
        for r in core.replicas.values() {
            let entries = r.decode_all()?;
            let owner = r.owner();
            core.votes.extend(
                entries
                    .into_iter()
                    .filter(|e| e.author == owner && e.kind() == Kind::Admission),
            );
        }
        // Keys this node recorded equivocation evidence against (in its own log) stay blocked.
        for e in &own {
            if let Body::Evidence(ev) = &e.body {
                if ev.kind == EvidenceKind::CheckpointEquivocation {
                    core.accused.insert(ev.accused);
                }
            }
        }
        core.members = genesis::members(&core.genesis, core.votes.iter());
        Ok(core)
    }

    /// Every log this node holds (its own and its verified replicas), decoded, by key: what
    /// the market's rules read. Cost grows with the logs (a full decode per call).
    pub fn decoded_logs(&self) -> Result<BTreeMap<PublicKey, Vec<Entry>>, CoreError> {
        let mut out = BTreeMap::new();
        out.insert(self.key, self.own_entries()?);
        for (k, r) in &self.replicas {
            out.insert(*k, r.decode_all()?);
        }
        Ok(out)
    }

    /// This node's own log, decoded (a full decode per call).
    pub fn own_entries(&self) -> Result<Vec<Entry>, CoreError> {
        let raw = self.log.reader().entries(0, self.log.size())?;
        Ok(raw.iter().filter_map(|b| Entry::decode(b).ok()).collect())
    }

    fn collect_votes(&mut self, entries: &[Entry]) {
        self.votes.extend(
            entries
                .iter()
                .filter(|e| e.kind() == Kind::Admission)
                .cloned(),
        );
    }

    /// This node's key.
    pub fn key(&self) -> PublicKey {
        self.key
    }
    /// The federation id (SHA-256 of the genesis body).
    pub fn federation_id(&self) -> [u8; 32] {
        self.federation_id
    }
    /// The genesis document.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }
    /// Current members (founders and admitted keys).
    pub fn members(&self) -> &BTreeMap<PublicKey, Membership> {
        &self.members
    }
    /// Whether `key` may connect.
    pub fn is_member(&self, key: &PublicKey) -> bool {
        self.members.contains_key(key) && !self.accused.contains(key)
    }
    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
    /// The own log.
    pub fn log(&self) -> &Log {
        &self.log
    }
    /// The node directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Replicas by owner.
    pub fn replicas(&self) -> &BTreeMap<PublicKey, Replica> {
        &self.replicas
    }

    /// Every log this node holds, own first.
    pub fn logs(&self) -> Vec<LogStatus> {
        let org = |k: &PublicKey| {
            self.members
                .get(k)
                .map(|m| m.organisation.clone())
                .unwrap_or_default()
        };
        let mut out = vec![LogStatus {
            key: hex::encode(self.key),
            organisation: org(&self.key),
            size: self.log.size(),
            cosignatures: cosignature_count(self.log.checkpoint()),
            own: true,
        }];
        for (k, r) in &self.replicas {
            out.push(LogStatus {
                key: hex::encode(k),
                organisation: org(k),
                size: r.size(),
                cosignatures: cosignature_count(r.checkpoint()),
                own: false,
            });
        }
        out
    }

    /// Start: record the admission of every member not yet admitted in the own log (entries
    /// may only name admitted keys), allow every member, publish the own checkpoint.
    pub fn start(&mut self, now_ms: u64) -> Result<Vec<Action>, CoreError> {
        let mut actions: Vec<Action> = self
            .members
            .keys()
            .filter(|k| **k != self.key && !self.accused.contains(*k))
            .map(|k| Action::Allow(*k))
            .collect();
        self.admit_members_locally(now_ms)?;
        actions.push(self.publish(now_ms));
        Ok(actions)
    }

    fn admit_members_locally(&mut self, now_ms: u64) -> Result<bool, CoreError> {
        let missing: Vec<(PublicKey, Membership)> = self
            .members
            .iter()
            .filter(|(k, _)| self.log.state().membership(k).is_none())
            .map(|(k, m)| (*k, m.clone()))
            .collect();
        if missing.is_empty() {
            return Ok(false);
        }
        let ts = self.timestamp(now_ms);
        let batch: Vec<Entry> = missing
            .into_iter()
            .enumerate()
            .map(|(i, (k, m))| {
                self.log.sign_next(
                    i as u64,
                    ts,
                    Body::Admission(Admission {
                        organisation: m.organisation,
                        sector: m.sector,
                        member: k,
                    }),
                )
            })
            .collect();
        self.votes.extend(batch.iter().cloned());
        self.log.append_batch(batch)?;
        Ok(true)
    }

    /// A timestamp that never goes backwards within the own log.
    fn timestamp(&self, now_ms: u64) -> u64 {
        let last = self
            .log
            .reader()
            .entries(self.log.size().saturating_sub(1), self.log.size())
            .ok()
            .and_then(|v| v.first().and_then(|b| Entry::decode(b).ok()))
            .map(|e| e.timestamp_ms)
            .unwrap_or(0);
        now_ms.max(last)
    }

    fn publish(&mut self, now_ms: u64) -> Action {
        self.last_publish_ms = Some(now_ms);
        Action::Publish(Gossip::Checkpoint(self.log.checkpoint().to_vec()).encode())
    }

    /// Append a body to the own log and announce the new checkpoint.
    pub fn append(&mut self, body: Body, now_ms: u64) -> Result<(u64, Vec<Action>), CoreError> {
        let ts = self.timestamp(now_ms);
        let entry = self.log.sign_next(0, ts, body);
        let index = self.log.append(entry.clone())?;
        let mut actions = Vec::new();
        if entry.kind() == Kind::Admission {
            self.votes.push(entry);
            actions.extend(self.refresh_members(now_ms)?);
        }
        actions.push(self.publish(now_ms));
        Ok((index, actions))
    }

    /// The operator's vote to admit a new member (a signed Admission entry in the own log).
    pub fn admit(
        &mut self,
        member: PublicKey,
        organisation: String,
        sector: leam_ledger::entry::Sector,
        now_ms: u64,
    ) -> Result<(u64, Vec<Action>), CoreError> {
        if self.log.state().membership(&member).is_some() {
            return Err(CoreError::Refused(format!(
                "key {} is already admitted in this node's log",
                hex::encode(member)
            )));
        }
        self.append(
            Body::Admission(Admission {
                organisation,
                sector,
                member,
            }),
            now_ms,
        )
    }

    fn refresh_members(&mut self, now_ms: u64) -> Result<Vec<Action>, CoreError> {
        let new = genesis::members(&self.genesis, self.votes.iter());
        let added: Vec<PublicKey> = new
            .keys()
            .filter(|k| !self.members.contains_key(*k))
            .copied()
            .collect();
        self.members = new;
        let mut actions = Vec::new();
        for k in &added {
            tracing::info!(member = %hex::encode(k), "admitted by votes: accepting its connections");
            if !self.accused.contains(k) {
                actions.push(Action::Allow(*k));
            }
        }
        if !added.is_empty() && self.admit_members_locally(now_ms)? {
            actions.push(self.publish(now_ms));
        }
        Ok(actions)
    }

    /// Set the rule by which this node agrees to facts members propose.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = PolicySlot(Some(policy));
    }

    /// Propose `fact` to its other party: the request carries this node's signature, so the
    /// counterparty can record its copy; [`Core::on_countersigned`] records this node's copy
    /// when the countersignature comes back.
    pub fn propose(&self, fact: &Fact) -> Result<Action, CoreError> {
        let (a, b) = fact.parties();
        let other = match (a == self.key, b == self.key) {
            (true, false) => b,
            (false, true) => a,
            _ => {
                return Err(CoreError::Refused(format!(
                    "this node ({}) must be exactly one of the fact's parties",
                    hex::encode(self.key)
                )))
            }
        };
        if !self.is_member(&other) {
            return Err(CoreError::Refused(format!(
                "the counterparty {} is not a member",
                hex::encode(other)
            )));
        }
        Ok(Action::Send {
            to: other,
            request: Request::Countersign {
                kind: fact.kind() as u8,
                terms: fact.encode(),
                cosignature: fact.cosignature(self.log.identity().signing_key()).to_vec(),
            },
        })
    }

    /// The answer to a [`Request::Countersign`] this node sent to `from`: on a valid
    /// countersignature, this node's copy is appended (its index returned).
    pub fn on_countersigned(
        &mut self,
        from: PublicKey,
        request: &Request,
        response: Response,
        now_ms: u64,
    ) -> (Result<u64, String>, Vec<Action>) {
        let Request::Countersign { kind, terms, .. } = request else {
            return (Err("not a countersign request".into()), vec![]);
        };
        let sig = match response {
            Response::Countersigned { cosignature } => cosignature,
            Response::Refused { reason } => return (Err(format!("refused: {reason}")), vec![]),
            other => return (Err(format!("unexpected answer {other:?}")), vec![]),
        };
        let Ok(sig) = <[u8; SIGNATURE_BYTES]>::try_from(sig.as_slice()) else {
            return (Err("countersignature is not 64 bytes".into()), vec![]);
        };
        let body = match Fact::decode(*kind, terms).and_then(|f| {
            f.body(&from, sig)
                .map_err(|e| format!("countersignature does not verify: {e}"))
        }) {
            Ok(b) => b,
            Err(e) => return (Err(e), vec![]),
        };
        match self.append(body, now_ms) {
            Ok((index, actions)) => (Ok(index), actions),
            // An earlier proposal of the same fact was recorded and only its answer was lost.
            Err(e) if e.is_duplicate_fact() => (Ok(self.log.size().saturating_sub(1)), vec![]),
            Err(e) => (Err(e.to_string()), vec![]),
        }
    }

    fn on_countersign(
        &mut self,
        from: PublicKey,
        kind: u8,
        terms: &[u8],
        cosignature: &[u8],
        now_ms: u64,
    ) -> Result<(Response, Vec<Action>), String> {
        let fact = Fact::decode(kind, terms)?;
        let (a, b) = fact.parties();
        if !((a == self.key && b == from) || (b == self.key && a == from)) {
            return Err(format!(
                "the fact's parties are {} and {}; a proposal must come from one to the other",
                hex::encode(a),
                hex::encode(b)
            ));
        }
        let sig = <[u8; SIGNATURE_BYTES]>::try_from(cosignature)
            .map_err(|_| "cosignature is not 64 bytes".to_string())?;
        let body = fact
            .clone()
            .body(&from, sig)
            .map_err(|e| format!("the proposer's signature does not verify: {e}"))?;
        match &self.policy.0 {
            None => {
                return Err(format!(
                    "this node has no rule for agreeing to {} facts (the market is not built yet)",
                    fact.kind().name()
                ))
            }
            Some(policy) => policy(&fact, self)?,
        }
        // A proposal repeated because its answer was lost: the fact is recorded already, and the
        // (deterministic) countersignature is sent again so the proposer can record its copy.
        let actions = match self.append(body, now_ms) {
            Ok((_, actions)) => actions,
            Err(e) if e.is_duplicate_fact() => vec![],
            Err(e) => return Err(e.to_string()),
        };
        let mine = fact.cosignature(self.log.identity().signing_key()).to_vec();
        Ok((Response::Countersigned { cosignature: mine }, actions))
    }

    /// The last publish reached nobody (no peer subscribed yet): publish again after
    /// [`REPUBLISH_MS`]. An unchanged checkpoint is never republished otherwise: gossipsub
    /// would drop it as a duplicate, and members that connect later ask for it.
    pub fn publish_failed(&mut self) {
        self.republish = true;
    }

    /// A member connected: ask it for its latest checkpoint (gossip only carries changes, and
    /// an unchanged checkpoint is a duplicate that gossipsub does not deliver again).
    pub fn connected(&mut self, peer: PublicKey) -> Vec<Action> {
        if !self.connected.insert(peer) || self.accused.contains(&peer) {
            return vec![];
        }
        vec![Action::Send {
            to: peer,
            request: Request::Checkpoint { log: peer },
        }]
    }
    /// A member's last connection closed.
    pub fn disconnected(&mut self, peer: &PublicKey) {
        self.connected.remove(peer);
    }

    /// Validate and act on a gossip message forwarded by `source`.
    pub fn on_gossip(
        &mut self,
        source: PublicKey,
        data: &[u8],
        now_ms: u64,
    ) -> (Acceptance, Vec<Action>) {
        let (acceptance, actions) = match Gossip::decode(data) {
            Err(_) => (Acceptance::Reject("malformed"), Vec::new()),
            Ok(Gossip::Checkpoint(note)) => self.on_checkpoint(source, note, false, now_ms),
            Ok(Gossip::Evidence(bytes)) => self.on_evidence(bytes, now_ms),
        };
        match &acceptance {
            Acceptance::Accept => self.stats.gossip_accepted += 1,
            Acceptance::Reject(r) => {
                tracing::warn!(peer = %hex::encode(source), reason = r, "gossip rejected");
                bump(&mut self.stats.gossip_rejected, r)
            }
            Acceptance::Ignore(r) => bump(&mut self.stats.gossip_ignored, r),
        }
        (acceptance, actions)
    }

    /// A checkpoint from `source`: gossiped, or pulled (`pulled`: asked for on connection or by
    /// the anti-entropy tick). A log that grew is fetched at once when the checkpoint was
    /// pulled, and from the next tick (at most [`crate::shell::TICK_MS`] later) when it was
    /// gossiped: gossip reaches every member within milliseconds, and every member asking the
    /// owner for the same entries while the checkpoint still propagates slows the propagation
    /// itself (64 simulated nodes on 2 cores: p50 6.5–7.1 ms against 7.5–8.5 ms) and sends
    /// the owner a burst of requests; members' ticks have independent phases, so the fetches
    /// spread over a tick.
    fn on_checkpoint(
        &mut self,
        source: PublicKey,
        note: Vec<u8>,
        pulled: bool,
        now_ms: u64,
    ) -> (Acceptance, Vec<Action>) {
        let origin = std::str::from_utf8(&note)
            .ok()
            .and_then(|t| t.lines().next())
            .unwrap_or_default();
        let Some(owner) = key_of_origin(origin) else {
            return (
                Acceptance::Reject("checkpoint origin is not a leam log"),
                vec![],
            );
        };
        if !self.members.contains_key(&owner) {
            return (
                Acceptance::Reject("checkpoint of a non-member's log"),
                vec![],
            );
        }
        if owner == self.key || self.accused.contains(&owner) {
            // No replica checks these: verify the signature here (a forgery is rejected, which
            // lowers the forwarder's score, whatever log it names).
            let Ok(verifier) = log_verifier(&owner) else {
                return (Acceptance::Reject("checkpoint origin key invalid"), vec![]);
            };
            if Checkpoint::open(&note, &verifier).is_err() {
                return (Acceptance::Reject("checkpoint signature invalid"), vec![]);
            }
            if owner == self.key {
                return (Acceptance::Ignore("own checkpoint"), vec![]);
            }
            return (Acceptance::Ignore("log of an equivocator"), vec![]);
        }
        // Otherwise `classify` verifies the signature, once: each message is verified once per
        // node, on the critical path of its propagation.
        let replica = match self.replica(owner) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(log = %hex::encode(owner), error = %e, "cannot open replica");
                return (Acceptance::Ignore("replica unavailable"), vec![]);
            }
        };
        match replica.classify(&note) {
            Err(leam_ledger::replica::ReplicaError::Checkpoint { .. }) => {
                (Acceptance::Reject("checkpoint signature invalid"), vec![])
            }
            Err(e) => {
                tracing::error!(log = %hex::encode(owner), error = %e, "cannot classify a checkpoint");
                (Acceptance::Ignore("replica unavailable"), vec![])
            }
            Ok(Classified::Known) => (Acceptance::Ignore("checkpoint already known"), vec![]),
            Ok(Classified::Ahead { size }) => {
                let peer = if self.connected.contains(&owner) {
                    owner
                } else {
                    source
                };
                if self.ahead.len() < MEMBERS_MAX || self.ahead.contains_key(&owner) {
                    let keep = self
                        .ahead
                        .get(&owner)
                        .map(|(n, _)| checkpoint_size(n).unwrap_or(0) < size)
                        .unwrap_or(true);
                    if keep {
                        self.ahead.insert(owner, (note, peer));
                    }
                }
                let fetch = if pulled {
                    self.start_sync(owner, now_ms)
                } else {
                    vec![]
                };
                (Acceptance::Accept, fetch)
            }
            Ok(Classified::Contradiction { size, .. }) => {
                tracing::warn!(log = %hex::encode(owner), size, "owner signed a root its own entries contradict (not conclusive as portable evidence)");
                (
                    Acceptance::Ignore("checkpoint contradicts the replica"),
                    vec![],
                )
            }
            Ok(Classified::Equivocation(ev)) => {
                let actions = self.record_equivocation(owner, &ev, now_ms);
                (Acceptance::Accept, actions)
            }
        }
    }

    fn on_evidence(&mut self, bytes: Vec<u8>, now_ms: u64) -> (Acceptance, Vec<Action>) {
        let Ok(entry) = Entry::decode(&bytes) else {
            return (Acceptance::Reject("evidence entry malformed"), vec![]);
        };
        if entry.verify().is_err() {
            return (
                Acceptance::Reject("evidence entry signature invalid"),
                vec![],
            );
        }
        if !self.members.contains_key(&entry.author) {
            return (Acceptance::Reject("evidence by a non-member"), vec![]);
        }
        let Body::Evidence(ev) = &entry.body else {
            return (
                Acceptance::Reject("evidence gossip carries another entry kind"),
                vec![],
            );
        };
        if ev.kind != EvidenceKind::CheckpointEquivocation {
            return (Acceptance::Ignore("evidence kind not gossiped"), vec![]);
        }
        let Ok(eq) = Equivocation::decode(&ev.bytes) else {
            return (
                Acceptance::Reject("equivocation evidence malformed"),
                vec![],
            );
        };
        if eq.verify_conclusive().is_err() || eq.log_verifier_key != verifier_key_of(&ev.accused) {
            return (
                Acceptance::Reject("equivocation evidence does not prove it"),
                vec![],
            );
        }
        if self.accused.contains(&ev.accused) {
            return (Acceptance::Ignore("equivocation already recorded"), vec![]);
        }
        let accused = ev.accused;
        let actions = self.record_equivocation(accused, &eq, now_ms);
        (Acceptance::Accept, actions)
    }

    fn record_equivocation(
        &mut self,
        accused: PublicKey,
        ev: &Equivocation,
        now_ms: u64,
    ) -> Vec<Action> {
        if accused == self.key || self.accused.contains(&accused) {
            return vec![];
        }
        self.accused.insert(accused);
        self.syncs.remove(&accused);
        self.ahead.remove(&accused);
        tracing::warn!(log = %hex::encode(accused), "checkpoint equivocation: recording evidence and disconnecting");
        let mut actions = vec![Action::Block {
            peer: accused,
            reason: "equivocated on its checkpoint".into(),
        }];
        let body = Body::Evidence(Evidence {
            accused,
            kind: EvidenceKind::CheckpointEquivocation,
            bytes: ev.encode().into_bytes(),
        });
        match self.append(body, now_ms) {
            Ok((index, more)) => {
                self.stats.evidence_recorded += 1;
                if let Ok(raw) = self.log.reader().entries(index, index + 1) {
                    if let Some(b) = raw.into_iter().next() {
                        actions.push(Action::Publish(Gossip::Evidence(b).encode()));
                    }
                }
                actions.extend(more);
            }
            Err(e) => tracing::error!(error = %e, "cannot record equivocation evidence"),
        }
        actions
    }

    fn replica(&mut self, owner: PublicKey) -> Result<&mut Replica, ReplicaError> {
        if !self.replicas.contains_key(&owner) {
            let dir = self.dir.join(REPLICAS_DIR_NAME).join(hex::encode(owner));
            let r = Replica::open_or_create(&dir, owner)?;
            self.replicas.insert(owner, r);
        }
        Ok(self.replicas.get_mut(&owner).expect("inserted above"))
    }

    fn start_sync(&mut self, owner: PublicKey, now_ms: u64) -> Vec<Action> {
        if self.syncs.contains_key(&owner) {
            return vec![];
        }
        // The checkpoint stays in `ahead` until the replica reaches it, so a sync that fails
        // (a forwarder that does not hold the entries, a timeout) is retried on the next tick,
        // from the owner whenever it is connected.
        let Some((note, source)) = self.ahead.get(&owner).cloned() else {
            return vec![];
        };
        let (Some(target), Some(size)) = (
            checkpoint_size(&note),
            self.replicas.get(&owner).map(Replica::size),
        ) else {
            self.ahead.remove(&owner);
            return vec![];
        };
        if target <= size {
            self.ahead.remove(&owner);
            return vec![];
        }
        let peer = if self.connected.contains(&owner) {
            owner
        } else {
            source
        };
        self.syncs.insert(
            owner,
            Sync {
                note,
                target,
                entries: Vec::new(),
                bytes: 0,
                peer,
                progressed_ms: now_ms,
            },
        );
        vec![Action::Send {
            to: peer,
            request: Request::Entries {
                log: owner,
                from: size,
                to: target.min(size + ENTRIES_PER_REQUEST_MAX),
            },
        }]
    }

    /// Answer a request from member `from`.
    pub fn on_request(
        &mut self,
        from: PublicKey,
        request: Request,
        now_ms: u64,
    ) -> (Response, Vec<Action>) {
        if let Err(reason) = request.check() {
            bump(&mut self.stats.requests_refused, "over a limit");
            return (refused(reason), vec![]);
        }
        let mut actions = Vec::new();
        let response = match request {
            Request::Checkpoint { log } => {
                if log == self.key {
                    Response::Checkpoint {
                        note: self.log.checkpoint().to_vec(),
                    }
                } else {
                    Response::Checkpoint {
                        note: self
                            .replicas
                            .get(&log)
                            .map(|r| r.checkpoint().to_vec())
                            .unwrap_or_default(),
                    }
                }
            }
            Request::Entries { log, from: a, to } => {
                let raw = if log == self.key {
                    let end = to.min(self.log.size());
                    if a >= end {
                        Ok(vec![])
                    } else {
                        self.log.reader().entries(a, end).map_err(|e| e.to_string())
                    }
                } else if let Some(r) = self.replicas.get(&log) {
                    let end = to.min(r.size());
                    if a >= end {
                        Ok(vec![])
                    } else {
                        r.entries(a, end).map_err(|e| e.to_string())
                    }
                } else {
                    Ok(vec![])
                };
                match raw {
                    Ok(raw) => {
                        let mut bytes = 0;
                        let entries = raw
                            .into_iter()
                            .take_while(|b| {
                                bytes += b.len();
                                bytes <= RESPONSE_ENTRY_BYTES_MAX
                            })
                            .map(serde_bytes::ByteBuf::from)
                            .collect();
                        Response::Entries { entries }
                    }
                    Err(e) => refused(e),
                }
            }
            Request::Countersign {
                kind,
                terms,
                cosignature,
            } => match self.on_countersign(from, kind, &terms, &cosignature, now_ms) {
                Ok((response, more)) => {
                    actions.extend(more);
                    response
                }
                Err(reason) => refused(reason),
            },
            Request::Cosignature { line } => match witness_verifier(&from) {
                None => refused("no witness key for the sender"),
                Some(v) => match self.log.add_cosignature(&line, &v) {
                    Ok(()) => {
                        self.stats.cosignatures_received += 1;
                        Response::Cosigned
                    }
                    Err(e) => refused(format!("cosignature not stored: {e}")),
                },
            },
        };
        match &response {
            Response::Refused { reason } => {
                tracing::debug!(peer = %hex::encode(from), %reason, "request refused");
                bump(&mut self.stats.requests_refused, "refused")
            }
            _ => self.stats.requests_served += 1,
        }
        (response, actions)
    }

    /// A response to a request this node sent to `from`.
    pub fn on_response(
        &mut self,
        from: PublicKey,
        request: Request,
        response: Response,
        now_ms: u64,
    ) -> Vec<Action> {
        match (request, response) {
            (Request::Entries { log, from: a, .. }, Response::Entries { entries }) => {
                self.on_entries(from, log, a, entries, now_ms)
            }
            (Request::Checkpoint { log }, Response::Checkpoint { note }) => {
                if note.is_empty() || checkpoint_owner(&note) != Some(log) {
                    return vec![];
                }
                let (acceptance, actions) = self.on_checkpoint(from, note, true, now_ms);
                if let Acceptance::Reject(r) = acceptance {
                    bump(&mut self.stats.replica_refused, r);
                }
                actions
            }
            (Request::Entries { log, .. }, _) => {
                self.syncs.remove(&log);
                bump(&mut self.stats.replica_refused, "entries request refused");
                vec![]
            }
            (Request::Cosignature { .. }, Response::Cosigned) => {
                self.stats.cosignatures_given += 1;
                vec![]
            }
            (Request::Cosignature { .. }, Response::Refused { reason }) => {
                tracing::debug!(peer = %hex::encode(from), %reason, "cosignature refused");
                vec![]
            }
            _ => vec![],
        }
    }

    /// A request to `to` failed (timeout, connection closed, unsupported).
    pub fn on_failure(&mut self, to: PublicKey, request: Request) {
        if let Request::Entries { log, .. } = request {
            if self.syncs.get(&log).map(|s| s.peer) == Some(to) {
                self.syncs.remove(&log);
            }
        }
    }

    fn on_entries(
        &mut self,
        from: PublicKey,
        log: PublicKey,
        first: u64,
        entries: Vec<serde_bytes::ByteBuf>,
        now_ms: u64,
    ) -> Vec<Action> {
        let Some(sync) = self.syncs.get_mut(&log) else {
            return vec![];
        };
        let size = self.replicas.get(&log).map(Replica::size).unwrap_or(0);
        if sync.peer != from || first != size + sync.entries.len() as u64 || entries.is_empty() {
            self.syncs.remove(&log);
            bump(
                &mut self.stats.replica_refused,
                "entries response out of order or empty",
            );
            return vec![];
        }
        let want = sync.target - size - sync.entries.len() as u64;
        for e in entries.into_iter().take(want as usize) {
            sync.bytes += e.len();
            sync.entries.push(e.into_vec());
        }
        sync.progressed_ms = now_ms;
        if sync.bytes > SYNC_PENDING_BYTES_MAX {
            self.syncs.remove(&log);
            bump(
                &mut self.stats.replica_refused,
                "sync over SYNC_PENDING_BYTES_MAX",
            );
            return vec![];
        }
        let next = size + sync.entries.len() as u64;
        if next < sync.target {
            return vec![Action::Send {
                to: from,
                request: Request::Entries {
                    log,
                    from: next,
                    to: sync.target.min(next + ENTRIES_PER_REQUEST_MAX),
                },
            }];
        }
        let sync = self.syncs.remove(&log).expect("present above");
        self.finish_sync(log, sync, now_ms)
    }

    fn finish_sync(&mut self, log: PublicKey, sync: Sync, now_ms: u64) -> Vec<Action> {
        let replica = self.replicas.get_mut(&log).expect("a sync has a replica");
        let first = replica.size();
        if let Err(e) = replica.extend(&sync.note, &sync.entries) {
            tracing::warn!(log = %hex::encode(log), error = %e, "replica update refused");
            bump(&mut self.stats.replica_refused, "entries do not verify");
            return vec![];
        }
        self.stats.entries_replicated += sync.entries.len() as u64;
        let new: Vec<Entry> = sync
            .entries
            .iter()
            .filter_map(|b| Entry::decode(b).ok())
            .collect();
        let mut actions = Vec::new();
        if new.iter().any(|e| e.kind() == Kind::Admission) {
            self.collect_votes(&new);
            match self.refresh_members(now_ms) {
                Ok(a) => actions.extend(a),
                Err(e) => tracing::error!(error = %e, "cannot record admissions"),
            }
        }
        actions.extend(self.witness(log, first, now_ms));
        actions.extend(self.start_sync(log, now_ms));
        actions
    }

    /// Cosign the replica's checkpoint of `log` after checking consistency with the last one
    /// this node cosigned, and send the cosignature to the log owner.
    fn witness(&mut self, log: PublicKey, _first: u64, now_ms: u64) -> Vec<Action> {
        let Some(replica) = self.replicas.get(&log) else {
            return vec![];
        };
        let Ok(verifier) = log_verifier(&log) else {
            return vec![];
        };
        let origin = leam_ledger::identity::origin_of(&log);
        let previous = match self.witness.state().load(&origin) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "witness state unreadable");
                return vec![];
            }
        };
        let proof = match previous {
            Some(prev) => match Checkpoint::open(prev.checkpoint.as_bytes(), &verifier) {
                Ok((old, _)) if old.size > 0 && old.size <= replica.size() => {
                    match replica.prove_consistency(old.size, replica.size()) {
                        Ok(p) => p,
                        Err(_) => return vec![],
                    }
                }
                _ => Vec::new(),
            },
            None => Vec::new(),
        };
        let note = replica.checkpoint().to_vec();
        match self.witness.cosign(&note, &verifier, &proof, now_ms / 1000) {
            Ok(line) => vec![Action::Send {
                to: log,
                request: Request::Cosignature { line },
            }],
            Err(e) => {
                tracing::warn!(log = %hex::encode(log), error = %e, "witness refused to cosign");
                vec![]
            }
        }
    }

    /// Periodic work: republish the own checkpoint, restart stalled syncs.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.republish
            && self
                .last_publish_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= REPUBLISH_MS)
        {
            self.republish = false;
            actions.push(self.publish(now_ms));
        }
        let stalled: Vec<PublicKey> = self
            .syncs
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.progressed_ms) >= SYNC_STALL_MS)
            .map(|(k, _)| *k)
            .collect();
        for k in stalled {
            self.syncs.remove(&k);
            bump(&mut self.stats.replica_refused, "sync stalled");
        }
        // Anti-entropy: one connected member a tick is asked for its latest checkpoint, so a
        // missed gossip message costs at most one round through the members.
        if let Some(next) = self
            .connected
            .range((
                std::ops::Bound::Excluded(self.pull_cursor),
                std::ops::Bound::Unbounded,
            ))
            .next()
            .or_else(|| self.connected.iter().next())
            .copied()
        {
            self.pull_cursor = next;
            actions.push(Action::Send {
                to: next,
                request: Request::Checkpoint { log: next },
            });
        }
        let pending: Vec<PublicKey> = self.ahead.keys().copied().collect();
        for k in pending {
            actions.extend(self.start_sync(k, now_ms));
        }
        actions
    }
}

/// The log key named by a checkpoint note's origin line, without verifying it.
pub fn checkpoint_owner(note: &[u8]) -> Option<PublicKey> {
    key_of_origin(std::str::from_utf8(note).ok()?.lines().next()?)
}

/// Size of a checkpoint note (second line), without verifying it.
pub fn checkpoint_size(note: &[u8]) -> Option<u64> {
    std::str::from_utf8(note).ok()?.lines().nth(1)?.parse().ok()
}

/// Witness cosignature lines on a note (signature lines after the first).
pub fn cosignature_count(note: &[u8]) -> usize {
    let text = String::from_utf8_lossy(note);
    match text.split_once("\n\n") {
        Some((_, sigs)) => sigs
            .lines()
            .filter(|l| l.starts_with('\u{2014}'))
            .count()
            .saturating_sub(1),
        None => 0,
    }
}

/// Entries signed elsewhere (the operator's CLI, the web API) and read-outs for the node's web
/// server.
impl Core {
    /// Append `entry`, signed elsewhere with this node's key, to the own log and announce the
    /// new checkpoint as [`Core::append`] does. Refused, naming what was expected and found,
    /// unless its author is this node, its `seq` is the next index, its timestamp is not
    /// before the last entry's, its signature verifies and the log rules accept it.
    pub fn submit(&mut self, entry: Entry, now_ms: u64) -> Result<(u64, Vec<Action>), CoreError> {
        if entry.author != self.key {
            return Err(CoreError::Refused(format!(
                "entry author {}, expected this node's key {}",
                hex::encode(entry.author),
                hex::encode(self.key)
            )));
        }
        let next = self.log.size();
        if entry.seq != next {
            return Err(CoreError::Refused(format!(
                "entry seq {}, expected the next index {next}",
                entry.seq
            )));
        }
        let last = self.timestamp(0);
        if entry.timestamp_ms < last {
            return Err(CoreError::Refused(format!(
                "entry timestamp {} ms, expected at least the last entry's {last} ms",
                entry.timestamp_ms
            )));
        }
        entry
            .verify()
            .map_err(|e| CoreError::Refused(format!("entry signature: {e}")))?;
        let index = match self.log.append(entry.clone()) {
            Ok(i) => i,
            Err(LogError::Rule { source, .. }) => {
                return Err(CoreError::Refused(format!("log rules: {source}")))
            }
            Err(e) => return Err(e.into()),
        };
        let mut actions = Vec::new();
        if entry.kind() == Kind::Admission {
            self.votes.push(entry);
            actions.extend(self.refresh_members(now_ms)?);
        }
        actions.push(self.publish(now_ms));
        Ok((index, actions))
    }

    /// For each replica, the size of the newest verified checkpoint of that log this node
    /// knows of (gossiped or fetched, not yet replicated), at least the replica's size: the
    /// replication lag of a log is this minus the replica's size.
    pub fn known_sizes(&self) -> BTreeMap<PublicKey, u64> {
        self.replicas
            .iter()
            .map(|(k, r)| {
                let ahead = self
                    .ahead
                    .get(k)
                    .and_then(|(note, _)| checkpoint_size(note))
                    .unwrap_or(0);
                let syncing = self.syncs.get(k).map(|s| s.target).unwrap_or(0);
                (*k, r.size().max(ahead).max(syncing))
            })
            .collect()
    }
}
