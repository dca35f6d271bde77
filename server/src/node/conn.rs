//! One connection: read a request head, route it, answer it, repeat while keep-alive allows.
//!
//! Per request (data path steps 2-6 of the node docs):
//! 1. Skip the body of the previous request, if it had one (GET/HEAD bodies are ignored).
//! 2. Read until the buffer holds a whole head (a line ending in an empty line), or a limit says 414/431.
//!    The read waits at most `header_timeout_ms` (408 if part of a head arrived), or `keepalive_timeout_ms`
//!    between requests (then close quietly; once shutdown starts, at most [`DRAIN_IDLE_GRACE_MS`] more).
//! 3. Parse, normalise the path, route (hand off if another shard owns the target), classify (move to the
//!    request's container), answer, write with one `writev` per response (`write_timeout_ms` per write call);
//!    a cached body of at least 64 KiB follows its head with `vmsplice` + `splice` instead (see `splice`).
//! 4. Keep the connection if the request allows it, `keepalive_requests_max` is not reached, the status does
//!    not close it and the node is not shutting down.
//!
//! Buffers: the read buffer starts at 4 KiB and grows to `header_bytes_max` + 1 at most; the response buffers
//! are reused across requests, so a warm keep-alive connection allocates nothing per request.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use larder_lard::{ServerId, TargetId};
use larder_runtime::Handoff;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::access_log::LogEntry;
use super::iov::ResponseBufs;
use super::pace::Pacer;
use super::respond::{self, Answer, Request};
use super::shard::{place, race, Shard};
use super::splice::{self, SendError, SplicePipe};
use super::stats::ShardCounters;
use super::ShardMessage;
use crate::cache::{FileStream, MappedSlice};
use crate::http::path::{normalise, PathError};
use crate::http::range::ByteRange;
use crate::http::request::REQUEST_LINE_SLACK_BYTES;
use crate::http::response::unix_secs;
use crate::http::{parse_request, Method, RequestError, Status};

/// How long an idle keep-alive connection may still send its next request once shutdown has begun (shutdown
/// step 2). A client that sent it as the drain began (a load balancer's pool, a closed-loop client between two
/// requests) gets its answer, with `Connection: close`, instead of a reset; a client idle for the whole grace is
/// closed as the keep-alive timer would close it. 1 s keeps a node with idle clients within its 5 s drain.
pub const DRAIN_IDLE_GRACE_MS: u64 = 1000;

/// Initial read buffer; it grows to `header_bytes_max` + 1 for larger heads.
pub const READ_BUFFER_BYTES_INITIAL: usize = 4096;

/// The state of one client connection; moves between tasks (containers) and shards (handoff).
pub(crate) struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    read: Vec<u8>,
    /// Bytes of `read` already consumed.
    start: usize,
    out: ResponseBufs,
    path: Vec<u8>,
    fs_path: Vec<u8>,
    ranges: Vec<ByteRange>,
    /// Opened on the first spliced response, closed with the connection (see `splice`).
    pipe: Option<SplicePipe>,
    requests: u32,
    /// Body bytes of the previous request still to skip.
    discard: u64,
    /// The next request was already routed here (and counted by the policy) by the shard that handed it off.
    routed: Option<TargetId>,
    /// Index of the container this connection's task runs in.
    pub container: usize,
    /// When the current request's head was whole in `read` (the start of its latency; see `stats`).
    head_at: std::time::Instant,
}

enum ReadEnd {
    /// EOF, a read error, or shutdown while idle: close quietly.
    Closed,
    /// Part of a head arrived, then nothing for `header_timeout_ms`: 408.
    HeaderTimeout,
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        mut already_read: Vec<u8>,
        routed: Option<TargetId>,
        container: usize,
    ) -> Conn {
        if already_read.capacity() < READ_BUFFER_BYTES_INITIAL {
            already_read.reserve(READ_BUFFER_BYTES_INITIAL - already_read.len());
        }
        Conn {
            stream,
            peer,
            read: already_read,
            start: 0,
            out: ResponseBufs::new(),
            path: Vec::with_capacity(256),
            fs_path: Vec::with_capacity(512),
            ranges: Vec::new(),
            pipe: None,
            requests: 0,
            discard: 0,
            routed,
            container,
            head_at: std::time::Instant::now(),
        }
    }
}

struct ActiveConnection(Rc<Shard>);

impl ActiveConnection {
    fn new(shard: &Rc<Shard>) -> Self {
        ShardCounters::add(&shard.counters.connections_active, 1);
        ActiveConnection(Rc::clone(shard))
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        ShardCounters::sub(&self.0.counters.connections_active, 1);
    }
}

/// What happens to a connection after one request.
enum Step {
    /// Read the next request.
    Next(Conn),
    /// Close it.
    Close(Conn),
    /// It moved to another shard or container.
    Moved,
}

/// Serves requests until the connection closes, moves to another shard or moves to another container.
pub(crate) async fn serve(shard: Rc<Shard>, conn: Conn) {
    let _active = ActiveConnection::new(&shard);
    let mut conn = conn;
    loop {
        match serve_one(&shard, conn).await {
            Step::Next(next) => conn = next,
            Step::Close(last) => return close(last),
            Step::Moved => return,
        }
    }
}

/// Ends a connection at once: `shutdown(2)` sends the FIN (and ends a read still in flight) now, whatever
/// the driver does with the descriptor afterwards — with io_uring the `close` is itself an asynchronous
/// operation that a shard leaving its runtime might never submit.
fn close(conn: Conn) {
    use std::os::fd::AsRawFd;
    // SAFETY: shutdown(2) on the socket this connection owns; no memory is passed.
    unsafe { libc::shutdown(conn.stream.as_raw_fd(), libc::SHUT_RDWR) };
    drop(conn);
}

/// Answers a connection whose container is over its limit: read its request head, send 503 + Retry-After, close.
pub(crate) async fn reject_over_limit(shard: Rc<Shard>, mut conn: Conn) {
    if let Some(target) = conn.routed.take() {
        // Routed here and counted by the policy, but never served: uncount it.
        finish_policy(&shard, ServerId(shard.index), target);
    }
    if read_head(&shard, &mut conn).await.is_err() {
        return;
    }
    conn.out.clear();
    respond::simple(
        &shard,
        &mut conn.out,
        Status::ServiceUnavailable,
        b"Retry-After: 1\r\n",
        false,
        true,
    );
    let _ = write_out(&shard, &mut conn.stream, &mut conn.out).await;
    close(conn);
}

/// One request.
async fn serve_one(shard: &Rc<Shard>, mut conn: Conn) -> Step {
    let read = read_head(shard, &mut conn).await;
    conn.head_at = std::time::Instant::now();
    match read {
        Ok(()) => {}
        Err(ReadEnd::Closed) => return Step::Close(conn),
        Err(ReadEnd::HeaderTimeout) => {
            ShardCounters::add(&shard.counters.header_timeouts, 1);
            conn.out.clear();
            let answer = respond::simple(
                shard,
                &mut conn.out,
                Status::RequestTimeout,
                b"",
                false,
                true,
            );
            finish_simple(shard, &mut conn, answer).await;
            return Step::Close(conn);
        }
    }
    // The settings this request is served under, even if a reload replaces them meanwhile.
    let live = shard.live();
    let head = match parse_request(&conn.read[conn.start..], &live.limits) {
        Ok(Some(head)) => head,
        Ok(None) => {
            let error = RequestError::BadRequest("malformed head");
            return reject_request(shard, conn, error.status()).await;
        }
        Err(error) => return reject_request(shard, conn, error.status()).await,
    };
    conn.requests += 1;
    conn.out.clear();
    let config = &live.config;
    let keep_alive = head.keep_alive
        && conn.requests < config.keepalive_requests_max
        && !shard.context.is_shutting_down();

    let normalised = if head.method == Method::Other {
        None
    } else {
        Some(normalise(head.path, config.allow_dotfiles, &mut conn.path))
    };
    let normalised = match normalised {
        None => {
            // 405; a body we would have to skip closes the connection instead.
            let keep = keep_alive && head.content_length == 0;
            let answer = respond::simple(
                shard,
                &mut conn.out,
                Status::MethodNotAllowed,
                b"Allow: GET, HEAD\r\n",
                keep,
                true,
            );
            return finish(shard, conn, answer).await;
        }
        Some(Err(error)) => {
            let status = match error {
                PathError::BadRequest(_) => Status::BadRequest,
                PathError::Hidden => Status::NotFound,
            };
            let send_body = head.method == Method::Get;
            let answer = respond::simple(shard, &mut conn.out, status, b"", keep_alive, send_body);
            return finish(shard, conn, answer).await;
        }
        Some(Ok(normalised)) => normalised,
    };

    // Distributed mode: a target another node owns is forwarded there (`crate::cluster::forward`).
    if let Some(cluster) = shard.cluster.as_ref().filter(|_| conn.routed.is_none()) {
        let request = &conn.read[conn.start..conn.start + head.head_bytes];
        let relayed = cluster.forward(&conn.path, &head, request, keep_alive, &mut conn.stream);
        if let Some(keep) = relayed.await {
            conn.start += head.head_bytes;
            return next_step(conn, keep && keep_alive);
        }
    }
    // Route (data path step 3).
    let here = ServerId(shard.index);
    let mut routed_target = None;
    if let Some(policy) = &shard.node.policy {
        // Non-UTF-8 paths hash their lossy form (collisions only cost locality, never correctness).
        let target = TargetId::from_path(&String::from_utf8_lossy(&conn.path));
        routed_target = Some(target);
        if conn.routed.take().is_none() {
            let owner = match policy.lock() {
                Ok(mut policy) => {
                    let owner = policy
                        .select(target, shard.now_ms(), shard.next_random())
                        .map_or(here, |decision| decision.server);
                    let owner = if shard.context.is_shutting_down() {
                        here
                    } else {
                        owner
                    };
                    policy.on_start(owner, target, shard.now_ms());
                    owner
                }
                Err(_) => here,
            };
            if owner != here {
                return hand_off(shard, conn, owner, target).await;
            }
        }
    }

    // Classify (data path step 4).
    let container = config.classify(head.host, &conn.path, conn.peer.ip());
    if container != conn.container {
        conn.container = container;
        conn.routed = routed_target;
        place(shard, conn);
        return Step::Moved;
    }

    ShardCounters::add(&shard.counters.requests_active, 1);
    let request = Request {
        head: &head,
        path: &conn.path,
        trailing_slash: normalised.trailing_slash,
        query: normalised.query,
        keep_alive,
    };
    let answer = respond::respond(
        shard,
        &request,
        &mut conn.fs_path,
        &mut conn.out,
        &mut conn.ranges,
    );
    let head_bytes = head.head_bytes;
    let content_length = head.content_length;
    let status = answer.status;
    let body_bytes = answer.body_bytes;
    let keep = answer.keep_alive;
    let send_rate = shard
        .context
        .containers()
        .send_rate(live.container_id(conn.container));
    let sent = if send_rate > 0 {
        // Boxed: the paced path's state (pacer, segment list, file stream) would otherwise enlarge every
        // request's future, which is built per request (measured: 3-4% of 4 KiB req/s on epoll).
        Box::pin(write_paced_answer(
            shard,
            &mut conn.stream,
            &mut conn.out,
            answer,
            send_rate,
        ))
        .await
    } else {
        write_answer(
            shard,
            &mut conn.stream,
            &mut conn.out,
            &mut conn.pipe,
            answer,
        )
        .await
    };
    ShardCounters::sub(&shard.counters.requests_active, 1);
    if let (Some(policy), Some(target)) = (&shard.node.policy, routed_target) {
        if let Ok(mut policy) = policy.lock() {
            policy.on_finish(here, target, shard.now_ms());
        }
    }
    record(
        shard,
        &conn,
        Some(&head),
        status,
        body_bytes,
        sent.as_ref().ok().copied(),
    );
    conn.start += head_bytes;
    conn.discard = content_length;
    next_step(conn, sent.is_ok() && keep)
}

fn next_step(conn: Conn, keep: bool) -> Step {
    if keep {
        Step::Next(conn)
    } else {
        Step::Close(conn)
    }
}

/// A bad request: its status, then close.
async fn reject_request(shard: &Rc<Shard>, mut conn: Conn, status: Status) -> Step {
    conn.out.clear();
    let answer = respond::simple(shard, &mut conn.out, status, b"", false, true);
    finish_simple(shard, &mut conn, answer).await;
    Step::Close(conn)
}

async fn finish_simple(shard: &Rc<Shard>, conn: &mut Conn, answer: Answer) {
    let sent = write_out(shard, &mut conn.stream, &mut conn.out).await;
    record(
        shard,
        conn,
        None,
        answer.status,
        answer.body_bytes,
        sent.ok(),
    );
}

/// Writes a short answer for a parsed request and consumes its head.
/// (Error paths only: the head is parsed again after the write, since `conn` moved in here.)
async fn finish(shard: &Rc<Shard>, mut conn: Conn, answer: Answer) -> Step {
    let limits = shard.live().limits;
    let (head_bytes, content_length) = match parse_request(&conn.read[conn.start..], &limits) {
        Ok(Some(head)) => (head.head_bytes, head.content_length),
        _ => (conn.read.len() - conn.start, 0),
    };
    let sent = write_out(shard, &mut conn.stream, &mut conn.out).await;
    {
        let head = parse_request(&conn.read[conn.start..], &limits)
            .ok()
            .flatten();
        record(
            shard,
            &conn,
            head.as_ref(),
            answer.status,
            answer.body_bytes,
            sent.as_ref().ok().copied(),
        );
    }
    conn.start += head_bytes;
    conn.discard = content_length;
    next_step(conn, sent.is_ok() && answer.keep_alive)
}

fn record(
    shard: &Shard,
    conn: &Conn,
    head: Option<&crate::http::RequestHead<'_>>,
    status: Status,
    body_bytes: u64,
    sent: Option<u64>,
) {
    let counters = &shard.counters;
    super::hot::record(shard, head.is_some(), status, &conn.path);
    let latency_us = conn.head_at.elapsed().as_micros() as u64;
    counters.record_response(status.code(), latency_us, conn.container);
    if let Some(sent) = sent {
        ShardCounters::add(&counters.bytes_sent, sent);
    }
    if let Some(log) = shard.log.borrow_mut().as_mut() {
        log.record(&LogEntry {
            client: conn.peer.ip(),
            unix_secs: unix_secs(std::time::SystemTime::now()),
            head,
            status: status.code(),
            body_bytes,
        });
    }
}

/// Handoff protocol steps 1-3: detach the connection and send it, with its unparsed bytes, to `owner`.
async fn hand_off(shard: &Rc<Shard>, conn: Conn, owner: ServerId, target: TargetId) -> Step {
    let Conn {
        stream,
        peer,
        mut read,
        start,
        container,
        ..
    } = conn;
    read.drain(..start);
    let handoff = match Handoff::from_monoio(stream, read, peer) {
        Ok(handoff) => handoff,
        Err(error) => {
            // The std stream inside was dropped (closed synchronously) by the refusal.
            tracing::warn!(shard = shard.index, %error, "handoff refused");
            finish_policy(shard, owner, target);
            return Step::Moved;
        }
    };
    let message = ShardMessage::Handoff {
        handoff,
        target,
        container,
    };
    match shard
        .context
        .mesh()
        .try_send(larder_runtime::ShardId(owner.0), message)
    {
        Ok(()) => {
            ShardCounters::add(&shard.counters.handoffs_out, 1);
            Step::Moved
        }
        Err(refused) => {
            // The owner's queue is full: serve here rather than wait (counted; the policy is corrected).
            ShardCounters::add(&shard.counters.handoffs_refused, 1);
            finish_policy(shard, owner, target);
            let ShardMessage::Handoff { handoff, .. } = refused.message else {
                unreachable!("a refused send returns the Handoff it was given")
            };
            let Ok((stream, read, peer)) = shard.context.adopt(handoff) else {
                return Step::Moved;
            };
            if let Some(policy) = &shard.node.policy {
                if let Ok(mut policy) = policy.lock() {
                    policy.on_start(ServerId(shard.index), target, shard.now_ms());
                }
            }
            let container = shard.live().config.classify(None, b"", peer.ip());
            Step::Next(Conn::new(stream, peer, read, Some(target), container))
        }
    }
}

fn finish_policy(shard: &Shard, server: ServerId, target: TargetId) {
    if let Some(policy) = &shard.node.policy {
        if let Ok(mut policy) = policy.lock() {
            policy.on_finish(server, target, shard.now_ms());
        }
    }
}

/// Request steps 1-2: skip the previous body, then read until a whole head (or a limit) is in the buffer.
async fn read_head(shard: &Shard, conn: &mut Conn) -> Result<(), ReadEnd> {
    loop {
        if conn.discard > 0 {
            let available = (conn.read.len() - conn.start) as u64;
            let skipped = available.min(conn.discard);
            conn.start += skipped as usize;
            conn.discard -= skipped;
            if conn.discard > 0 {
                conn.read.clear();
                conn.start = 0;
                read_more(shard, conn).await?;
                continue;
            }
        }
        // RFC 9112 §2.2: ignore empty lines before a request line.
        while conn.start < conn.read.len() && matches!(conn.read[conn.start], b'\r' | b'\n') {
            conn.start += 1;
        }
        if !needs_more(&conn.read[conn.start..], shard) {
            return Ok(());
        }
        read_more(shard, conn).await?;
    }
}

/// True while the bytes hold no complete head and no limit is exceeded yet.
fn needs_more(bytes: &[u8], shard: &Shard) -> bool {
    let limits = shard.live().limits;
    if bytes.len() > limits.header_bytes_max {
        return false;
    }
    let mut line_seen = false;
    for (index, &byte) in bytes.iter().enumerate() {
        if byte != b'\n' {
            continue;
        }
        if !line_seen && index > limits.uri_bytes_max + REQUEST_LINE_SLACK_BYTES {
            return false;
        }
        line_seen = true;
        match bytes.get(index + 1) {
            Some(b'\n') => return false,
            Some(b'\r') if bytes.get(index + 2) == Some(&b'\n') => return false,
            _ => {}
        }
    }
    line_seen || bytes.len() <= limits.uri_bytes_max + REQUEST_LINE_SLACK_BYTES
}

async fn read_more(shard: &Shard, conn: &mut Conn) -> Result<(), ReadEnd> {
    if conn.start > 0 {
        conn.read.drain(..conn.start);
        conn.start = 0;
    }
    if conn.read.len() == conn.read.capacity() {
        let grown = (conn.read.capacity() * 2).clamp(
            READ_BUFFER_BYTES_INITIAL,
            shard.live().limits.header_bytes_max + 1,
        );
        if grown <= conn.read.len() {
            return Err(ReadEnd::Closed);
        }
        conn.read.reserve_exact(grown - conn.read.len());
    }
    let idle = conn.read.is_empty() && conn.requests > 0;
    let live = shard.live();
    let config = &live.config;
    let timeout_ms = match (idle, shard.context.is_shutting_down()) {
        // Shutdown step 2: an idle keep-alive connection gets the drain grace for its next request.
        (true, true) => config.keepalive_timeout_ms.min(DRAIN_IDLE_GRACE_MS),
        (true, false) => config.keepalive_timeout_ms,
        (false, _) => config.header_timeout_ms,
    };
    let buffer = std::mem::take(&mut conn.read);
    let filled = buffer.len();
    let stream = &mut conn.stream;
    let read = async { Some(stream.read(buffer.slice_mut(filled..)).await) };
    let shutdown = async {
        if idle {
            // The read stays in flight through the grace: a request arriving now is served, not dropped with
            // a cancelled read.
            shard.context.shutdown_requested().await;
            let _ = shard
                .context
                .timers()
                .sleep(Duration::from_millis(DRAIN_IDLE_GRACE_MS))
                .await;
        } else {
            std::future::pending::<()>().await;
        }
        None
    };
    let outcome = shard
        .context
        .timers()
        .timeout(Duration::from_millis(timeout_ms), race(read, shutdown))
        .await;
    match outcome {
        Ok(Some((Ok(read_bytes), buffer))) if read_bytes > 0 => {
            conn.read = buffer.into_inner();
            Ok(())
        }
        Ok(_) => Err(ReadEnd::Closed),
        Err(_) if idle || filled == 0 => Err(ReadEnd::Closed),
        Err(_) => Err(ReadEnd::HeaderTimeout),
    }
}

/// Writes the sealed response buffers (one `writev` per call, each bounded by `write_timeout_ms`).
async fn write_out(
    shard: &Shard,
    stream: &mut TcpStream,
    out: &mut ResponseBufs,
) -> Result<u64, ()> {
    out.seal();
    let total = out.bytes_total() as u64;
    let timeout = Duration::from_millis(shard.live().config.write_timeout_ms);
    let mut buffers = std::mem::take(out);
    loop {
        let written = shard
            .context
            .timers()
            .timeout(timeout, stream.writev(buffers))
            .await;
        match written {
            Ok((Ok(bytes), returned)) if bytes > 0 => {
                buffers = returned;
                if buffers.advance(bytes) {
                    break;
                }
            }
            Ok((_, returned)) => {
                *out = returned;
                return Err(());
            }
            Err(_) => return Err(()),
        }
    }
    *out = buffers;
    Ok(total)
}

/// Writes one answer: the head (and a small body) from `conn.out`, then a streamed or spliced body.
/// A spliced body needs the connection's pipe; without one (budget spent) it joins the head's `writev`.
async fn write_answer(
    shard: &Shard,
    stream: &mut TcpStream,
    out: &mut ResponseBufs,
    pipe: &mut Option<SplicePipe>,
    answer: Answer,
) -> Result<u64, ()> {
    let spliced = match answer.spliced {
        Some(body) if has_pipe(shard, pipe) => Some(body),
        Some(body) => {
            out.push_body(body.into_bytes());
            None
        }
        None => None,
    };
    let head = write_out(shard, stream, out).await?;
    let body = match (answer.stream, spliced) {
        (Some(file), _) => write_stream(shard, stream, file).await?,
        (None, Some(body)) => write_spliced(shard, stream, out, pipe, body).await?,
        (None, None) => 0,
    };
    Ok(head + body)
}

/// Writes one answer paced to `rate_bytes_per_second` (the container's `send_rate_bytes_per_second`; see
/// `pace`): head and body in chunks, each leaving at its time on the shard's timer wheel. No splice: a paced body
/// is sent from the cache's buffer (or the file's chunks) in slices.
async fn write_paced_answer(
    shard: &Shard,
    stream: &mut TcpStream,
    out: &mut ResponseBufs,
    answer: Answer,
    rate_bytes_per_second: u64,
) -> Result<u64, ()> {
    let mut pacer = Pacer::new(rate_bytes_per_second, shard.context.timers().now_ns());
    if let Some(body) = answer.spliced {
        out.push_body(body.into_bytes());
    }
    out.seal();
    let mut sent = 0;
    for segment in out.segment_bytes() {
        sent += write_paced(shard, stream, &mut pacer, segment).await?;
    }
    if let Some(mut file) = answer.stream {
        loop {
            match file.next_chunk() {
                Ok(Some(chunk)) => {
                    sent += write_paced(shard, stream, &mut pacer, Bytes::from(chunk)).await?
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(shard = shard.index, %error, "streaming a file failed");
                    return Err(());
                }
            }
        }
    }
    Ok(sent)
}

/// Sends `data` in the pacer's chunks, each when it is due (`write_timeout_ms` per write).
async fn write_paced(
    shard: &Shard,
    stream: &mut TcpStream,
    pacer: &mut Pacer,
    data: Bytes,
) -> Result<u64, ()> {
    let timers = shard.context.timers();
    let timeout = Duration::from_millis(shard.live().config.write_timeout_ms);
    let mut offset = 0;
    while offset < data.len() {
        let due_ns = pacer.due_ns();
        if due_ns > timers.now_ns() && timers.sleep_until_ns(due_ns).await.is_err() {
            return Err(()); // the wheel is full: end the connection rather than send unpaced
        }
        let end = (offset + pacer.chunk_bytes()).min(data.len());
        match timers
            .timeout(timeout, stream.write_all(data.slice(offset..end)))
            .await
        {
            Ok((Ok(_), _)) => {
                pacer.sent(end - offset);
                offset = end;
            }
            _ => return Err(()),
        }
    }
    Ok(data.len() as u64)
}

/// Opens the connection's pipe if it has none and the shard's budget allows; false means "use writev".
fn has_pipe(shard: &Shard, pipe: &mut Option<SplicePipe>) -> bool {
    if pipe.is_none() {
        match SplicePipe::open(&shard.splice_pipes) {
            Ok(opened) => *pipe = Some(opened),
            Err(error) => {
                tracing::debug!(shard = shard.index, %error, "no splice pipe; body goes out with writev");
                return false;
            }
        }
    }
    true
}

/// Sends a mapped body through the connection's pipe; falls back to `writev` if the kernel refuses splicing.
async fn write_spliced(
    shard: &Shard,
    stream: &mut TcpStream,
    out: &mut ResponseBufs,
    pipe: &mut Option<SplicePipe>,
    body: MappedSlice,
) -> Result<u64, ()> {
    let opened = pipe.as_ref().expect("write_answer opened the pipe");
    match splice::send(shard, stream, opened, &body).await {
        Ok(sent) => Ok(sent),
        Err(SendError::Failed) => Err(()),
        Err(SendError::Unsupported(error)) => {
            // Nothing of the body was sent; the pipe may hold references: drop it, and never splice here again.
            *pipe = None;
            splice::disable(&shard.splice_pipes, &error);
            out.clear();
            out.push_body(body.into_bytes());
            write_out(shard, stream, out).await
        }
    }
}

/// Streams a large file's range in bounded chunks after its head.
async fn write_stream(
    shard: &Shard,
    stream: &mut TcpStream,
    mut file: FileStream,
) -> Result<u64, ()> {
    let timeout = Duration::from_millis(shard.live().config.write_timeout_ms);
    let mut sent = 0u64;
    loop {
        let chunk = match file.next_chunk() {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(sent),
            Err(error) => {
                tracing::warn!(shard = shard.index, %error, "streaming a file failed");
                return Err(());
            }
        };
        let len = chunk.len() as u64;
        match shard
            .context
            .timers()
            .timeout(timeout, stream.write_all(chunk))
            .await
        {
            Ok((Ok(_), chunk)) => {
                sent += len;
                file.recycle(chunk);
            }
            _ => return Err(()),
        }
    }
}
