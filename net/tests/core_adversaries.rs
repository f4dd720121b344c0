//! The node core against adversaries, deterministically (no network: messages are handed to
//! `Core` as the shell would). Each bad message is dropped with the reason counted, and where a
//! ledger fact exists (an equivocation) it becomes evidence in the log and blocks the key.

use std::path::Path;

use leam_ledger::account::Membership;
use leam_ledger::entry::{Body, Deposit, Entry, EvidenceKind, Money, PublicKey, Sector};
use leam_ledger::genesis::{Founder, Genesis};
use leam_ledger::identity::Identity;
use leam_ledger::log::Log;
use leam_net::core::{Acceptance, Action, Core};
use leam_net::wire::{Gossip, Request, Response, GOSSIP_BYTES_MAX};

fn id(seed: u8) -> Identity {
    Identity::from_seed(&[seed; 32])
}

fn create(dir: &Path, seed: u8, org: &str, sector: Sector) -> Log {
    Log::create(
        dir,
        id(seed),
        &Membership {
            organisation: org.into(),
            sector,
        },
        1_000,
    )
    .unwrap()
}

fn genesis() -> Genesis {
    let f = |seed: u8, org: &str, sector| Founder {
        organisation: org.into(),
        sector,
        key: id(seed).public_key(),
    };
    Genesis::new(
        20,
        2,
        vec![
            f(1, "A", Sector::Public),
            f(2, "B", Sector::Private),
            f(3, "C", Sector::Science),
        ],
    )
    .unwrap()
}

fn deposit(log: &mut Log, reference: &str) -> Vec<u8> {
    let key = log.identity().public_key();
    let e = log.sign_next(
        0,
        2_000 + log.size(),
        Body::Deposit(Deposit {
            member: key,
            eur_cents: 500,
            money: Money::Private,
            reference: reference.into(),
        }),
    );
    log.append(e).unwrap();
    log.checkpoint().to_vec()
}

/// Serve the core's `Entries` requests from `log` until none is left; returns the other actions.
fn serve(core: &mut Core, from: PublicKey, log: &Log, mut actions: Vec<Action>) -> Vec<Action> {
    let mut rest = Vec::new();
    while let Some(a) = actions.pop() {
        match a {
            Action::Send {
                to,
                request: request @ Request::Entries { from: a, to: b, .. },
            } if to == from => {
                let entries = log
                    .reader()
                    .entries(a, b.min(log.size()))
                    .unwrap()
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect();
                actions.extend(core.on_response(
                    from,
                    request,
                    Response::Entries { entries },
                    3_000,
                ));
            }
            other => rest.push(other),
        }
    }
    rest
}

struct World {
    _tmp: tempfile::TempDir,
    a: Core,
    b: Log,
    b_fork: Log,
    c_dir: std::path::PathBuf,
}

/// A (a core) and B (a log) are founders; B's directory is copied before B appends, so the
/// copy can sign a second history (an equivocation) with the same key.
fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    create(&tmp.path().join("a"), 1, "A", Sector::Public);
    let c_dir = tmp.path().join("c");
    create(&c_dir, 3, "C", Sector::Science);
    let bdir = tmp.path().join("b");
    let mut b = create(&bdir, 2, "B", Sector::Private);
    deposit(&mut b, "grant-1");
    drop(b);
    let fork_dir = tmp.path().join("b-fork");
    copy_dir(&bdir, &fork_dir);
    let b = Log::open(&bdir).unwrap();
    let b_fork = Log::open(&fork_dir).unwrap();
    let mut a = Core::open(&tmp.path().join("a"), genesis()).unwrap();
    a.start(2_500).unwrap();
    World {
        _tmp: tmp,
        a,
        b,
        b_fork,
        c_dir,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn gossip(note: &[u8]) -> Vec<u8> {
    Gossip::Checkpoint(note.to_vec()).encode()
}

fn is_fetch(a: &Action) -> bool {
    matches!(
        a,
        Action::Send {
            request: Request::Entries { .. },
            ..
        }
    )
}

/// Deliver gossip `data` from `from` and run the next tick: a gossiped checkpoint's entries are
/// fetched from the next tick, never at once (`specs/wire.md` §3). Returns the acceptance, the
/// delivery's actions and the tick's fetches.
fn gossip_then_tick(
    core: &mut Core,
    from: PublicKey,
    data: &[u8],
    now_ms: u64,
) -> (Acceptance, Vec<Action>) {
    let (acc, mut actions) = core.on_gossip(from, data, now_ms);
    assert!(
        !actions.iter().any(is_fetch),
        "a gossiped checkpoint is fetched from the next tick: {actions:?}"
    );
    actions.extend(
        core.tick(now_ms + leam_net::shell::TICK_MS)
            .into_iter()
            .filter(is_fetch),
    );
    (acc, actions)
}

#[test]
fn a_valid_checkpoint_is_replicated_witnessed_and_a_replay_ignored() {
    let mut w = world();
    let bk = w.b.identity().public_key();
    let note = w.b.checkpoint().to_vec();
    let (acc, actions) = gossip_then_tick(&mut w.a, bk, &gossip(&note), 3_000);
    assert_eq!(acc, Acceptance::Accept);
    let rest = serve(&mut w.a, bk, &w.b, actions);
    assert_eq!(w.a.replicas()[&bk].size(), w.b.size());
    // The witness cosignature goes to the owner, who stores it.
    let line = rest
        .iter()
        .find_map(|a| match a {
            Action::Send {
                to,
                request: Request::Cosignature { line },
            } if *to == bk => Some(line.clone()),
            _ => None,
        })
        .expect("a cosignature for B");
    let verifier = leam_net::core::witness_verifier(&w.a.key()).unwrap();
    w.b.add_cosignature(&line, &verifier).unwrap();
    // The same message again (a replay), and an older checkpoint: ignored, counted.
    let (acc, actions) = w.a.on_gossip(bk, &gossip(&note), 3_100);
    assert_eq!(acc, Acceptance::Ignore("checkpoint already known"));
    assert!(actions.is_empty());
    assert_eq!(w.a.stats().gossip_ignored["checkpoint already known"], 1);
}

#[test]
fn forged_oversized_malformed_and_foreign_messages_are_rejected_with_reasons() {
    let mut w = world();
    let bk = w.b.identity().public_key();
    let size_before = w.a.log().size();
    // Forged: one byte of B's signature flipped.
    let mut forged = w.b.checkpoint().to_vec();
    let at = forged.len() - 3;
    forged[at] ^= 0x01;
    let (acc, _) = w.a.on_gossip(bk, &gossip(&forged), 3_000);
    assert_eq!(acc, Acceptance::Reject("checkpoint signature invalid"));
    // Forged body: the size changed under B's signature.
    let text = String::from_utf8(w.b.checkpoint().to_vec()).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    let changed = text.replacen(&format!("\n{}\n", lines[1]), "\n9\n", 1);
    let (acc, _) = w.a.on_gossip(bk, &gossip(changed.as_bytes()), 3_000);
    assert_eq!(acc, Acceptance::Reject("checkpoint signature invalid"));
    // Oversized, empty, unknown tag.
    let big = vec![1u8; GOSSIP_BYTES_MAX + 1];
    assert_eq!(
        w.a.on_gossip(bk, &big, 3_000).0,
        Acceptance::Reject("malformed")
    );
    assert_eq!(
        w.a.on_gossip(bk, &[], 3_000).0,
        Acceptance::Reject("malformed")
    );
    assert_eq!(
        w.a.on_gossip(bk, &[9, 1, 2], 3_000).0,
        Acceptance::Reject("malformed")
    );
    // A log of a key outside the genesis.
    let tmp = tempfile::tempdir().unwrap();
    let outsider = create(&tmp.path().join("x"), 9, "X", Sector::Startup);
    let (acc, _) = w.a.on_gossip(bk, &gossip(outsider.checkpoint()), 3_000);
    assert_eq!(acc, Acceptance::Reject("checkpoint of a non-member's log"));
    // Not a leam checkpoint at all.
    let (acc, _) = w.a.on_gossip(bk, &gossip(b"hello\n1\nAAAA\n\n"), 3_000);
    assert_eq!(
        acc,
        Acceptance::Reject("checkpoint origin is not a leam log")
    );
    let s = w.a.stats();
    assert_eq!(s.gossip_rejected["checkpoint signature invalid"], 2);
    assert_eq!(s.gossip_rejected["malformed"], 3);
    assert_eq!(s.gossip_rejected["checkpoint of a non-member's log"], 1);
    assert_eq!(s.gossip_accepted, 0);
    // Nothing was stored: no replica grew, the own log did not change.
    assert!(w.a.replicas().values().all(|r| r.size() == 0));
    assert_eq!(w.a.log().size(), size_before);
}

#[test]
fn wrong_entries_from_a_responder_are_not_stored() {
    let mut w = world();
    let bk = w.b.identity().public_key();
    deposit(&mut w.b, "grant-2");
    let (_, actions) = gossip_then_tick(&mut w.a, bk, &gossip(w.b.checkpoint()), 3_000);
    let Some(Action::Send { request, .. }) = actions.into_iter().next() else {
        panic!("expected an entries request");
    };
    // The responder answers with B's fork: entries signed by B, but not the history B's
    // checkpoint commits to (the last one differs).
    let Request::Entries { from, to, .. } = request.clone() else {
        panic!()
    };
    let mut fork = w.b_fork;
    deposit(&mut fork, "other");
    assert_eq!(fork.size(), w.b.size());
    let entries = fork
        .reader()
        .entries(from, to)
        .unwrap()
        .into_iter()
        .map(serde_bytes::ByteBuf::from)
        .collect();
    w.a.on_response(bk, request, Response::Entries { entries }, 3_000);
    assert_eq!(w.a.replicas()[&bk].size(), 0);
    assert_eq!(w.a.stats().replica_refused["entries do not verify"], 1);
}

#[test]
fn an_equivocating_member_is_recorded_blocked_and_its_evidence_convinces_others() {
    let mut w = world();
    let bk = w.b.identity().public_key();
    // A replicates B's history.
    deposit(&mut w.b, "grant-2");
    let (_, actions) = gossip_then_tick(&mut w.a, bk, &gossip(w.b.checkpoint()), 3_000);
    serve(&mut w.a, bk, &w.b, actions);
    assert_eq!(w.a.replicas()[&bk].size(), 3);
    // B signs another history of the same size.
    let fork_note = deposit(&mut w.b_fork, "grant-2-other");
    let before = w.a.log().size();
    let (acc, actions) = w.a.on_gossip(bk, &gossip(&fork_note), 3_200);
    assert_eq!(acc, Acceptance::Accept);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Block { peer, .. } if *peer == bk)));
    let evidence_msg = actions
        .iter()
        .find_map(|a| match a {
            Action::Publish(d) if d.first() == Some(&2) => Some(d.clone()),
            _ => None,
        })
        .expect("evidence is gossiped");
    assert_eq!(w.a.stats().evidence_recorded, 1);
    assert!(
        !w.a.is_member(&bk),
        "the equivocator's connections are refused"
    );
    // The evidence is an entry of A's own log.
    let raw =
        w.a.log()
            .reader()
            .entries(before, w.a.log().size())
            .unwrap();
    let ev = raw
        .iter()
        .map(|b| Entry::decode(b).unwrap())
        .find_map(|e| match e.body {
            Body::Evidence(ev) => Some(ev),
            _ => None,
        })
        .unwrap();
    assert_eq!(ev.accused, bk);
    assert_eq!(ev.kind, EvidenceKind::CheckpointEquivocation);
    // The same checkpoint again is ignored (the log of an equivocator).
    let (acc, _) = w.a.on_gossip(bk, &gossip(&fork_note), 3_300);
    assert_eq!(acc, Acceptance::Ignore("log of an equivocator"));

    // C receives A's evidence: it checks it, records its own copy, blocks B.
    let ak = w.a.key();
    let mut c = Core::open(&w.c_dir, genesis()).unwrap();
    c.start(3_400).unwrap();
    // A tampered copy is rejected first.
    let mut bad = evidence_msg.clone();
    let n = bad.len() - 100;
    bad[n] ^= 1;
    assert!(matches!(
        c.on_gossip(ak, &bad, 3_500).0,
        Acceptance::Reject(_)
    ));
    let (acc, actions) = c.on_gossip(ak, &evidence_msg, 3_500);
    assert_eq!(acc, Acceptance::Accept);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Block { peer, .. } if *peer == bk)));
    assert_eq!(c.stats().evidence_recorded, 1);
    assert!(!c.is_member(&bk));
    // Once recorded, the same evidence is not recorded twice.
    assert_eq!(
        c.on_gossip(ak, &evidence_msg, 3_600).0,
        Acceptance::Ignore("equivocation already recorded")
    );
}

#[test]
fn requests_over_the_limits_are_refused() {
    let mut w = world();
    let bk = w.b.identity().public_key();
    let ak = w.a.key();
    for request in [
        Request::Entries {
            log: ak,
            from: 0,
            to: 5_000,
        },
        Request::Entries {
            log: ak,
            from: 3,
            to: 3,
        },
        Request::Cosignature {
            line: "x".repeat(10_000),
        },
        Request::Cosignature {
            line: "— not a cosignature\n".into(),
        },
    ] {
        let (r, _) = w.a.on_request(bk, request.clone(), 3_000);
        assert!(
            matches!(r, Response::Refused { .. }),
            "{request:?} -> {r:?}"
        );
    }
    // A valid request is served: A's own entries.
    let (r, _) = w.a.on_request(
        bk,
        Request::Entries {
            log: ak,
            from: 0,
            to: 2,
        },
        3_000,
    );
    match r {
        Response::Entries { entries } => assert_eq!(entries.len(), 2),
        r => panic!("{r:?}"),
    }
}
