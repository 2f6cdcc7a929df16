//! TCP on hickory's `Server`: its listener, framing and timeouts, with our
//! `RequestHandler`, which answers through the same code as UDP and hands
//! the bytes back as a hickory message.

use crate::Shared;
use crate::answer::{self, Outcome, Transport};
use async_trait::async_trait;
use hickory_proto::op::{Header, HeaderCounts, Message, Metadata, ResponseCode};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::sync::Arc;

/// Our handler for hickory's TCP server.
pub(crate) struct TcpHandler {
    pub(crate) shared: Arc<Shared>,
}

#[async_trait]
impl RequestHandler for TcpHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let started = std::time::Instant::now();
        let req = request.as_slice();
        let mut out = Vec::with_capacity(512);
        let outcome = {
            let snap = self.shared.snapshot.load();
            answer::answer(
                &snap,
                self.shared.cache.as_deref(),
                &self.shared.metrics,
                req,
                Transport::Tcp,
                self.shared.max_udp,
                &mut out,
            )
        };
        match outcome {
            Outcome::Reply => {
                self.shared.metrics.observe_latency(started.elapsed(), 1);
            }
            Outcome::Forward(fwd) => {
                out = self
                    .shared
                    .forwarder
                    .respond(req, Transport::Tcp, fwd)
                    .await;
            }
            Outcome::Drop => return failed(request),
        }
        send(request, &out, response_handle).await
    }
}

fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// Sends our encoded response through hickory's response handle.
async fn send<R: ResponseHandler>(request: &Request, out: &[u8], mut handle: R) -> ResponseInfo {
    let Ok(msg) = Message::from_vec(out) else {
        return failed(request);
    };
    let mut builder = MessageResponseBuilder::from_message_request(request);
    if let Some(edns) = &msg.edns {
        builder.edns(edns);
    }
    let response = builder.build(
        msg.metadata,
        msg.answers.iter(),
        msg.authorities.iter(),
        std::iter::empty(),
        msg.additionals.iter(),
    );
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "dns: tcp send failed");
            failed(request)
        }
    }
}
