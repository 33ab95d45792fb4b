//! The event loop: one thread, non-blocking sockets (mio), pipelined
//! requests. Each connection has a read buffer (bytes of requests not yet
//! complete) and a write buffer (replies not yet sent).
//!
//! Bad input never stops the loop or touches another connection: a protocol
//! error gets an error reply and that connection is closed; a client that
//! disconnects mid-request is dropped with its partial request.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::resp::{self, Reply};
use crate::store::{After, Store};

const LISTENER: Token = Token(0);
/// Polls without sleeping after the last event before the loop blocks.
const SPIN_POLLS: u32 = 64;
/// A connection stops reading while this many reply bytes wait to be sent
/// (the client is not reading them).
const MAX_PENDING_REPLIES: usize = 64 << 20;
/// The most request bytes buffered for one connection (Redis's
/// `client-query-buffer-limit`).
const MAX_QUERY_BUFFER: usize = 1 << 30;

struct Conn {
    token: Token,
    stream: TcpStream,
    /// Request bytes in `rbuf[..filled]`; the rest is room to read into
    /// (zeroed once, when the buffer grows, so reads need no copy).
    rbuf: Vec<u8>,
    filled: usize,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already sent.
    sent: usize,
    /// Close once `wbuf` is sent (QUIT, a protocol error).
    closing: bool,
    /// Registered for writable events.
    writing: bool,
    /// The end of the stream was read: close once the replies are out.
    eof: bool,
    /// An I/O error: close.
    broken: bool,
    /// In [`Server::pending`].
    queued: bool,
}

impl Conn {
    fn buffer_bytes(&self) -> usize {
        self.rbuf.capacity() + self.wbuf.capacity()
    }
}

/// A running server: its listener, connections and keyspace.
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: HashMap<Token, Conn>,
    /// Connections served since the replies last went out.
    pending: Vec<Token>,
    next: usize,
    store: Store,
}

impl Server {
    /// Binds `addr` (port 0: any free port).
    pub fn bind(addr: SocketAddr, store: Store) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Server {
            poll,
            listener,
            conns: HashMap::new(),
            pending: Vec::new(),
            next: 1,
            store,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut idle_polls = SPIN_POLLS;
        loop {
            // After traffic, look again without sleeping a few times before
            // blocking: a client whose next request finds the server awake
            // does not pay (in its own system time) for waking it.
            let timeout = if idle_polls < SPIN_POLLS {
                Some(std::time::Duration::ZERO)
            } else {
                self.store.idle()
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            idle_polls = if events.is_empty() {
                idle_polls.saturating_add(1)
            } else {
                0
            };
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept()?,
                    token => self.serve(token, event.is_read_closed()),
                }
            }
            // Replies go out after every ready connection was read, as
            // Redis writes them before it sleeps: the clients then find many
            // replies per wake-up (redis-benchmark, one thread for 50
            // connections, is the bottleneck of a one-request round trip).
            self.flush_pending();
        }
    }

    fn accept(&mut self) -> io::Result<()> {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let token = Token(self.next);
                    self.next += 1;
                    self.poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE)?;
                    self.conns.insert(
                        token,
                        Conn {
                            token,
                            stream,
                            rbuf: Vec::new(),
                            filled: 0,
                            wbuf: Vec::new(),
                            sent: 0,
                            closing: false,
                            writing: false,
                            eof: false,
                            broken: false,
                            queued: false,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A connection that failed before we took it (reset): go on.
                Err(_) => return Ok(()),
            }
        }
    }

    /// Reads and runs what one connection sent, and queues it to send the
    /// replies (see [`Server::flush_pending`]).
    fn serve(&mut self, token: Token, read_closed: bool) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let before = conn.buffer_bytes();
        read_and_run(conn, &mut self.store, read_closed);
        self.store.buffer_bytes =
            (self.store.buffer_bytes + conn.buffer_bytes()).saturating_sub(before);
        if !conn.queued {
            conn.queued = true;
            self.pending.push(token);
        }
    }

    /// Sends the replies of the connections served since the last call;
    /// closes those at their end of stream, after an I/O error, or once
    /// their last reply is out after QUIT or a protocol error.
    fn flush_pending(&mut self) {
        let mut pending = core::mem::take(&mut self.pending);
        for token in pending.drain(..) {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            conn.queued = false;
            let open = !conn.broken
                && flush(&self.poll, conn)
                && !(conn.eof || (conn.closing && conn.sent == conn.wbuf.len()));
            if !open {
                let mut conn = self.conns.remove(&token).expect("looked up above");
                self.store.buffer_bytes =
                    self.store.buffer_bytes.saturating_sub(conn.buffer_bytes());
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
        self.pending = pending; // keeps its capacity
    }
}

/// Reads what `conn` sent and runs every complete request. `read_closed`:
/// the peer's end of the stream has arrived (read on to the end, past any
/// short read). Records the end of stream and I/O errors in `conn`.
fn read_and_run(conn: &mut Conn, store: &mut Store, read_closed: bool) {
    if conn.closing || conn.wbuf.len() - conn.sent >= MAX_PENDING_REPLIES {
        return;
    }
    loop {
        if conn.rbuf.len() - conn.filled < 16 << 10 {
            let grown = (conn.rbuf.len() * 2).max(64 << 10);
            conn.rbuf.resize(grown, 0);
        }
        let room = conn.rbuf.len() - conn.filled;
        match conn.stream.read(&mut conn.rbuf[conn.filled..]) {
            Ok(0) => {
                conn.eof = true;
                break;
            }
            Ok(n) => {
                conn.filled += n;
                if conn.filled > MAX_QUERY_BUFFER {
                    Reply(&mut conn.wbuf).error("ERR Protocol error: query buffer too big");
                    conn.closing = true;
                    break;
                }
                if n < room && cfg!(unix) && !read_closed {
                    // A short read drained the socket: with epoll and kqueue,
                    // data (or the end of the stream) that arrives later
                    // raises a new event, so the read that would say
                    // WouldBlock is saved (a third of the system calls of a
                    // one-request round trip; tokio does the same). An end
                    // that arrived before this event is read now.
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                conn.broken = true;
                return;
            }
        }
    }
    run_requests(conn, store);
}

/// Runs every complete request in the read buffer.
fn run_requests(conn: &mut Conn, store: &mut Store) {
    let mut taken = 0;
    // One vector of each for every request of this read (no allocation per
    // request).
    let mut ranges = resp::Args::new();
    let mut args: Vec<&[u8]> = Vec::new();
    while !conn.closing && conn.wbuf.len() - conn.sent < MAX_PENDING_REPLIES {
        match resp::parse(&conn.rbuf[taken..conn.filled], &mut ranges) {
            Ok(Some(used)) => {
                let base = taken;
                taken += used;
                args.clear();
                args.extend(
                    ranges
                        .iter()
                        .map(|r| &conn.rbuf[base + r.start..base + r.end]),
                );
                if store.execute(&args, &mut conn.wbuf) == After::Close {
                    conn.closing = true;
                }
            }
            Ok(None) => break,
            Err(e) => {
                Reply(&mut conn.wbuf).error(&format!("ERR {e}"));
                conn.closing = true;
            }
        }
    }
    conn.rbuf.copy_within(taken..conn.filled, 0);
    conn.filled -= taken;
    // Give back a buffer a huge request grew, not one that normal
    // traffic refills at once (it would be freed and faulted in again).
    if conn.rbuf.len() > 4 << 20 && conn.filled < conn.rbuf.len() / 4 {
        conn.rbuf.truncate(conn.filled.max(1 << 20));
        conn.rbuf.shrink_to_fit();
    }
}

/// Sends what it can of `conn`'s write buffer; registers it for writable
/// events while some is left. False on an I/O error.
fn flush(poll: &Poll, conn: &mut Conn) -> bool {
    while conn.sent < conn.wbuf.len() {
        match conn.stream.write(&conn.wbuf[conn.sent..]) {
            Ok(0) => return false,
            Ok(n) => conn.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    if conn.sent == conn.wbuf.len() {
        conn.wbuf.clear();
        conn.sent = 0;
        if conn.wbuf.capacity() > 4 << 20 {
            conn.wbuf.shrink_to(1 << 20);
        }
    }
    let want = conn.sent < conn.wbuf.len();
    if want != conn.writing {
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if poll
            .registry()
            .reregister(&mut conn.stream, conn.token, interest)
            .is_err()
        {
            return false;
        }
        conn.writing = want;
    }
    true
}
