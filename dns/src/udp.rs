//! The UDP hot path: one OS thread per socket reads up to 64 datagrams
//! with one `recvmmsg`, answers them from one snapshot, and writes the
//! answers with one `sendmmsg`. Queries to forward go to the async side
//! through a bounded channel; when it is full they get SERVFAIL at once.

use crate::Shared;
use crate::answer::{self, Forward, Outcome, Transport, Writer};
use crate::wire::{self, rcode};
use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrLike, SockaddrStorage, recvmmsg, sendmmsg,
};
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;

/// Datagrams per system call.
pub(crate) const BATCH: usize = 64;
/// Receive buffer per datagram: larger queries are malformed anyway.
const BUF: usize = 4096;

/// A query for the forwarder, with where to send its answer.
pub(crate) struct Job {
    pub(crate) req: Vec<u8>,
    pub(crate) peer: SocketAddr,
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) fwd: Forward,
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// Serves `socket` until `stop` is set. The socket must be blocking with a
/// read timeout, so that `stop` is noticed.
pub(crate) fn serve(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    jobs: mpsc::Sender<Job>,
) {
    let fd = socket.as_raw_fd();
    let Ok(mut bufs): Result<Box<[[u8; BUF]; BATCH]>, _> =
        vec![[0u8; BUF]; BATCH].into_boxed_slice().try_into()
    else {
        return;
    };
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(512)).collect();
    let mut dsts: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
    let mut lens = [0usize; BATCH];
    let mut srcs: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let metrics = &shared.metrics;

    while !stop.load(Ordering::Relaxed) {
        let n = {
            let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
                bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
            match recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => {
                    let mut n = 0;
                    for r in results {
                        lens[n] = r.bytes;
                        srcs[n] = r.address;
                        n += 1;
                    }
                    n
                }
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "dns: udp receive failed");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            }
        };
        let started = Instant::now();
        let mut replies = 0;
        {
            let snap = shared.snapshot.load();
            for i in 0..n {
                let Some(src) = srcs[i].filter(|s| s.family().is_some()) else {
                    continue;
                };
                let req = &bufs[i][..lens[i]];
                let out = &mut outs[replies];
                match answer::answer(
                    &snap,
                    shared.cache.as_deref(),
                    metrics,
                    req,
                    Transport::Udp,
                    shared.max_udp,
                    out,
                ) {
                    Outcome::Reply => {
                        dsts[replies] = Some(src);
                        replies += 1;
                    }
                    Outcome::Drop => {}
                    Outcome::Forward(fwd) => {
                        let Some(peer) = to_std(&src) else { continue };
                        let job = Job {
                            req: req.to_vec(),
                            peer,
                            socket: socket.clone(),
                            fwd,
                        };
                        if jobs.try_send(job).is_err() {
                            metrics.forward_rejected();
                            servfail(req, shared.max_udp, out);
                            metrics.query(0, rcode::SERVFAIL);
                            dsts[replies] = Some(src);
                            replies += 1;
                        }
                    }
                }
            }
        }
        send_all(fd, &mut send_headers, &outs[..replies], &dsts[..replies]);
        if n > 0 {
            metrics.observe_latency(started.elapsed(), n as u64);
        }
    }
}

fn servfail(req: &[u8], max_udp: u16, out: &mut Vec<u8>) {
    match answer::parse(req, Transport::Udp, max_udp, out) {
        Ok(p) => Writer::start(out, req, &p).finish(rcode::SERVFAIL, false),
        Err(_) => wire::error_only(req, rcode::SERVFAIL, out),
    }
}

fn send_all(
    fd: i32,
    headers: &mut MultiHeaders<SockaddrStorage>,
    outs: &[Vec<u8>],
    dsts: &[Option<SockaddrStorage>],
) {
    let slices: [[IoSlice<'_>; 1]; BATCH] =
        std::array::from_fn(|i| [IoSlice::new(outs.get(i).map_or(&[][..], |o| &o[..]))]);
    let n = outs.len().min(BATCH);
    let none: [ControlMessage<'_>; 0] = [];
    let mut off = 0;
    while off < n {
        match sendmmsg(
            fd,
            headers,
            slices[off..n].iter(),
            &dsts[off..n],
            none,
            MsgFlags::empty(),
        ) {
            Ok(results) => {
                let sent = results.count();
                if sent == 0 {
                    break;
                }
                off += sent;
            }
            Err(Errno::EINTR) => {}
            // The first datagram failed (an unreachable client): skip it.
            Err(_) => off += 1,
        }
    }
}
