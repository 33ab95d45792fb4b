//! The server as a client sees it: started on an ephemeral loopback port,
//! driven by the `redis` crate and by raw sockets sending bad input.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::Commands;

/// A server process, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(maxmemory: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_compact-server"))
            .args(["--port", "0", "--maxmemory", maxmemory])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server prints its address");
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Server { child, port }
    }

    fn client(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .unwrap()
            .get_connection()
            .expect("connect")
    }

    fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// The server's resident memory, from /proc.
    fn rss(&self) -> usize {
        let statm = std::fs::read_to_string(format!("/proc/{}/statm", self.child.id())).unwrap();
        statm
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<usize>()
            .unwrap()
            * 4096
    }

    fn info_field(&self, con: &mut redis::Connection, field: &str) -> usize {
        let info: String = redis::cmd("INFO").arg("memory").query(con).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in {info}"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything the server sends until it closes the connection.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn values_round_trip() {
    let server = Server::start("16mb");
    let mut con = server.client();
    let _: () = con.set("greeting", "hello").unwrap();
    assert_eq!(con.get::<_, String>("greeting").unwrap(), "hello");
    let big = vec![7u8; 300_000];
    let _: () = con.set("big", &big).unwrap();
    assert_eq!(con.get::<_, Vec<u8>>("big").unwrap(), big);
    assert_eq!(con.incr::<_, _, i64>("n", 5).unwrap(), 5);
    assert_eq!(con.incr::<_, _, i64>("n", 1).unwrap(), 6);
    let _: () = con.mset(&[("a", "1"), ("b", "2")]).unwrap();
    let got: Vec<Option<String>> = con.mget(&["a", "missing", "b"]).unwrap();
    assert_eq!(got, [Some("1".into()), None, Some("2".into())]);
    assert_eq!(con.exists::<_, usize>(&["a", "b", "zz"]).unwrap(), 2);
    assert_eq!(con.del::<_, usize>(&["a", "zz"]).unwrap(), 1);
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
    let size: usize = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(size, 4); // greeting, big, n, b
    let _: () = con.set_ex("ttl", "x", 100).unwrap();
    assert!(con.exists::<_, bool>("ttl").unwrap());
    let _: () = redis::cmd("SET")
        .arg("gone")
        .arg("x")
        .arg("PX")
        .arg(1)
        .query(&mut con)
        .unwrap();
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(con.get::<_, Option<String>>("gone").unwrap(), None);
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    let size: usize = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(size, 0);
    let err = redis::cmd("NOSUCH").query::<()>(&mut con).unwrap_err();
    assert!(err.to_string().contains("unknown command"), "{err}");
    // The connection is still good after an error reply.
    assert_eq!(con.get::<_, Option<String>>("greeting").unwrap(), None);
}

#[test]
fn eviction_keeps_used_memory_within_maxmemory() {
    let server = Server::start("4mb");
    let mut con = server.client();
    let value = vec![1u8; 1000];
    for i in 0..20_000 {
        let _: () = con.set(format!("key:{i}"), &value).unwrap();
    }
    let used = server.info_field(&mut con, "used_memory");
    let max = server.info_field(&mut con, "maxmemory");
    assert_eq!(max, 4 << 20);
    assert!(used <= max, "used_memory {used} > maxmemory {max}");
    let size: usize = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert!(size > 1000 && size < 20_000, "{size} keys");
    // The newest keys are there, with their values.
    assert_eq!(con.get::<_, Vec<u8>>("key:19999").unwrap(), value);
    // CONFIG SET maxmemory shrinks the cache at once.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("2mb")
        .query(&mut con)
        .unwrap();
    let cfg: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory")
        .query(&mut con)
        .unwrap();
    assert_eq!(cfg, ["maxmemory", &(2 << 20).to_string()]);
    let fewer: usize = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert!(fewer < size, "{fewer} keys after shrinking, {size} before");
}

#[test]
fn malformed_requests_get_an_error_and_close_only_their_connection() {
    let server = Server::start("16mb");
    let mut good = server.client();
    let _: () = good.set("kept", "safe").unwrap();
    for bad in [
        &b"*1\r\n$x\r\nPING\r\n"[..],
        b"*2\r\n+SET\r\n",
        b"*1\r\n$4\r\nPINGxx\r\n",
        b"*-99999999999999999999\r\n",
    ] {
        let mut s = server.raw();
        s.write_all(bad).unwrap();
        let reply = read_to_close(&mut s);
        assert!(
            reply.starts_with("-ERR Protocol error"),
            "{bad:?} -> {reply:?}"
        );
    }
    assert_eq!(good.get::<_, String>("kept").unwrap(), "safe");
}

#[test]
fn a_one_gigabyte_bulk_length_is_refused_without_allocating_it() {
    let server = Server::start("16mb");
    let before = server.rss();
    let mut s = server.raw();
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1073741824\r\n")
        .unwrap();
    let reply = read_to_close(&mut s);
    assert!(reply.contains("invalid bulk length"), "{reply:?}");
    assert!(
        server.rss() < before + (64 << 20),
        "the server allocated the declared length"
    );
    let mut con = server.client();
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn clients_that_disconnect_mid_command_lose_nothing_of_others() {
    let server = Server::start("16mb");
    let mut good = server.client();
    let _: () = good.set("kept", "safe").unwrap();
    for partial in [
        &b"*3\r\n$3\r\nSET\r\n$4\r\nkept\r\n$5\r\nhel"[..],
        b"*3\r\n$3\r\nSET\r\n",
        b"GET ke",
    ] {
        let mut s = server.raw();
        s.write_all(partial).unwrap();
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(good.get::<_, String>("kept").unwrap(), "safe");
}

#[test]
fn a_client_that_closes_its_end_after_a_command_gets_the_reply_and_the_end() {
    // The command and the end of the stream often arrive in one event: the
    // server must answer and then close, not wait for more.
    let server = Server::start("16mb");
    for i in 0..200 {
        let mut s = server.raw();
        s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        if i % 2 == 0 {
            std::thread::sleep(Duration::from_millis(1)); // apart, sometimes
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("connection {i} not closed by the server: {e}"));
        assert_eq!(out, b"+PONG\r\n", "connection {i}");
    }
}

#[test]
fn an_idle_server_gives_the_memory_of_departed_clients_back() {
    // A hundred clients pipeline 40 KB of SETs each, so the server grows a
    // read buffer for each, and keys interleave with them in malloc's heap;
    // then they leave. Once idle, the server gives the pages back.
    let server = Server::start("64mb");
    let mut clients = Vec::new();
    for c in 0..100 {
        let mut s = server.raw();
        let mut req = Vec::new();
        for i in 0..40 {
            req.extend_from_slice(
                format!("*3\r\n$3\r\nSET\r\n$9\r\nk{c:03}:{i:04}\r\n$1000\r\n").as_bytes(),
            );
            req.extend_from_slice(&[b'v'; 1000]);
            req.extend_from_slice(b"\r\n");
        }
        s.write_all(&req).unwrap();
        let mut ok = vec![0u8; 40 * 5];
        s.read_exact(&mut ok).unwrap();
        assert!(ok.chunks(5).all(|r| r == b"+OK\r\n"));
        clients.push(s);
    }
    // Keys stored after the buffers lie above them in the heap: what the
    // clients free is a hole malloc cannot give back by trimming its top.
    let mut later = server.raw();
    let mut req = Vec::new();
    for i in 0..20_000 {
        req.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n$6\r\nl{i:05}\r\n$1\r\nx\r\n").as_bytes(),
        );
    }
    later.write_all(&req).unwrap();
    let mut ok = vec![0u8; 20_000 * 5];
    later.read_exact(&mut ok).unwrap();
    let with_clients = server.rss();
    drop(clients);
    std::thread::sleep(Duration::from_millis(1500));
    let mut con = server.client(); // (and the server is still up)
    let after = server.rss();
    assert_eq!(
        con.get::<_, Vec<u8>>("k099:0039").unwrap(),
        vec![b'v'; 1000]
    );
    assert!(
        with_clients - after > 3 << 20,
        "RSS {with_clients} with the clients, {after} after they left"
    );
}

#[test]
fn pipelined_requests_get_their_replies_in_order() {
    let server = Server::start("16mb");
    let mut s = server.raw();
    let mut req = Vec::new();
    for i in 0..1000 {
        let v = i.to_string();
        req.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n{}\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
                v.len(),
                v
            )
            .as_bytes(),
        );
    }
    req.extend_from_slice(b"QUIT\r\n");
    s.write_all(&req).unwrap();
    let reply = read_to_close(&mut s);
    let mut want = String::new();
    for i in 0..1000 {
        let v = i.to_string();
        want.push_str(&format!("+OK\r\n${}\r\n{}\r\n", v.len(), v));
    }
    want.push_str("+OK\r\n");
    assert_eq!(reply, want);
}
