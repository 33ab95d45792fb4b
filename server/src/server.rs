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
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept()?,
                    token => self.serve(token),
                }
            }
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

    /// Reads, runs and answers what one connection sent; closes it on EOF,
    /// on an I/O error, or once its last reply is out after QUIT or a
    /// protocol error.
    fn serve(&mut self, token: Token) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let before = conn.buffer_bytes();
        let open = self.serve_conn(&mut conn);
        self.store.buffer_bytes =
            (self.store.buffer_bytes + conn.buffer_bytes()).saturating_sub(before);
        if open {
            self.conns.insert(token, conn);
        } else {
            self.store.buffer_bytes = self.store.buffer_bytes.saturating_sub(conn.buffer_bytes());
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    fn serve_conn(&mut self, conn: &mut Conn) -> bool {
        let mut eof = false;
        if !conn.closing && conn.wbuf.len() - conn.sent < MAX_PENDING_REPLIES {
            loop {
                if conn.rbuf.len() - conn.filled < 16 << 10 {
                    let grown = (conn.rbuf.len() * 2).max(64 << 10);
                    conn.rbuf.resize(grown, 0);
                }
                match conn.stream.read(&mut conn.rbuf[conn.filled..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        conn.filled += n;
                        if conn.filled > MAX_QUERY_BUFFER {
                            Reply(&mut conn.wbuf).error("ERR Protocol error: query buffer too big");
                            conn.closing = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            self.run_requests(conn);
        }
        if !self.flush(conn) {
            return false;
        }
        if eof || (conn.closing && conn.sent == conn.wbuf.len()) {
            return false;
        }
        true
    }

    /// Runs every complete request in the read buffer.
    fn run_requests(&mut self, conn: &mut Conn) {
        let mut taken = 0;
        while !conn.closing && conn.wbuf.len() - conn.sent < MAX_PENDING_REPLIES {
            match resp::parse(&conn.rbuf[taken..conn.filled]) {
                Ok(Some((ranges, used))) => {
                    let base = taken;
                    taken += used;
                    let args: Vec<&[u8]> = ranges
                        .into_iter()
                        .map(|r| &conn.rbuf[base + r.start..base + r.end])
                        .collect();
                    if self.store.execute(&args, &mut conn.wbuf) == After::Close {
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

    /// Sends what it can of the write buffer; registers for writable events
    /// while some is left. False on an I/O error.
    fn flush(&mut self, conn: &mut Conn) -> bool {
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
            if self
                .poll
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
}
