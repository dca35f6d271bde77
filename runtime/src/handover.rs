//! Binary handover: a running process hands its listening sockets to its successor over a Unix socket, so that a
//! new binary serves on the very same sockets (nothing queued in their accept queues is lost) while the old one
//! drains. Like nginx's binary upgrade or Envoy's hot restart, reduced to one exchange.
//!
//! This module owns the descriptor passing (`SCM_RIGHTS` over a `SOCK_SEQPACKET` Unix socket) and the four
//! messages of the exchange; which sockets are passed, and what the processes do around it, is the caller's
//! (`larder serve`).
//!
//! # The exchange (numbered as the code does it)
//! 1. The running process binds [`HandoverListener`] on a path and waits for a successor
//!    ([`HandoverListener::accept_or_stop`]).
//! 2. The successor connects ([`take_over`]) and sends `TAKE larder-handover/1`.
//! 3. The running process answers with `SOCKETS label…` and one descriptor per label in the same message
//!    ([`OfferSession::send_sockets`]), or `REFUSED reason` ([`OfferSession::refuse`]: a handover already in
//!    progress, or done).
//! 4. The successor checks and starts serving on the sockets, then sends `READY` ([`Taken::ready`]) — or
//!    `ABORT reason` ([`Taken::abort`], also sent when a [`Taken`] is dropped unconfirmed). Until `READY` the
//!    running process serves as before: both hold the same sockets, so whichever accepts a connection serves it.
//! 5. On `READY` the running process answers `STOPPING` ([`OfferSession::confirm`]) and then drains and exits.
//!
//! # Invariants
//! - A socket is never closed by the exchange: the running process sends duplicates and keeps its own, so a
//!   failure at any step leaves it serving with every socket it had.
//! - One message is one `SOCK_SEQPACKET` packet: no framing, no partial reads; a longer packet is a protocol
//!   error, not a truncated message.
//! - Every wait is bounded: each receive has a timeout ([`HandoverError::TimedOut`]).
//!
//! # Limits
//! | limit | value | why |
//! |---|---|---|
//! | [`DESCRIPTORS_MAX`] | 253 per handover | the kernel's `SCM_MAX_FD` |
//! | [`MESSAGE_BYTES_MAX`] | 4,096 per message | 253 labels of up to [`LABEL_BYTES_MAX`] fit with room |
//! | [`LABEL_BYTES_MAX`] | 15 bytes | a label names a socket's role (`http`, `control`) |
//! | [`SOCKETS_WAIT_MS`] | 10,000 ms | the running process answers at once; more means it is stuck |
//! | [`READY_WAIT_MS`] | 60,000 ms | the successor starts its shards and control plane, on a loaded machine |
//! | [`CONFIRM_WAIT_MS`] | 10,000 ms | `STOPPING` is sent at once after `READY` |

use std::io;
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    sockopt, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// The protocol's name and version, sent by the successor in step 2.
pub const PROTOCOL: &str = "larder-handover/1";
/// Most descriptors one handover passes (the kernel's `SCM_MAX_FD`).
pub const DESCRIPTORS_MAX: usize = 253;
/// Largest message of the exchange.
pub const MESSAGE_BYTES_MAX: usize = 4096;
/// Longest label of one passed socket.
pub const LABEL_BYTES_MAX: usize = 15;
/// How long the successor waits for the sockets (step 3).
pub const SOCKETS_WAIT_MS: u64 = 10_000;
/// How long the running process waits for `READY` or `ABORT` (step 4).
pub const READY_WAIT_MS: u64 = 60_000;
/// How long the successor waits for `STOPPING` (step 5).
pub const CONFIRM_WAIT_MS: u64 = 10_000;
/// Pending connections on the handover socket (a second successor is answered `REFUSED`, not queued long).
const BACKLOG: i32 = 4;

/// Why a handover step failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("nobody is listening on the handover socket {path} (is the running `larder serve` started with --handover-socket {path}?): {source}", path = path.display())]
    NobodyListening { path: PathBuf, source: io::Error },
    #[error("the handover socket {path} is in use by a running process (take over from it with --take-over {path})", path = path.display())]
    InUse { path: PathBuf },
    #[error("the running process refused the handover: {0}")]
    Refused(String),
    #[error("the other process aborted the handover: {0}")]
    Aborted(String),
    #[error("the other process closed the handover connection while this one waited for {0}")]
    Closed(&'static str),
    #[error("no {what} within {wait_ms} ms")]
    TimedOut { what: &'static str, wait_ms: u64 },
    #[error("protocol: expected {expected}, got {got:?}")]
    Protocol { expected: &'static str, got: String },
    #[error("{count} sockets exceed the handover limit of {DESCRIPTORS_MAX}")]
    TooManySockets { count: usize },
    #[error(
        "socket label {0:?} is empty, longer than {LABEL_BYTES_MAX} bytes or not a plain word"
    )]
    BadLabel(String),
    #[error("the socket labelled {label} is not a listening TCP socket: {reason}")]
    NotAListener { label: String, reason: String },
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> HandoverError {
    move |source| HandoverError::Io { what, source }
}

fn rustix_error(what: &'static str) -> impl FnOnce(rustix::io::Errno) -> HandoverError {
    move |errno| HandoverError::Io {
        what,
        source: errno.into(),
    }
}

/// Sends one message with `fds` attached (none for a plain message).
fn send(socket: BorrowedFd<'_>, text: &str, fds: &[BorrowedFd<'_>]) -> Result<(), HandoverError> {
    debug_assert!(text.len() <= MESSAGE_BYTES_MAX);
    if fds.len() > DESCRIPTORS_MAX {
        return Err(HandoverError::TooManySockets { count: fds.len() });
    }
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(DESCRIPTORS_MAX))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        let pushed = control.push(SendAncillaryMessage::ScmRights(fds));
        assert!(
            pushed,
            "{} descriptors fit the buffer sized for {DESCRIPTORS_MAX}",
            fds.len()
        );
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[io::IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(rustix_error("sending a handover message"))?;
    if sent != text.len() {
        return Err(HandoverError::Io {
            what: "sending a handover message",
            source: io::Error::new(io::ErrorKind::WriteZero, "message cut short"),
        });
    }
    Ok(())
}

/// Receives one message and the descriptors attached to it, waiting at most `wait_ms` for `what`.
fn receive(
    socket: BorrowedFd<'_>,
    what: &'static str,
    wait_ms: u64,
) -> Result<(String, Vec<OwnedFd>), HandoverError> {
    sockopt::set_socket_timeout(
        socket,
        sockopt::Timeout::Recv,
        Some(Duration::from_millis(wait_ms)),
    )
    .map_err(rustix_error("setting the handover receive timeout"))?;
    let mut bytes = vec![0u8; MESSAGE_BYTES_MAX];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(DESCRIPTORS_MAX))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        socket,
        &mut [io::IoSliceMut::new(&mut bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    );
    let received = match received {
        Ok(received) => received,
        Err(rustix::io::Errno::AGAIN) => return Err(HandoverError::TimedOut { what, wait_ms }),
        Err(errno) => return Err(rustix_error("receiving a handover message")(errno)),
    };
    // Take ownership of every descriptor first, so that none leaks whatever follows.
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if received.flags.contains(ReturnFlags::CTRUNC) {
        return Err(HandoverError::TooManySockets {
            count: fds.len() + 1,
        });
    }
    if received.flags.contains(ReturnFlags::TRUNC) {
        return Err(HandoverError::Protocol {
            expected: "a message of at most 4,096 bytes",
            got: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    if received.bytes == 0 {
        return Err(HandoverError::Closed(what));
    }
    bytes.truncate(received.bytes);
    let text = String::from_utf8(bytes).map_err(|error| HandoverError::Protocol {
        expected: what,
        got: String::from_utf8_lossy(error.as_bytes()).into_owned(),
    })?;
    Ok((text, fds))
}

fn seqpacket_socket() -> Result<OwnedFd, HandoverError> {
    rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(rustix_error("creating the handover socket"))
}

fn unix_address(path: &Path) -> Result<SocketAddrUnix, HandoverError> {
    SocketAddrUnix::new(path).map_err(|errno| HandoverError::Io {
        what: "handover socket path (at most 107 bytes)",
        source: errno.into(),
    })
}

/// Step 1: the running process's end, a listening Unix socket at a path. Dropping it removes the path unless
/// [`HandoverListener::forget_path`] was called or another socket has replaced it since.
pub struct HandoverListener {
    socket: OwnedFd,
    path: PathBuf,
    /// `(device, inode)` of the socket file this listener created.
    identity: Option<(u64, u64)>,
}

impl HandoverListener {
    /// Binds `path`. A socket file there that nobody answers on is stale and replaced. One that a process
    /// answers on is [`HandoverError::InUse`], unless `replace` (the successor of that process, which has just
    /// taken over from it, takes its path over too).
    pub fn bind(path: &Path, replace: bool) -> Result<HandoverListener, HandoverError> {
        let address = unix_address(path)?;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
                return Err(HandoverError::Io {
                    what: "handover socket path",
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a file that is not a socket is there",
                    ),
                });
            }
            if !replace && connect(path).is_ok() {
                return Err(HandoverError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path)
                .map_err(io_error("removing the old handover socket file"))?;
        }
        let socket = seqpacket_socket()?;
        rustix::net::bind(&socket, &address).map_err(|errno| HandoverError::Io {
            what: "binding the handover socket",
            source: errno.into(),
        })?;
        rustix::net::listen(&socket, BACKLOG)
            .map_err(rustix_error("listening on the handover socket"))?;
        let identity = std::fs::metadata(path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        Ok(HandoverListener {
            socket,
            path: path.to_path_buf(),
            identity,
        })
    }

    /// The path this listener is bound to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep the socket file on drop (after a handover it belongs to the successor).
    pub fn forget_path(&mut self) {
        self.identity = None;
    }

    /// Waits for a successor to connect, or for `stop` to become readable (then `Ok(None)`).
    pub fn accept_or_stop(
        &self,
        stop: BorrowedFd<'_>,
    ) -> Result<Option<OfferSession>, HandoverError> {
        loop {
            let mut fds = [
                PollFd::new(&self.socket, PollFlags::IN),
                PollFd::new(&stop, PollFlags::IN),
            ];
            match rustix::event::poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(errno) => return Err(rustix_error("waiting on the handover socket")(errno)),
            }
            if !fds[1].revents().is_empty() {
                return Ok(None);
            }
            if fds[0].revents().is_empty() {
                continue;
            }
            match rustix::net::accept_with(&self.socket, SocketFlags::CLOEXEC) {
                Ok(socket) => return Ok(Some(OfferSession { socket })),
                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
                Err(errno) => return Err(rustix_error("accepting on the handover socket")(errno)),
            }
        }
    }
}

impl Drop for HandoverListener {
    fn drop(&mut self) {
        let Some(identity) = self.identity else {
            return;
        };
        let ours = std::fs::metadata(&self.path)
            .map(|meta| (meta.dev(), meta.ino()) == identity)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The running process's side of one handover (steps 2, 3 and 5).
pub struct OfferSession {
    socket: OwnedFd,
}

impl OfferSession {
    /// Step 2: the successor's request.
    pub fn receive_request(&self) -> Result<(), HandoverError> {
        let (text, _) = receive(self.socket.as_fd(), "the TAKE request", SOCKETS_WAIT_MS)?;
        let expected = format!("TAKE {PROTOCOL}");
        if text != expected {
            return Err(HandoverError::Protocol {
                expected: "TAKE larder-handover/1",
                got: text,
            });
        }
        Ok(())
    }

    /// Step 3, refused: tells the successor why (it fails with [`HandoverError::Refused`]). Read the request
    /// first: closing a Unix socket with unread data resets it, and the refusal would be lost.
    pub fn refuse(&self, reason: &str) -> Result<(), HandoverError> {
        send(
            self.socket.as_fd(),
            &format!("REFUSED {}", one_line(reason)),
            &[],
        )
    }

    /// Step 3: sends duplicates of `sockets`, each with its label. The caller keeps its own descriptors.
    pub fn send_sockets(&self, sockets: &[(&str, BorrowedFd<'_>)]) -> Result<(), HandoverError> {
        if sockets.len() > DESCRIPTORS_MAX {
            return Err(HandoverError::TooManySockets {
                count: sockets.len(),
            });
        }
        let mut text = String::from("SOCKETS");
        for (label, _) in sockets {
            check_label(label)?;
            text.push(' ');
            text.push_str(label);
        }
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|(_, fd)| *fd).collect();
        send(self.socket.as_fd(), &text, &fds)
    }

    /// Step 4: waits for `READY` (`Ok`), `ABORT reason` ([`HandoverError::Aborted`]), a closed connection or
    /// [`READY_WAIT_MS`].
    pub fn wait_ready(&self) -> Result<(), HandoverError> {
        let (text, _) = receive(self.socket.as_fd(), "READY", READY_WAIT_MS)?;
        if text == "READY" {
            return Ok(());
        }
        match text.strip_prefix("ABORT ") {
            Some(reason) => Err(HandoverError::Aborted(reason.to_string())),
            None => Err(HandoverError::Protocol {
                expected: "READY or ABORT",
                got: text,
            }),
        }
    }

    /// Step 5: tells the successor that this process stops now.
    pub fn confirm(&self) -> Result<(), HandoverError> {
        send(self.socket.as_fd(), "STOPPING", &[])
    }
}

/// A socket received in step 3, with its label.
#[derive(Debug)]
pub struct TakenSocket {
    pub label: String,
    pub fd: OwnedFd,
}

/// The successor's side after step 3: the sockets, and the connection on which to answer.
#[derive(Debug)]
pub struct Taken {
    socket: Option<OwnedFd>,
    pub sockets: Vec<TakenSocket>,
}

/// Steps 2-3 from the successor's side: connects to `path`, asks for the sockets and receives them.
pub fn take_over(path: &Path) -> Result<Taken, HandoverError> {
    let socket = connect(path)?;
    send(socket.as_fd(), &format!("TAKE {PROTOCOL}"), &[])?;
    let (text, fds) = receive(socket.as_fd(), "the sockets", SOCKETS_WAIT_MS)?;
    if let Some(reason) = text.strip_prefix("REFUSED ") {
        return Err(HandoverError::Refused(reason.to_string()));
    }
    let Some(labels) = text.strip_prefix("SOCKETS") else {
        return Err(HandoverError::Protocol {
            expected: "SOCKETS or REFUSED",
            got: text,
        });
    };
    let labels: Vec<&str> = labels.split_whitespace().collect();
    if labels.len() != fds.len() {
        return Err(HandoverError::Protocol {
            expected: "one descriptor per label",
            got: format!("{} labels, {} descriptors", labels.len(), fds.len()),
        });
    }
    let sockets = labels
        .into_iter()
        .zip(fds)
        .map(|(label, fd)| TakenSocket {
            label: label.to_string(),
            fd,
        })
        .collect();
    Ok(Taken {
        socket: Some(socket),
        sockets,
    })
}

impl Taken {
    /// Removes and returns the sockets labelled `label`, in the order they were sent.
    pub fn take_labelled(&mut self, label: &str) -> Vec<OwnedFd> {
        let (matching, rest) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|socket| socket.label == label);
        self.sockets = rest;
        matching
            .into_iter()
            .map(|socket: TakenSocket| socket.fd)
            .collect()
    }

    /// Steps 4-5: `READY`, then waits for `STOPPING` (at most [`CONFIRM_WAIT_MS`]).
    pub fn ready(mut self) -> Result<(), HandoverError> {
        let socket = self.socket.take().expect("a Taken is answered once");
        send(socket.as_fd(), "READY", &[])?;
        let (text, _) = receive(socket.as_fd(), "STOPPING", CONFIRM_WAIT_MS)?;
        if text != "STOPPING" {
            return Err(HandoverError::Protocol {
                expected: "STOPPING",
                got: text,
            });
        }
        Ok(())
    }

    /// Step 4, failed: tells the running process why; it keeps serving.
    pub fn abort(mut self, reason: &str) {
        if let Some(socket) = self.socket.take() {
            let _ = send(socket.as_fd(), &format!("ABORT {}", one_line(reason)), &[]);
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            let _ = send(
                socket.as_fd(),
                "ABORT the new process stopped before it was ready",
                &[],
            );
        }
    }
}

/// Checks that a received descriptor is a listening TCP socket and turns it into a [`TcpListener`].
pub fn tcp_listener(label: &str, fd: OwnedFd) -> Result<TcpListener, HandoverError> {
    let not_a_listener = |reason: String| HandoverError::NotAListener {
        label: label.to_string(),
        reason,
    };
    let kind = sockopt::socket_type(&fd).map_err(|errno| not_a_listener(errno.to_string()))?;
    if kind != SocketType::STREAM {
        return Err(not_a_listener(format!("socket type {kind:?}")));
    }
    let listening =
        sockopt::socket_acceptconn(&fd).map_err(|errno| not_a_listener(errno.to_string()))?;
    if !listening {
        return Err(not_a_listener("it does not listen".to_string()));
    }
    let listener = TcpListener::from(fd);
    // Only an INET/INET6 socket has a local address std can read (a Unix stream listener fails here).
    listener
        .local_addr()
        .map_err(|error| not_a_listener(format!("no TCP address ({error})")))?;
    Ok(listener)
}

fn connect(path: &Path) -> Result<OwnedFd, HandoverError> {
    let address = unix_address(path)?;
    let socket = seqpacket_socket()?;
    rustix::net::connect(&socket, &address).map_err(|errno| HandoverError::NobodyListening {
        path: path.to_path_buf(),
        source: errno.into(),
    })?;
    Ok(socket)
}

fn check_label(label: &str) -> Result<(), HandoverError> {
    let plain = !label.is_empty()
        && label.len() <= LABEL_BYTES_MAX
        && label.bytes().all(|byte| byte.is_ascii_graphic());
    if plain {
        Ok(())
    } else {
        Err(HandoverError::BadLabel(label.to_string()))
    }
}

/// A reason on one line, short enough for one message.
fn one_line(reason: &str) -> String {
    let mut line: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let limit = MESSAGE_BYTES_MAX - 16;
    if line.len() > limit {
        let mut cut = limit;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair")
    }

    /// A fresh path under the temp dir, removed by the test's listener (or left for the OS).
    fn socket_path() -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        std::env::temp_dir().join(format!(
            "larder-handover-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    #[test]
    fn a_passed_socketpair_end_carries_bytes_to_its_peer() {
        let (sender, receiver) = seqpacket_pair();
        let (kept, passed) = UnixStream::pair().expect("pair");
        send(sender.as_fd(), "one", &[passed.as_fd()]).expect("send");
        drop(passed); // only the received duplicate is left
        let (text, mut fds) = receive(receiver.as_fd(), "one", 1_000).expect("receive");
        assert_eq!(text, "one");
        assert_eq!(fds.len(), 1);
        let mut received = UnixStream::from(fds.pop().expect("one fd"));
        received.write_all(b"through the passed fd").expect("write");
        drop(received);
        let mut got = String::new();
        (&kept).read_to_string(&mut got).expect("read");
        assert_eq!(got, "through the passed fd");
    }

    #[test]
    fn a_passed_listener_accepts_connections_queued_before_the_pass() {
        let original = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = original.local_addr().expect("addr");
        // Queued in the accept queue before the listener is passed (and before its first copy is closed).
        let mut client = TcpStream::connect(addr).expect("connect");
        let (sender, receiver) = seqpacket_pair();
        send(sender.as_fd(), "listener", &[original.as_fd()]).expect("send");
        drop(original);
        let (_, mut fds) = receive(receiver.as_fd(), "listener", 1_000).expect("receive");
        let listener = tcp_listener("http", fds.pop().expect("one fd")).expect("a listener");
        assert_eq!(listener.local_addr().expect("addr"), addr);
        let (mut served, _) = listener
            .accept()
            .expect("the queued connection is still there");
        client.write_all(b"ping").expect("write");
        let mut got = [0u8; 4];
        served.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"ping");
    }

    #[test]
    fn a_plain_message_carries_no_descriptor_and_an_empty_read_is_a_close() {
        let (sender, receiver) = seqpacket_pair();
        send(sender.as_fd(), "READY", &[]).expect("send");
        let (text, fds) = receive(receiver.as_fd(), "READY", 1_000).expect("receive");
        assert_eq!((text.as_str(), fds.len()), ("READY", 0));
        drop(sender);
        let closed = receive(receiver.as_fd(), "STOPPING", 1_000).unwrap_err();
        assert!(
            matches!(closed, HandoverError::Closed("STOPPING")),
            "{closed}"
        );
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (_sender, receiver) = seqpacket_pair();
        let error = receive(receiver.as_fd(), "READY", 50).unwrap_err();
        assert!(
            matches!(
                error,
                HandoverError::TimedOut {
                    what: "READY",
                    wait_ms: 50
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn only_listening_tcp_sockets_are_accepted() {
        let connected = UnixStream::pair().expect("pair").0;
        let error = tcp_listener("http", OwnedFd::from(connected)).unwrap_err();
        assert!(error.to_string().contains("does not listen"), "{error}");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let error = tcp_listener("http", OwnedFd::from(udp)).unwrap_err();
        assert!(error.to_string().contains("socket type"), "{error}");
        let path = socket_path();
        let unix = std::os::unix::net::UnixListener::bind(&path).expect("unix listener");
        std::fs::remove_file(&path).expect("remove");
        let error = tcp_listener("http", OwnedFd::from(unix)).unwrap_err();
        assert!(error.to_string().contains("no TCP address"), "{error}");
    }

    #[test]
    fn bad_labels_are_refused_before_anything_is_sent() {
        let (sender, _receiver) = seqpacket_pair();
        let session = OfferSession { socket: sender };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        for label in ["", "two words", "a-label-longer-than-15"] {
            let error = session
                .send_sockets(&[(label, listener.as_fd())])
                .unwrap_err();
            assert!(
                matches!(error, HandoverError::BadLabel(_)),
                "{label:?}: {error}"
            );
        }
    }

    /// The whole exchange over a real path: step by step from both sides.
    #[test]
    fn the_exchange_hands_labelled_listeners_to_the_successor() {
        let path = socket_path();
        let offer = HandoverListener::bind(&path, false).expect("bind");
        let http = TcpListener::bind("127.0.0.1:0").expect("http");
        let control = TcpListener::bind("127.0.0.1:0").expect("control");
        let (stop_keep, stop) = UnixStream::pair().expect("stop pair");
        let addresses = (http.local_addr().unwrap(), control.local_addr().unwrap());
        let successor = std::thread::spawn({
            let path = path.clone();
            move || {
                let mut taken = take_over(&path).expect("take over");
                let http: Vec<_> = taken.take_labelled("http");
                let control: Vec<_> = taken.take_labelled("control");
                assert!(taken.sockets.is_empty());
                let http = tcp_listener("http", http.into_iter().next().unwrap()).unwrap();
                let control = tcp_listener("control", control.into_iter().next().unwrap()).unwrap();
                let got = (http.local_addr().unwrap(), control.local_addr().unwrap());
                taken.ready().expect("confirmed");
                got
            }
        });
        let session = offer
            .accept_or_stop(stop.as_fd())
            .expect("accept")
            .expect("a successor, not a stop");
        session.receive_request().expect("TAKE");
        session
            .send_sockets(&[("http", http.as_fd()), ("control", control.as_fd())])
            .expect("sockets");
        session.wait_ready().expect("READY");
        session.confirm().expect("STOPPING");
        assert_eq!(successor.join().expect("successor"), addresses);
        drop(stop_keep);
        drop(offer);
        assert!(!path.exists(), "the listener removes its socket file");
    }

    #[test]
    fn a_refusal_and_an_abort_reach_the_other_side_with_their_reason() {
        let path = socket_path();
        let offer = HandoverListener::bind(&path, false).expect("bind");
        let (_stop_keep, stop) = UnixStream::pair().expect("stop pair");
        let refused = std::thread::spawn({
            let path = path.clone();
            move || take_over(&path).unwrap_err()
        });
        let session = offer.accept_or_stop(stop.as_fd()).unwrap().unwrap();
        session.receive_request().unwrap();
        session.refuse("another handover is in progress").unwrap();
        let error = refused.join().unwrap();
        assert!(
            matches!(&error, HandoverError::Refused(reason) if reason == "another handover is in progress"),
            "{error}"
        );

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let aborting = std::thread::spawn({
            let path = path.clone();
            move || {
                take_over(&path)
                    .unwrap()
                    .abort("--listen 127.0.0.1:1 differs")
            }
        });
        let session = offer.accept_or_stop(stop.as_fd()).unwrap().unwrap();
        session.receive_request().unwrap();
        session.send_sockets(&[("http", listener.as_fd())]).unwrap();
        let error = session.wait_ready().unwrap_err();
        aborting.join().unwrap();
        assert!(
            matches!(&error, HandoverError::Aborted(reason) if reason == "--listen 127.0.0.1:1 differs"),
            "{error}"
        );
    }

    #[test]
    fn stop_ends_the_wait_for_a_successor() {
        let path = socket_path();
        let offer = HandoverListener::bind(&path, false).expect("bind");
        let (mut stop_keep, stop) = UnixStream::pair().expect("stop pair");
        stop_keep.write_all(b"x").expect("wake");
        assert!(offer
            .accept_or_stop(stop.as_fd())
            .expect("no error")
            .is_none());
    }

    #[test]
    fn nobody_listening_is_a_clear_error() {
        let path = socket_path();
        let error = take_over(&path).unwrap_err();
        assert!(
            matches!(error, HandoverError::NobodyListening { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("--handover-socket"), "{error}");
        // A stale socket file (its process gone) is no listener either.
        drop(HandoverListener::bind(&path, false).map(|mut listener| listener.forget_path()));
        assert!(path.exists(), "forget_path keeps the file");
        let error = take_over(&path).unwrap_err();
        assert!(
            matches!(error, HandoverError::NobodyListening { .. }),
            "{error}"
        );
        // ... and binding replaces it.
        let listener = HandoverListener::bind(&path, false).expect("a stale file is replaced");
        let error = HandoverListener::bind(&path, false).err().expect("in use");
        assert!(matches!(error, HandoverError::InUse { .. }), "{error}");
        let replaced = HandoverListener::bind(&path, true).expect("replace takes the path over");
        drop(listener); // the replaced listener leaves the successor's file alone
        assert!(path.exists());
        drop(replaced);
        assert!(!path.exists());
    }
}
