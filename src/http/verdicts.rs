//! What the layer makes of each backend answer: a look (phase one of a layer of several
//! policies), a take (phase two, or the only call of a one-policy layer), a look for the
//! headers; and the charge a response decides.

use std::sync::Arc;

use super::charge::OnEnd;
use super::future::{Entry, Ledger, Refusal, Run};
use super::observe::Outcome;
use super::responses::degraded_denial;
use super::{Backend, Charge, Config, Key, OnBackendError, Verdict};
use crate::Decision;

/// The outcome of a missing key (or peer address): let through in shadow mode.
pub(super) fn no_key(shadow: bool) -> Outcome {
    if shadow {
        Outcome::ShadowDenied
    } else {
        Outcome::NoKey
    }
}

/// Whether policy `i` is in shadow mode for this request.
fn in_shadow<B>(config: &Config<B>, run: &Run, i: usize) -> bool {
    run.shadow || config.policies[i].in_shadow()
}

/// A refusal by policy `i`: the longest wait of the refusing policies (`None`, no
/// `Retry-After`, once any refuses a cost above its capacity); the first refuser names it. An
/// answer already made (no key, a fail-closed backend) stays.
fn refuse(run: &mut Run, i: usize, decision: Option<Decision>, wait: Option<std::time::Duration>) {
    match &mut run.refusal {
        Some(Refusal::Denied { wait: longest, .. }) => {
            *longest = match (*longest, wait) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
        }
        Some(Refusal::Answer(_)) => {}
        None => {
            run.refusal = Some(Refusal::Denied {
                policy: i,
                decision,
                wait,
            })
        }
    }
}

/// A backend failure of policy `i`: the failure policy. True when the request is refused.
fn failed<B: Backend>(config: &Config<B>, run: &mut Run, i: usize, error: B::Error) -> bool {
    config.observe(i, Outcome::Error, None, run.route.as_ref());
    let name = &config.policies[i].name;
    match config.on_error {
        OnBackendError::FailOpen => {
            tracing::warn!(%error, policy = %name, "rate-limit backend failed; request let through (fail open)");
            false
        }
        OnBackendError::FailClosed if in_shadow(config, run, i) => {
            tracing::warn!(%error, policy = %name, "rate-limit backend failed; request let through (shadow mode)");
            run.shadowed.push((i, "backend error"));
            false
        }
        OnBackendError::FailClosed => {
            // The error (hosts, server messages) goes to the log, not to the client.
            tracing::warn!(%error, policy = %name, "rate-limit backend failed; request refused (fail closed)");
            run.refusal = Some(Refusal::Answer(degraded_denial()));
            true
        }
    }
}

/// Phase one: a look at policy `i` for `cost` tokens. A policy that would refuse refuses the
/// request (nothing is taken anywhere); the others are looked at all the same, for their
/// header members and the longest wait. Every policy that applies gets an entry.
pub(super) fn looked<B: Backend>(
    config: &Config<B>,
    run: &mut Run,
    i: usize,
    key: Key,
    cost: u64,
    verdict: Result<Verdict, B::Error>,
) {
    let shadow = in_shadow(config, run, i);
    let route = run.route.clone();
    let mut entry = Entry::new(i, key, cost);
    match verdict {
        Ok(Ok(d)) if d.is_degraded() => {
            // A failure policy answered without the store: an allowance is taken (and counted)
            // in phase two like any other; a denial refuses, or in shadow mode lets through.
            if d.is_denied() {
                if shadow {
                    config.observe(i, Outcome::ShadowDenied, None, route.as_ref());
                    run.shadowed.push((i, "backend failure policy"));
                    entry.skip = true;
                } else {
                    config.observe(i, Outcome::Error, None, route.as_ref());
                    run.refusal = Some(Refusal::Answer(degraded_denial()));
                }
            }
        }
        Ok(Ok(d)) => {
            let too_costly = cost > d.capacity();
            if too_costly || d.remaining() < cost {
                let denial = d.denied_for(cost);
                if shadow {
                    config.observe(i, Outcome::ShadowDenied, Some(&denial), route.as_ref());
                    run.shadowed.push((
                        i,
                        if too_costly {
                            "cost above the capacity"
                        } else {
                            "denied"
                        },
                    ));
                    entry.skip = true;
                    entry.shown = config.shadow_headers.then_some(d);
                } else {
                    config.observe(i, Outcome::Denied, Some(&denial), route.as_ref());
                    // No Retry-After for a cost above the capacity: no wait helps (issue 19).
                    let wait = (!too_costly).then(|| denial.retry_after());
                    refuse(run, i, Some(denial), wait);
                    entry.shown = Some(if too_costly { d } else { denial });
                }
            } else {
                entry.shown = (!shadow || config.shadow_headers).then_some(d);
            }
        }
        Ok(Err(_too_costly)) => {
            // A backend whose look refuses a cost above the capacity outright.
            if shadow {
                config.observe(i, Outcome::ShadowDenied, None, route.as_ref());
                run.shadowed.push((i, "cost above the capacity"));
                entry.skip = true;
            } else {
                config.observe(i, Outcome::Denied, None, route.as_ref());
                refuse(run, i, None, None);
            }
        }
        Err(error) => {
            entry.skip = true;
            failed(config, run, i, error);
        }
    }
    run.ledger.push(entry);
}

/// Phase two: ledger entry `e` took (or not). A refusal here (a race lost since the look, or
/// a one-policy layer's denial) ends the takes; [`finish`](super::future) gives back what the
/// entries before it took. Returns the entry's policy and key when its cost is above the
/// capacity: the caller looks at its bucket for the headers.
pub(super) fn taken<B: Backend>(
    config: &Config<B>,
    run: &mut Run,
    e: usize,
    verdict: Result<Verdict, B::Error>,
) -> Option<(usize, Key)> {
    let entry_policy = run.ledger.get_mut(e).map(|x| x.policy)?;
    let i = entry_policy;
    let shadow = in_shadow(config, run, i);
    let route = run.route.clone();
    let shown = |d: Decision| (!shadow || config.shadow_headers).then_some(d);
    match verdict {
        Ok(Ok(d)) if d.is_allowed() => {
            config.observe(i, Outcome::of_grant(&d), Some(&d), route.as_ref());
            let entry = run.ledger.get_mut(e)?;
            entry.took = Some(d);
            entry.shown = shown(d).filter(|d| !d.is_degraded());
        }
        Ok(Ok(d)) if shadow => {
            let (outcome, why) = if d.is_degraded() {
                (Outcome::ShadowDenied, "backend failure policy")
            } else {
                (Outcome::ShadowDenied, "denied")
            };
            config.observe(i, outcome, Some(&d), route.as_ref());
            run.shadowed.push((i, why));
            run.ledger.get_mut(e)?.shown = shown(d).filter(|d| !d.is_degraded());
        }
        Ok(Ok(d)) if d.is_degraded() => {
            config.observe(i, Outcome::Error, None, route.as_ref());
            run.refusal = Some(Refusal::Answer(degraded_denial()));
        }
        Ok(Ok(d)) => {
            config.observe(i, Outcome::Denied, Some(&d), route.as_ref());
            refuse(run, i, Some(d), Some(d.retry_after()));
            run.ledger.get_mut(e)?.shown = Some(d);
        }
        Ok(Err(_too_costly)) if shadow => {
            config.observe(i, Outcome::ShadowDenied, None, route.as_ref());
            run.shadowed.push((i, "cost above the capacity"));
        }
        Ok(Err(_too_costly)) => {
            config.observe(i, Outcome::Denied, None, route.as_ref());
            refuse(run, i, None, None);
            let entry = run.ledger.get_mut(e)?;
            return Some((entry.policy, entry.key.share()));
        }
        Err(error) => {
            failed(config, run, i, error);
        }
    }
    None
}

/// The look at entry `e`'s bucket after its cost was refused as above the capacity: the
/// headers describe it.
pub(super) fn described<B: Backend>(
    _config: &Config<B>,
    run: &mut Run,
    e: usize,
    verdict: Result<Verdict, B::Error>,
) {
    let Ok(Ok(d)) = verdict else { return };
    if d.is_degraded() {
        return;
    }
    if let Some(Refusal::Denied { decision, .. }) = &mut run.refusal {
        decision.get_or_insert(d);
    }
    if let Some(entry) = run.ledger.get_mut(e) {
        entry.shown = Some(d);
    }
}

/// Applies a response's [`Charge`] to every policy that granted the request; for a charge by
/// the bytes of the body, the work for the body's end.
pub(super) fn charged<B: Backend>(
    config: &Arc<Config<B>>,
    ledger: &mut Ledger,
    charge: Charge,
) -> Option<Box<OnEnd>> {
    match charge {
        Charge::Keep => None,
        Charge::Undo => {
            super::future::give_back(config, ledger);
            None
        }
        Charge::Extra(n) => {
            for e in ledger.iter().filter(|e| e.took.is_some()) {
                config.policies[e.policy].backend.charge(&e.key, n);
            }
            None
        }
        Charge::BodyBytes { per_token } => {
            let keys: Vec<(usize, Key)> = std::mem::take(ledger)
                .iter()
                .filter(|e| e.took.is_some())
                .map(|e| (e.policy, e.key.clone()))
                .collect();
            let config = config.clone();
            Some(Box::new(OnEnd::new(move |sent| {
                let n = sent.div_ceil(per_token.get());
                if n > 0 {
                    for (policy, key) in &keys {
                        config.policies[*policy].backend.charge(key, n);
                    }
                }
            })))
        }
    }
}
