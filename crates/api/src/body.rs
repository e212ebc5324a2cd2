//! Request bodies read within a deadline, as Pyroscope's HTTP server
//! reads requests within `-server.http-server-read-timeout` (30 s): a
//! client that stalls mid-body gets 408 instead of holding its connection
//! and buffer for ever.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use http_body::{Frame, SizeHint};

/// The request body did not arrive within the read timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body was not received within {timeout:?} (-server.http-server-read-timeout)")]
pub struct BodyReadTimeout {
    pub timeout: Duration,
}

impl BodyReadTimeout {
    /// The timeout somewhere in the source chain of `err`, if any.
    pub fn find(err: &(dyn Error + 'static)) -> Option<Self> {
        let mut current = Some(err);
        while let Some(err) = current {
            if let Some(timeout) = err.downcast_ref::<Self>() {
                return Some(*timeout);
            }
            current = err.source();
        }
        None
    }
}

/// `router` with every request body readable for at most `timeout` from
/// when its request arrived.
pub fn with_body_read_timeout(router: Router, timeout: Duration) -> Router {
    router.layer(axum::middleware::map_request(move |request: Request| async move {
        request.map(|body| Body::new(DeadlineBody::new(body, timeout)))
    }))
}

/// A body that fails with [`BodyReadTimeout`] once its deadline passed.
struct DeadlineBody {
    body: Body,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl DeadlineBody {
    fn new(body: Body, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        // Both fields are Unpin (the sleep is boxed), so is Self.
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyReadTimeout { timeout: this.timeout }))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http_body_util::BodyExt;

    use super::*;

    /// Sends one chunk, then nothing.
    struct Stalled {
        sent: bool,
    }

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.sent {
                return Poll::Pending;
            }
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"abc")))))
        }
    }

    #[tokio::test]
    async fn test_a_stalled_body_fails_with_the_timeout_and_a_whole_one_is_read() {
        let timeout = Duration::from_millis(200);
        let stalled = DeadlineBody::new(Body::new(Stalled { sent: false }), timeout);
        let err = Body::new(stalled).collect().await.unwrap_err();
        assert_eq!(BodyReadTimeout::find(&err), Some(BodyReadTimeout { timeout }));
        assert_eq!(
            BodyReadTimeout::find(&err).unwrap().to_string(),
            "the request body was not received within 200ms (-server.http-server-read-timeout)"
        );

        let whole = DeadlineBody::new(Body::from("abcdef"), timeout);
        let bytes = Body::new(whole).collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "abcdef");
    }
}
