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

use super::observe;
use super::responses::{
    add_retry_after, is_grpc, missing_key, no_peer_address, to_grpc, too_many, Denial,
};
use super::verdicts;
use super::{Backend, Config, Key, MissingKey, RequestInfo, ResponseBody, ResponseInfo};
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

    impl<S, B, ReqBody> PinnedDrop for ResponseFuture<S, B, ReqBody>
    where
        S: Service<Request<ReqBody>>,
        B: Backend,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Dropped while its policies were being asked (the client went away, a timeout):
            // what was taken so far goes back, as for a refusal.
            let (false, Some(config)) = (this.run.settled, this.config.as_ref()) else {
                return;
            };
            // A take whose answer was never polled (an in-memory backend takes when asked):
            // poll it once now, and give back a grant.
            if let StateProj::Checking { check, at, .. } = this.state.project() {
                if at.mode == Mode::Take {
                    let mut cx = Context::from_waker(std::task::Waker::noop());
                    if let Poll::Ready(Ok(Ok(d))) = check.poll(&mut cx) {
                        if let Some(e) = this.run.ledger.get_mut(at.at) {
                            if d.is_allowed() && e.took.is_none() {
                                e.took = Some(d);
                            }
                        }
                    }
                }
            }
            give_back(config, &this.run.ledger);
        }
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

/// The call being waited for.
struct Asking {
    /// In `Look`, the policy looked at (its entry not yet made); otherwise the ledger entry.
    at: usize,
    key: Option<Key>,
    cost: u64,
    mode: Mode,
}

/// What a backend call is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Phase one (layers of several policies): a peek at every policy; a refusal by any
    /// refuses the request with nothing taken anywhere.
    Look,
    /// Phase two: the takes, in order; a refusal (a race lost since the look) gives back what
    /// the entries before it took.
    Take,
    /// A peek after a take refused a cost above the capacity: for the headers.
    Describe,
}

/// What one request has from its policies so far.
#[derive(Default)]
pub(super) struct Run {
    pub(super) ledger: Ledger,
    pub(super) refusal: Option<Refusal>,
    /// The layer's shadow mode, read once per request.
    pub(super) shadow: bool,
    /// A gRPC call, answered in gRPC.
    grpc: bool,
    /// The route label, when decisions are observed.
    pub(super) route: Option<Arc<str>>,
    /// The request reached the service or was answered: nothing left to give back on drop.
    settled: bool,
    /// Refusals shadow mode turned into passes (policy, why): counted when the request passes
    /// (a request another policy refuses was not let through).
    pub(super) shadowed: Vec<(usize, &'static str)>,
}

/// One policy's part in a request.
pub(super) struct Entry {
    pub(super) policy: usize,
    pub(super) key: Key,
    pub(super) cost: u64,
    /// The decision the response describes (none in shadow mode without shadow headers).
    pub(super) shown: Option<Decision>,
    /// The grant, when the policy took tokens (given back if another refuses).
    pub(super) took: Option<Decision>,
    /// Not to be taken from (a shadow policy that would refuse, a backend that failed open).
    pub(super) skip: bool,
}

impl Entry {
    /// Policy `policy`'s entry for `key` and `cost`, nothing decided yet.
    pub(super) fn new(policy: usize, key: Key, cost: u64) -> Entry {
        Entry {
            policy,
            key,
            cost,
            shown: None,
            took: None,
            skip: false,
        }
    }
}

/// The entries, the first inline (a layer of one policy allocates nothing).
#[derive(Default)]
pub(super) struct Ledger {
    first: Option<Entry>,
    rest: Vec<Entry>,
}

impl Ledger {
    pub(super) fn push(&mut self, entry: Entry) {
        if self.first.is_none() {
            self.first = Some(entry);
        } else {
            self.rest.push(entry);
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.first.iter().chain(self.rest.iter())
    }

    pub(super) fn get_mut(&mut self, i: usize) -> Option<&mut Entry> {
        match i {
            0 => self.first.as_mut(),
            _ => self.rest.get_mut(i - 1),
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }
}

/// Why the request will not reach the service.
pub(super) enum Refusal {
    /// A quota denial by `policy`, or its cost above the capacity (`wait: None`).
    Denied {
        policy: usize,
        decision: Option<Decision>,
        wait: Option<Duration>,
    },
    /// An answer already made (no key, no peer address, the backend failed closed): it stands
    /// over any quota denial, and the policies after it are not asked.
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
            run: Run {
                settled: true,
                ..Run::default()
            },
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

/// Finds the policies that apply from policy `from` on and their keys; in a layer of several
/// policies, looks at each (phase one), otherwise takes at once. Returns the state that waits
/// for the next backend answer or, when there is none, the next phase.
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
    let look = config.policies.len() > 1;
    for (i, p) in config.policies.iter().enumerate().skip(from) {
        if !p.applies(&info) {
            continue;
        }
        let shadow = run.shadow || p.in_shadow();
        let key = match p.key.extract(&info) {
            Some(key) => key,
            None if p.key.lacks_peer(&info) => {
                let response = no_peer_address(&config.no_peer_logged);
                config.observe(i, verdicts::no_key(shadow), None, run.route.as_ref());
                if shadow {
                    // Logged as a set-up error all the same; nothing refused.
                    run.shadowed.push((i, "no peer address"));
                    continue;
                }
                run.refusal = Some(Refusal::Answer(response));
                break;
            }
            None => match &p.missing {
                MissingKey::Reject(status) => {
                    config.observe(i, verdicts::no_key(shadow), None, run.route.as_ref());
                    if shadow {
                        run.shadowed.push((i, "no key"));
                        continue;
                    }
                    run.refusal = Some(Refusal::Answer(missing_key(*status, &p.key)));
                    break;
                }
                MissingKey::Fallback(key) => key.share(),
            },
        };
        let cost = p.cost(&info);
        if !look {
            // One policy: nothing to give back, so no look first.
            run.ledger.push(Entry::new(i, key, cost));
            break;
        }
        return State::Checking {
            check: p.backend.peek(&key, cost),
            req: Some(req),
            inner: Some(inner),
            at: Asking {
                at: i,
                key: Some(key),
                cost,
                mode: Mode::Look,
            },
        };
    }
    if run.refusal.is_some() {
        return finish(config, run, req, inner);
    }
    take(config, run, req, inner, 0)
}

/// Phase two: takes from the ledger's entries from entry `from` on; the call once all granted.
fn take<S, B, ReqBody>(
    config: &Arc<Config<B>>,
    run: &mut Run,
    req: Request<ReqBody>,
    inner: S,
    from: usize,
) -> State<S, B, ReqBody>
where
    S: Service<Request<ReqBody>>,
    B: Backend,
{
    for e in from..run.ledger.len() {
        let Some(entry) = run.ledger.get_mut(e) else {
            break;
        };
        if entry.skip {
            continue;
        }
        return State::Checking {
            check: config.policies[entry.policy]
                .backend
                .acquire(&entry.key, entry.cost),
            req: Some(req),
            inner: Some(inner),
            at: Asking {
                at: e,
                key: None,
                cost: entry.cost,
                mode: Mode::Take,
            },
        };
    }
    finish(config, run, req, inner)
}

/// Gives back what the ledger's entries took (an undo each).
pub(super) fn give_back<B: Backend>(config: &Config<B>, ledger: &Ledger) {
    for e in ledger.iter() {
        if let Some(took) = &e.took {
            config.policies[e.policy].backend.undo(&e.key, e.cost, took);
        }
    }
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
    run.settled = true;
    let Some(refusal) = run.refusal.take() else {
        for (i, why) in run.shadowed.drain(..) {
            config.let_through(i, why);
        }
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
                    let (Some(req), Some(inner)) = (req.take(), inner.take()) else {
                        unreachable!("taken once")
                    };
                    let run = &mut *this.run;
                    let next = match at.mode {
                        Mode::Look => {
                            let key = at.key.take().expect("a look holds its key");
                            verdicts::looked(config, run, at.at, key, at.cost, verdict);
                            if matches!(run.refusal, Some(Refusal::Answer(_))) {
                                finish(config, run, req, inner)
                            } else {
                                ask(config, run, req, inner, at.at + 1)
                            }
                        }
                        Mode::Take => match verdicts::taken(config, run, at.at, verdict) {
                            // A cost above the capacity: look for the headers, then refuse.
                            Some(entry) => State::Checking {
                                check: config.policies[entry.0].backend.peek(&entry.1, 0),
                                req: Some(req),
                                inner: Some(inner),
                                at: Asking {
                                    at: at.at,
                                    key: None,
                                    cost: at.cost,
                                    mode: Mode::Describe,
                                },
                            },
                            None if run.refusal.is_some() => finish(config, run, req, inner),
                            None => take(config, run, req, inner, at.at + 1),
                        },
                        Mode::Describe => {
                            verdicts::described(config, run, at.at, verdict);
                            finish(config, run, req, inner)
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
                    let on_end =
                        charge.and_then(|c| verdicts::charged(config, &mut this.run.ledger, c));
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
