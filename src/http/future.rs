//! The response future of [`RateLimit`](super::RateLimit): asks each policy in turn (all or
//! nothing), then calls the inner service, or answers itself.

// pin-project-lite generates undocumented projection types.
#![allow(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::charge::OnEnd;
use super::observe::{self, Outcome};
use super::responses::{
    add_retry_after, degraded_denial, is_grpc, missing_key, no_peer_address, to_grpc, too_many,
    Denial,
};
use super::{
    Backend, Charge, Config, Key, MissingKey, OnBackendError, RequestInfo, ResponseBody,
    ResponseInfo,
};
use crate::Decision;

pin_project! {
    /// The response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, B, ReqBody>
    where
        S: Service<Request<ReqBody>>,
        B: Backend,
    {
        #[pin]
        state: State<S, B, ReqBody>,
        config: Option<Arc<Config<B>>>,
        run: Run,
    }
}

impl<S, B, ReqBody> std::fmt::Debug for ResponseFuture<S, B, ReqBody>
where
    S: Service<Request<ReqBody>>,
    B: Backend,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, ReqBody>
    where
        S: Service<Request<ReqBody>>,
        B: Backend,
    {
        Checking {
            #[pin]
            check: B::Future,
            req: Option<Request<ReqBody>>,
            inner: Option<S>,
            at: Asking,
        },
        Calling {
            #[pin]
            call: S::Future,
        },
        Done {
            response: Option<Response<Bytes>>,
        },
    }
}

/// The policy being asked.
struct Asking {
    policy: usize,
    key: Option<Key>,
    cost: u64,
    /// Only looking (another policy refused): for the headers and the longest wait.
    peek: bool,
}

/// What one request has from its policies so far.
#[derive(Default)]
struct Run {
    ledger: Ledger,
    refusal: Option<Refusal>,
    /// The layer's shadow mode, read once per request.
    shadow: bool,
    /// A gRPC call, answered in gRPC.
    grpc: bool,
    /// The route label, when decisions are observed.
    route: Option<Arc<str>>,
}

/// One policy's part in a request.
struct Entry {
    policy: usize,
    key: Key,
    cost: u64,
    /// The decision the response describes (none in shadow mode without shadow headers).
    shown: Option<Decision>,
    /// The grant, when the policy took tokens (given back if another refuses).
    took: Option<Decision>,
}

/// The entries, the first inline (a layer of one policy allocates nothing).
#[derive(Default)]
struct Ledger {
    first: Option<Entry>,
    rest: Vec<Entry>,
}

impl Ledger {
    fn push(&mut self, entry: Entry) {
        if self.first.is_none() {
            self.first = Some(entry);
        } else {
            self.rest.push(entry);
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.first.iter().chain(self.rest.iter())
    }
}

/// Why the request will not reach the service.
enum Refusal {
    /// A quota denial by `policy`, or its cost above the capacity (`wait: None`).
    Denied {
        policy: usize,
        decision: Option<Decision>,
        wait: Option<Duration>,
    },
    /// An answer already made (no key, no peer address, the backend failed closed); the other
    /// policies are not asked.
    Answer(Response<Bytes>),
}

impl<S, B, ReqBody> ResponseFuture<S, B, ReqBody>
where
    S: Service<Request<ReqBody>>,
    B: Backend,
{
    pub(super) fn passthrough(call: S::Future) -> Self {
        ResponseFuture {
            state: State::Calling { call },
            config: None,
            run: Run::default(),
        }
    }

    pub(super) fn start(config: Arc<Config<B>>, req: Request<ReqBody>, inner: S) -> Self
    where
        ReqBody: Body,
    {
        let route = observe::wanted()
            .then(|| {
                let info = RequestInfo::new(&req, None);
                observe::route_of(config.route.as_deref(), &info)
            })
            .flatten();
        let mut run = Run {
            shadow: config.in_shadow(),
            grpc: config.grpc && is_grpc(&req),
            route,
            ..Run::default()
        };
        let state = ask(&config, &mut run, req, inner, 0);
        ResponseFuture {
            state,
            config: Some(config),
            run,
        }
    }
}

/// Asks the policies from `from` on: the state that waits for the next one's answer, or, when
/// all have answered, the call or the refusal.
fn ask<S, B, ReqBody>(
    config: &Arc<Config<B>>,
    run: &mut Run,
    req: Request<ReqBody>,
    inner: S,
    from: usize,
) -> State<S, B, ReqBody>
where
    S: Service<Request<ReqBody>>,
    B: Backend,
    ReqBody: Body,
{
    let info = RequestInfo::new(&req, req.body().size_hint().exact());
    for (i, p) in config.policies.iter().enumerate().skip(from) {
        if !p.applies(&info) {
            continue;
        }
        let peek = run.refusal.is_some();
        let shadow = run.shadow || p.in_shadow();
        let key = match p.key.extract(&info) {
            Some(key) => key,
            None if peek => continue,
            None if p.key.lacks_peer(&info) => {
                let response = no_peer_address(&config.no_peer_logged);
                config.observe(i, no_key(shadow), None, run.route.as_ref());
                if shadow {
                    // Logged as a set-up error all the same; nothing refused.
                    config.let_through(i, "no peer address");
                    continue;
                }
                run.refusal = Some(Refusal::Answer(response));
                break;
            }
            None => match &p.missing {
                MissingKey::Reject(status) => {
                    config.observe(i, no_key(shadow), None, run.route.as_ref());
                    if shadow {
                        config.let_through(i, "no key");
                        continue;
                    }
                    run.refusal = Some(Refusal::Answer(missing_key(*status, &p.key)));
                    break;
                }
                MissingKey::Fallback(key) => key.share(),
            },
        };
        let cost = p.cost(&info);
        let check = p.backend.acquire(&key, if peek { 0 } else { cost });
        return State::Checking {
            check,
            req: Some(req),
            inner: Some(inner),
            at: Asking {
                policy: i,
                key: Some(key),
                cost,
                peek,
            },
        };
    }
    finish(config, run, req, inner)
}

/// Every policy answered: call the service, or refuse (giving back what the others took).
fn finish<S, B, ReqBody>(
    config: &Arc<Config<B>>,
    run: &mut Run,
    req: Request<ReqBody>,
    mut inner: S,
) -> State<S, B, ReqBody>
where
    S: Service<Request<ReqBody>>,
    B: Backend,
{
    let Some(refusal) = run.refusal.take() else {
        return State::Calling {
            call: inner.call(req),
        };
    };
    // All or nothing: the policies that granted give their tokens back.
    for e in run.ledger.iter() {
        if let Some(took) = &e.took {
            config.policies[e.policy].backend.undo(&e.key, e.cost, took);
        }
    }
    let (mut response, wait) = match refusal {
        Refusal::Answer(response) => {
            let wait = response.headers().contains_key(http::header::RETRY_AFTER);
            (response, wait.then_some(Duration::from_secs(1)))
        }
        Refusal::Denied {
            policy,
            decision,
            wait,
        } => {
            let mut response = match &config.on_denied {
                Some(f) => f(&Denial::new(
                    &config.policies[policy].name,
                    decision.as_ref(),
                    wait,
                    run.grpc,
                )),
                None => too_many(wait),
            };
            for e in run.ledger.iter() {
                if let Some(d) = &e.shown {
                    config.policies[e.policy]
                        .headers
                        .apply(d, response.headers_mut());
                }
            }
            add_retry_after(&mut response, wait);
            if config.on_denied.is_some() {
                // The user's answer, as written (with the headers).
                return State::Done {
                    response: Some(response),
                };
            }
            (response, wait)
        }
    };
    if run.grpc {
        response = to_grpc(response, wait);
    }
    State::Done {
        response: Some(response),
    }
}

impl<S, B, ReqBody, ResBody> Future for ResponseFuture<S, B, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    B: Backend,
    ReqBody: Body,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking {
                    check,
                    req,
                    inner,
                    at,
                } => {
                    let verdict = ready!(check.poll(cx));
                    let config = this.config.as_ref().expect("set while checking");
                    let (Some(req), Some(inner), Some(key)) =
                        (req.take(), inner.take(), at.key.take())
                    else {
                        unreachable!("taken once")
                    };
                    let (i, cost) = (at.policy, at.cost);
                    let next = if at.peek {
                        looked(config, this.run, i, key, cost, verdict);
                        match this.run.refusal {
                            // Cost above a capacity: no wait helps; the others need no look.
                            Some(Refusal::Denied { wait: None, .. }) => {
                                finish(config, this.run, req, inner)
                            }
                            _ => ask(config, this.run, req, inner, i + 1),
                        }
                    } else {
                        match answered(config, this.run, i, key, cost, verdict) {
                            // Look at this policy's bucket for the headers, then refuse.
                            Some(key) => State::Checking {
                                check: config.policies[i].backend.acquire(&key, 0),
                                req: Some(req),
                                inner: Some(inner),
                                at: Asking {
                                    policy: i,
                                    key: Some(key),
                                    cost,
                                    peek: true,
                                },
                            },
                            None if matches!(this.run.refusal, Some(Refusal::Answer(_))) => {
                                finish(config, this.run, req, inner)
                            }
                            None => ask(config, this.run, req, inner, i + 1),
                        }
                    };
                    this.state.set(next);
                }
                StateProj::Calling { call } => {
                    let response = ready!(call.poll(cx))?;
                    let (mut parts, body) = response.into_parts();
                    let Some(config) = this.config.as_ref() else {
                        return Poll::Ready(Ok(Response::from_parts(
                            parts,
                            ResponseBody::inner(body),
                        )));
                    };
                    let charge = config
                        .charge
                        .as_ref()
                        .map(|f| f(&ResponseInfo::new(parts.status, &parts.headers)));
                    for e in this.run.ledger.iter() {
                        if let Some(d) = &e.shown {
                            config.policies[e.policy]
                                .headers
                                .apply(d, &mut parts.headers);
                        }
                    }
                    let on_end = charge.and_then(|c| charged(config, &mut this.run.ledger, c));
                    return Poll::Ready(Ok(Response::from_parts(
                        parts,
                        ResponseBody::inner_then(body, on_end),
                    )));
                }
                StateProj::Done { response } => {
                    let response = response.take().expect("polled after completion");
                    let (parts, body) = response.into_parts();
                    return Poll::Ready(Ok(Response::from_parts(
                        parts,
                        ResponseBody::Full { data: Some(body) },
                    )));
                }
            }
        }
    }
}

/// Policy `i` answered the request (not a look). Returns the key when the policy must be looked
/// at before refusing (a cost above its capacity: for the headers).
fn answered<B: Backend>(
    config: &Config<B>,
    run: &mut Run,
    i: usize,
    key: Key,
    cost: u64,
    verdict: Result<crate::http::Verdict, B::Error>,
) -> Option<Key> {
    let shadow = run.shadow || config.policies[i].in_shadow();
    let shown = |d: Decision| (!shadow || config.shadow_headers).then_some(d);
    let entry = |key, shown, took| Entry {
        policy: i,
        key,
        cost,
        shown,
        took,
    };
    let route = run.route.as_ref();
    match verdict {
        Ok(Ok(d)) if d.is_allowed() => {
            config.observe(i, Outcome::of_grant(&d), Some(&d), route);
            run.ledger.push(entry(key, shown(d), Some(d)));
        }
        Ok(Ok(d)) if shadow => {
            config.observe(i, Outcome::ShadowDenied, Some(&d), route);
            config.let_through(
                i,
                if d.is_degraded() {
                    "backend failure policy"
                } else {
                    "denied"
                },
            );
            run.ledger
                .push(entry(key, shown(d).filter(|d| !d.is_degraded()), None));
        }
        Ok(Ok(d)) if d.is_degraded() => {
            config.observe(i, Outcome::Error, None, route);
            run.refusal = Some(Refusal::Answer(degraded_denial()));
        }
        Ok(Ok(d)) => {
            config.observe(i, Outcome::Denied, Some(&d), route);
            run.refusal = Some(Refusal::Denied {
                policy: i,
                decision: Some(d),
                wait: Some(d.retry_after()),
            });
            run.ledger.push(entry(key, Some(d), None));
        }
        Ok(Err(_too_costly)) if shadow => {
            config.observe(i, Outcome::ShadowDenied, None, route);
            config.let_through(i, "cost above the capacity");
        }
        Ok(Err(_too_costly)) => {
            config.observe(i, Outcome::Denied, None, route);
            // No Retry-After: no wait makes this request pass (issue 19).
            run.refusal = Some(Refusal::Denied {
                policy: i,
                decision: None,
                wait: None,
            });
            return Some(key);
        }
        Err(error) => {
            config.observe(i, Outcome::Error, None, route);
            match config.on_error {
                OnBackendError::FailOpen => {
                    tracing::warn!(%error, policy = %config.policies[i].name, "rate-limit backend failed; request let through (fail open)");
                }
                OnBackendError::FailClosed if shadow => {
                    tracing::warn!(%error, policy = %config.policies[i].name, "rate-limit backend failed; request let through (shadow mode)");
                    config.let_through(i, "backend error");
                }
                OnBackendError::FailClosed => {
                    // The error (hosts, server messages) goes to the log, not to the client.
                    tracing::warn!(%error, policy = %config.policies[i].name, "rate-limit backend failed; request refused (fail closed)");
                    run.refusal = Some(Refusal::Answer(degraded_denial()));
                }
            }
        }
    }
    None
}

/// The outcome of a missing key (or peer address): let through in shadow mode.
fn no_key(shadow: bool) -> Outcome {
    if shadow {
        Outcome::ShadowDenied
    } else {
        Outcome::NoKey
    }
}

/// A look at policy `i` (cost 0) after a refusal: its bucket for the headers, and its wait if it
/// would refuse the request too (the 429 says the longest).
fn looked<B: Backend>(
    config: &Config<B>,
    run: &mut Run,
    i: usize,
    key: Key,
    cost: u64,
    verdict: Result<crate::http::Verdict, B::Error>,
) {
    let Ok(Ok(d)) = verdict else { return };
    if d.is_degraded() {
        return;
    }
    let shadow = run.shadow || config.policies[i].in_shadow();
    if let Some(Refusal::Denied {
        policy,
        decision,
        wait,
    }) = &mut run.refusal
    {
        if *policy == i {
            // The look at the policy whose cost is above its capacity.
            *decision = Some(d);
        } else if let Some(wait) = wait {
            if !shadow && d.remaining() < cost && cost <= d.capacity() {
                *wait = (*wait).max(d.denied_for(cost).retry_after());
            }
        }
    }
    if shadow && !config.shadow_headers {
        return;
    }
    run.ledger.push(Entry {
        policy: i,
        key,
        cost,
        shown: Some(d),
        took: None,
    });
}

/// Applies a response's [`Charge`] to every policy that granted the request; for a charge by
/// the bytes of the body, the work for the body's end.
fn charged<B: Backend>(
    config: &Arc<Config<B>>,
    ledger: &mut Ledger,
    charge: Charge,
) -> Option<Box<OnEnd>> {
    match charge {
        Charge::Keep => None,
        Charge::Undo => {
            for e in ledger.iter() {
                if let Some(took) = &e.took {
                    config.policies[e.policy].backend.undo(&e.key, e.cost, took);
                }
            }
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
