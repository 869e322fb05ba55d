//! The layer's response body.

// pin-project-lite generates undocumented projection types.
#![allow(missing_docs)]

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::charge::OnEnd;

pin_project! {
    /// The response body: the inner service's, or the layer's own problem body.
    #[project = BodyProj]
    #[non_exhaustive]
    pub enum ResponseBody<B> {
        /// The inner service's body.
        Inner {
            #[pin]
            body: B,
            // Work for the end of the body (a charge by bytes, an in-flight slot): run when the
            // body ends, or when it is dropped before (the client went away).
            on_end: Option<Box<OnEnd>>,
        },
        /// A body the layer wrote (429, 401, 503).
        Full {
            data: Option<Bytes>,
        },
    }
}

impl<B> ResponseBody<B> {
    /// The inner service's body, unchanged.
    pub(crate) fn inner(body: B) -> Self {
        ResponseBody::Inner { body, on_end: None }
    }

    /// The inner service's body, with work for its end.
    pub(crate) fn inner_then(body: B, on_end: Option<Box<OnEnd>>) -> Self {
        ResponseBody::Inner { body, on_end }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBody::Inner { body, on_end } => f
                .debug_struct("Inner")
                .field("body", body)
                .field("on_end", on_end)
                .finish(),
            ResponseBody::Full { data } => f.debug_struct("Full").field("data", data).finish(),
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<Bytes>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project() {
            BodyProj::Inner { body, on_end } => {
                let frame = std::task::ready!(body.poll_frame(cx));
                if let Some(end) = on_end {
                    match &frame {
                        Some(Ok(f)) => {
                            if let Some(data) = f.data_ref() {
                                end.sent(data.remaining());
                            }
                        }
                        // The end, or an error (nothing follows).
                        _ => end.finish(),
                    }
                }
                Poll::Ready(frame)
            }
            BodyProj::Full { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(B::Data::from(d)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Inner { body, .. } => body.is_end_stream(),
            ResponseBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Inner { body, .. } => body.size_hint(),
            ResponseBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
