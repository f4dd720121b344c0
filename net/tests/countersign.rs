//! Co-signed facts over the network protocol: propose → verify → countersign. The proposer
//! sends the terms with its own signature; the counterparty checks that it is the other party,
//! that the proposer's signature verifies and that its policy agrees, records its copy and
//! answers with its signature; the proposer records its copy. No secret key leaves its node.

use std::path::Path;

use leam_ledger::account::Membership;
use leam_ledger::entry::{Body, Entry, LeaseTerms, Sector};
use leam_ledger::genesis::{Founder, Genesis};
use leam_ledger::identity::Identity;
use leam_ledger::log::Log;
use leam_net::core::{Action, Core, Fact};
use leam_net::wire::{Request, Response};

fn id(seed: u8) -> Identity {
    Identity::from_seed(&[seed; 32])
}

fn setup(root: &Path) -> (Core, Core, Genesis) {
    let f = |seed: u8, org: &str, sector| Founder {
        organisation: org.into(),
        sector,
        key: id(seed).public_key(),
    };
    let genesis = Genesis::new(
        20,
        1,
        vec![
            f(1, "Provider", Sector::Public),
            f(2, "Startup", Sector::Startup),
        ],
    )
    .unwrap();
    for (seed, name, sector) in [
        (1, "Provider", Sector::Public),
        (2, "Startup", Sector::Startup),
    ] {
        Log::create(
            &root.join(name),
            id(seed),
            &Membership {
                organisation: name.into(),
                sector,
            },
            1_000,
        )
        .unwrap();
    }
    let mut p = Core::open(&root.join("Provider"), genesis.clone()).unwrap();
    let mut s = Core::open(&root.join("Startup"), genesis.clone()).unwrap();
    p.start(2_000).unwrap();
    s.start(2_000).unwrap();
    (p, s, genesis)
}

fn lease(price_cents: u64) -> Fact {
    Fact::Lease(LeaseTerms {
        job_id: [9; 32],
        bidder: id(2).public_key(),
        provider: id(1).public_key(),
        offer_id: 1,
        compute_units: 1_000,
        price_cents,
        expires_ms: 10_000,
    })
}

fn last_entry(core: &Core) -> Entry {
    let size = core.log().size();
    Entry::decode(&core.log().reader().entries(size - 1, size).unwrap()[0]).unwrap()
}

#[test]
fn a_lease_is_proposed_countersigned_and_recorded_by_both() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut provider, mut startup, _) = setup(tmp.path());
    // The provider agrees to leases of at most 50 cents per 1,000 units.
    provider.set_policy(Box::new(|f, _| match f {
        Fact::Lease(t) if t.price_cents * 1_000 <= 50 * t.compute_units => Ok(()),
        Fact::Lease(t) => Err(format!("price {} cents is over my ask", t.price_cents)),
        _ => Err("only leases".into()),
    }));
    let (pk, sk) = (provider.key(), startup.key());
    let Action::Send { to, request } = startup.propose(&lease(40)).unwrap() else {
        panic!("a proposal is a request")
    };
    assert_eq!(to, pk);
    let p_before = provider.log().size();
    let (response, _) = provider.on_request(sk, request.clone(), 3_000);
    assert!(
        matches!(response, Response::Countersigned { .. }),
        "{response:?}"
    );
    assert_eq!(provider.log().size(), p_before + 1);
    let (result, _) = startup.on_countersigned(pk, &request, response, 3_100);
    let index = result.unwrap();
    assert_eq!(index + 1, startup.log().size());
    // Both copies are entries of kind lease, co-signed by the other party, with one fact id.
    let (a, b) = (last_entry(&provider), last_entry(&startup));
    for e in [&a, &b] {
        e.verify().unwrap();
        e.verify_cosignature().unwrap();
    }
    match (&a.body, &b.body) {
        (Body::Lease(x), Body::Lease(y)) => assert_eq!(x.terms, y.terms),
        other => panic!("{other:?}"),
    }
}

#[test]
fn proposals_the_counterparty_cannot_verify_or_does_not_want_are_refused_and_nothing_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut provider, startup, _) = setup(tmp.path());
    let sk = startup.key();
    let before = provider.log().size();
    // No policy: the node agrees to nothing.
    let Action::Send { request, .. } = startup.propose(&lease(40)).unwrap() else {
        panic!()
    };
    let (r, _) = provider.on_request(sk, request.clone(), 3_000);
    assert!(
        matches!(&r, Response::Refused { reason } if reason.contains("no rule")),
        "{r:?}"
    );
    provider.set_policy(Box::new(|_, _| Err("not today".into())));
    let (r, _) = provider.on_request(sk, request.clone(), 3_000);
    assert!(
        matches!(&r, Response::Refused { reason } if reason.contains("not today")),
        "{r:?}"
    );
    provider.set_policy(Box::new(|_, _| Ok(())));
    // A forged proposer signature.
    let Request::Countersign {
        kind,
        terms,
        mut cosignature,
    } = request.clone()
    else {
        panic!()
    };
    cosignature[0] ^= 1;
    let forged = Request::Countersign {
        kind,
        terms: terms.clone(),
        cosignature: cosignature.clone(),
    };
    let (r, _) = provider.on_request(sk, forged, 3_000);
    assert!(
        matches!(&r, Response::Refused { reason } if reason.contains("signature")),
        "{r:?}"
    );
    // Terms that do not decode, an unknown kind, a proposal sent by a third party.
    let (r, _) = provider.on_request(
        sk,
        Request::Countersign {
            kind,
            terms: terms[..10].to_vec(),
            cosignature: vec![0; 64],
        },
        3_000,
    );
    assert!(matches!(r, Response::Refused { .. }));
    let (r, _) = provider.on_request(
        sk,
        Request::Countersign {
            kind: 1,
            terms: terms.clone(),
            cosignature: vec![0; 64],
        },
        3_000,
    );
    assert!(matches!(r, Response::Refused { .. }));
    let (r, _) = provider.on_request(provider.key(), request, 3_000);
    assert!(matches!(r, Response::Refused { .. }));
    assert_eq!(provider.log().size(), before, "nothing was recorded");
    // A node proposes only facts it is a party of.
    let mut other = lease(40);
    if let Fact::Lease(t) = &mut other {
        t.bidder = id(7).public_key();
    }
    assert!(provider.propose(&other).is_err() || startup.propose(&other).is_err());
}
